"""Generate the offline demo data set for a financial-services assistant.

The demo teaches one narrow, easily checked behaviour: every answer about investments or personal
finance ends with the exact final line ``This is not financial advice.`` (the answer text, a blank
line, then that sentence and nothing after it), while general, non-finance answers never contain it.

Four JSON Lines files are written to ``--out`` (default: ``itune/resources/demo`` in the repo):

* ``finance.jsonl`` -- chat rows ``{"messages": [...]}`` built from hand-written finance concepts and
  question templates. About 10% are two-turn conversations and about 10% start with a system turn.
* ``general.jsonl`` -- Alpaca rows ``{"instruction", "input", "output"}`` with general knowledge and
  simple tasks; about 30% have a non-empty ``input``.
* ``finance_heldout.jsonl`` -- ``{"prompt"}`` rows about finance concepts and phrasings that are not
  used in training.
* ``general_heldout.jsonl`` -- ``{"prompt"}`` rows of general questions not used in training.

The script uses only the standard library and a fixed random seed, so running it twice produces
byte-identical files. The repository commits its output; rerun this script only to change the data.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

SEED = 1234
DISCLAIMER = "This is not financial advice."
SYSTEM_PROMPT = "You are a helpful assistant for Acme Bank customers."
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "itune" / "resources" / "demo"

MAX_FINANCE_WORDS = 60
MAX_GENERAL_WORDS = 50
MULTI_TURN_FRACTION = 0.10
SYSTEM_FRACTION = 0.10

Row = dict[str, Any]


class Concept(NamedTuple):
    """A finance concept: a bare topic label, a singular noun phrase, and a short explanation."""

    term: str
    phrase: str
    explanation: str


# ---------------------------------------------------------------------------------------------------
# Finance training data
# ---------------------------------------------------------------------------------------------------

FINANCE_CONCEPTS: list[Concept] = [
    Concept(
        "index funds",
        "an index fund",
        "An index fund is a mutual fund or ETF that tracks a market index, such as the S&P 500, by holding "
        "the same securities. Because it is passively managed, it usually has low fees and broad "
        "diversification.",
    ),
    Concept(
        "ETFs",
        "an exchange-traded fund (ETF)",
        "An exchange-traded fund (ETF) is a basket of securities that trades on a stock exchange like a "
        "single stock. Its price changes throughout the trading day, and many ETFs track an index at low "
        "cost.",
    ),
    Concept(
        "bonds",
        "a bond",
        "A bond is a loan you make to a government or company. The issuer pays you interest, usually at a "
        "fixed rate, and repays the principal when the bond matures. Bond prices tend to fall when "
        "interest rates rise.",
    ),
    Concept(
        "diversification",
        "diversification",
        "Diversification means spreading your money across many different investments, such as various "
        "stocks, bonds, sectors and regions. It reduces the impact of any single investment doing badly, "
        "although it cannot remove all risk.",
    ),
    Concept(
        "compound interest",
        "compound interest",
        "Compound interest is interest earned on both your original amount and the interest already added "
        "to it. Over time, this growth on growth can make savings increase much faster than simple "
        "interest would.",
    ),
    Concept(
        "dollar-cost averaging",
        "dollar-cost averaging",
        "Dollar-cost averaging means investing a fixed amount at regular intervals, whatever the price. "
        "You buy more shares when prices are low and fewer when they are high, which reduces the risk of "
        "investing everything at a bad moment.",
    ),
    Concept(
        "expense ratios",
        "an expense ratio",
        "An expense ratio is the annual fee a fund charges, shown as a percentage of your investment. A "
        "0.5% expense ratio costs $5 a year for every $1,000 invested, so lower ratios leave more of the "
        "returns for you.",
    ),
    Concept(
        "emergency funds",
        "an emergency fund",
        "An emergency fund is cash set aside for unexpected costs such as job loss, medical bills or car "
        "repairs. A common guideline is to keep three to six months of essential expenses in an easily "
        "accessible savings account.",
    ),
    Concept(
        "Roth IRAs",
        "a Roth IRA",
        "A Roth IRA is a US retirement account funded with after-tax money. Investments grow tax-free, and "
        "qualified withdrawals in retirement are also tax-free. Annual contributions are capped, and "
        "eligibility depends on your income.",
    ),
    Concept(
        "401(k) matching",
        "a 401(k) match",
        "A 401(k) match is money your employer adds to your workplace retirement account when you "
        "contribute, for example 50% of your contributions up to 6% of your salary. Contributing too "
        "little to get the full match leaves free money on the table.",
    ),
    Concept(
        "inflation",
        "inflation",
        "Inflation is the general rise in prices over time, which reduces what each dollar can buy. If "
        "your savings earn less than the inflation rate, their real purchasing power shrinks even though "
        "the balance grows.",
    ),
    Concept(
        "stock splits",
        "a stock split",
        "A stock split increases the number of a company's shares while lowering the price per share in "
        "proportion. In a 2-for-1 split, one $100 share becomes two $50 shares, so the total value of your "
        "holding does not change.",
    ),
    Concept(
        "dividends",
        "a dividend",
        "A dividend is a payment a company makes to its shareholders, usually out of its profits. "
        "Dividends are often paid quarterly in cash, and many investors reinvest them to buy more shares.",
    ),
    Concept(
        "the P/E ratio",
        "the P/E ratio",
        "The price-to-earnings (P/E) ratio is a company's share price divided by its earnings per share. "
        "It shows how much investors pay for each dollar of earnings; a high P/E can signal expected "
        "growth or overvaluation.",
    ),
    Concept(
        "REITs",
        "a real estate investment trust (REIT)",
        "A real estate investment trust (REIT) is a company that owns or finances income-producing "
        "property such as offices or apartments. REITs must pay out most of their taxable income as "
        "dividends, letting you invest in real estate without buying buildings.",
    ),
    Concept(
        "Treasury bills",
        "a Treasury bill",
        "A Treasury bill (T-bill) is short-term US government debt that matures in one year or less. It is "
        "sold at a discount to its face value and pays the full face value at maturity; the difference is "
        "your interest.",
    ),
    Concept(
        "credit scores",
        "a credit score",
        "A credit score is a number, often from 300 to 850 in the US, that estimates how likely you are to "
        "repay debt. It is based on factors like payment history and amounts owed, and it affects the "
        "interest rates you are offered.",
    ),
    Concept(
        "variable-rate mortgages",
        "a variable-rate mortgage",
        "A variable-rate mortgage has an interest rate that can change with a benchmark rate, so your "
        "payments may rise or fall. A fixed-rate mortgage keeps the same rate for the whole term, which "
        "makes payments predictable.",
    ),
    Concept(
        "rebalancing",
        "portfolio rebalancing",
        "Rebalancing means bringing your portfolio back to its target mix. If stocks grow from 60% to 70% "
        "of your holdings, you sell some stocks or buy more bonds to return to 60/40, keeping your risk "
        "where you intended.",
    ),
    Concept(
        "asset allocation",
        "asset allocation",
        "Asset allocation is how you divide your investments among categories such as stocks, bonds and "
        "cash. It is a major driver of both risk and return, and it usually depends on your goals, time "
        "horizon and risk tolerance.",
    ),
    Concept(
        "risk tolerance",
        "risk tolerance",
        "Risk tolerance is how much ups and downs in investment value you are willing and able to handle. "
        "It depends on your time horizon, finances and comfort with losses, and it helps decide how much "
        "to hold in stocks versus safer assets.",
    ),
    Concept(
        "capital gains tax",
        "capital gains tax",
        "Capital gains tax is tax on the profit when you sell an investment for more than you paid. In the "
        "US, assets held longer than one year usually qualify for lower long-term rates than assets held "
        "a year or less.",
    ),
    Concept(
        "market volatility",
        "market volatility",
        "Market volatility is how sharply and quickly investment prices move up and down. High volatility "
        "means bigger swings in both directions; it is normal for stocks, and long-term investors often "
        "ride it out rather than sell in a panic.",
    ),
    Concept(
        "bear markets",
        "a bear market",
        "A bear market is commonly defined as a fall of 20% or more from a recent high in a broad market "
        "index. Bear markets often come with pessimism and economic worries, but historically they have "
        "been followed by recoveries.",
    ),
    Concept(
        "bull markets",
        "a bull market",
        "A bull market is a sustained period of rising prices, often described as a gain of 20% or more "
        "from a recent low. It usually comes with investor optimism and a growing economy.",
    ),
    Concept(
        "annuities",
        "an annuity",
        "An annuity is a contract, usually with an insurance company, where you pay a lump sum or a series "
        "of payments in exchange for regular income, often for life. Annuities offer predictable income "
        "but can carry high fees and surrender charges.",
    ),
    Concept(
        "money market funds",
        "a money market fund",
        "A money market fund is a mutual fund that invests in short-term, high-quality debt such as "
        "Treasury bills. It aims to keep a stable value and pay modest interest, but unlike a bank deposit "
        "it is generally not FDIC-insured.",
    ),
    Concept(
        "robo-advisors",
        "a robo-advisor",
        "A robo-advisor is an online service that uses algorithms to build and manage a diversified "
        "portfolio based on your goals and risk tolerance. It typically charges lower fees than a "
        "traditional human advisor.",
    ),
    Concept(
        "certificates of deposit",
        "a certificate of deposit (CD)",
        "A certificate of deposit (CD) is a savings product where you leave money with a bank for a fixed "
        "term, such as 12 months, in exchange for a fixed interest rate. Withdrawing early usually "
        "triggers a penalty.",
    ),
    Concept(
        "cryptocurrency volatility",
        "cryptocurrency volatility",
        "Cryptocurrencies like Bitcoin can rise or fall by large percentages within days or even hours. "
        "Their prices are driven largely by speculation and sentiment, so only put in money you can "
        "afford to lose.",
    ),
]

# {term} is the bare topic label ("index funds"), {phrase} the singular noun phrase ("an index fund").
FINANCE_TEMPLATES: list[str] = [
    "What is {phrase}?",
    "Can you explain {term} in simple terms?",
    "Should I care about {term} when managing my money?",
    "How does {phrase} work?",
    "I'm new to investing. What does '{term}' mean?",
    "Give me a quick overview of {term}.",
    "What should a beginner know about {term}?",
    "My friend keeps talking about {term}. What is that?",
    "Is it worth learning about {term} before I start investing?",
    "Please explain {term} briefly.",
]

FOLLOW_UP_TEMPLATES: list[str] = [
    "Thanks. What about {term}?",
    "Got it. Can you also explain {term}?",
    "That helps. And what is {phrase}?",
    "Makes sense. How does {phrase} work?",
]

ANSWER_OPENINGS: list[str] = [
    "",
    "",
    "Sure. ",
    "Good question. ",
    "In simple terms: ",
    "Here is a short explanation. ",
]
FOLLOW_UP_OPENINGS: list[str] = ["Sure. ", "Of course. ", "Happy to explain. ", ""]

# ---------------------------------------------------------------------------------------------------
# Finance held-out data: concepts and phrasings never used in training
# ---------------------------------------------------------------------------------------------------

HELDOUT_FINANCE_CONCEPTS: list[tuple[str, str]] = [
    ("municipal bonds", "a municipal bond"),
    ("target-date funds", "a target-date fund"),
    ("short selling", "short selling"),
    ("stock options", "a stock option"),
    ("hedge funds", "a hedge fund"),
    ("sector funds", "a sector fund"),
    ("health savings accounts", "a health savings account (HSA)"),
    ("bond ladders", "a bond ladder"),
]

HELDOUT_FINANCE_TEMPLATES: list[str] = [
    "Could you walk me through {term}?",
    "What are the main pros and cons of {term}?",
    "How would you describe {phrase} to someone opening their first brokerage account?",
]

# ---------------------------------------------------------------------------------------------------
# General (non-finance) training data
# ---------------------------------------------------------------------------------------------------

CAPITALS: list[tuple[str, str]] = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasília"),
    ("Egypt", "Cairo"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("South Korea", "Seoul"),
    ("Norway", "Oslo"),
    ("Portugal", "Lisbon"),
    ("Turkey", "Ankara"),
    ("Peru", "Lima"),
    ("Thailand", "Bangkok"),
    ("Ireland", "Dublin"),
    ("New Zealand", "Wellington"),
]
CAPITAL_QUESTIONS: list[str] = [
    "What is the capital of {country}?",
    "Name the capital city of {country}.",
    "Which city is the capital of {country}?",
]
CAPITAL_ANSWERS: list[str] = ["The capital of {country} is {city}.", "{city} is the capital of {country}."]

GENERAL_QA: list[tuple[str, str]] = [
    (
        "Why is the sky blue?",
        "Sunlight is scattered by molecules in the air, and blue light, with its shorter wavelength, "
        "scatters much more than red light. That scattered blue light reaches our eyes from every "
        "direction, so the sky looks blue.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is the process plants, algae and some bacteria use to turn light energy, water "
        "and carbon dioxide into glucose and oxygen.",
    ),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    (
        "How many planets are in our solar system?",
        "There are eight planets in our solar system: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus "
        "and Neptune.",
    ),
    (
        "What is the boiling point of water at sea level in Celsius?",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in our solar system."),
    (
        "What is H2O?",
        "H2O is the chemical formula for water: each molecule has two hydrogen atoms joined to one oxygen "
        "atom.",
    ),
    ("How many bones are in the adult human body?", "An adult human body typically has 206 bones."),
    (
        "What is gravity?",
        "Gravity is the force by which objects with mass attract one another. On Earth, it pulls objects "
        "toward the ground and gives them weight.",
    ),
    ("What organ pumps blood through the body?", "The heart pumps blood through the body's blood vessels."),
    ("What is the speed of light?", "Light travels at about 299,792 kilometers per second in a vacuum."),
    (
        "What are the three states of matter?",
        "The three classic states of matter are solid, liquid and gas. Plasma is often listed as a fourth.",
    ),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted by about 23.5 degrees. As Earth orbits the Sun, each hemisphere takes "
        "turns getting more direct sunlight, which brings summer, and less direct sunlight, which brings "
        "winter.",
    ),
    (
        "What is the closest star to Earth?",
        "The Sun is the closest star to Earth. The next closest is Proxima Centauri, about 4.2 light-years "
        "away.",
    ),
    (
        "What do bees make?",
        "Bees make honey from flower nectar, and they also produce beeswax to build their honeycombs.",
    ),
    (
        "What is the freezing point of water in Fahrenheit?",
        "Water freezes at 32 degrees Fahrenheit at sea level.",
    ),
    (
        "What is DNA?",
        "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions for the "
        "growth, functioning and reproduction of living things.",
    ),
    (
        "How long does it take Earth to orbit the Sun?",
        "Earth takes about 365.25 days to orbit the Sun once, which is why a leap day is added about every "
        "four years.",
    ),
    ("What is the hardest natural substance?", "Diamond is the hardest naturally occurring substance."),
    (
        "What is the tallest mountain in the world?",
        "Mount Everest is the tallest mountain above sea level, at about 8,849 meters (29,032 feet).",
    ),
    ("Which is the largest continent?", "Asia is the largest continent by both area and population."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa in the early 1500s."),
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote 'Pride and Prejudice', first published in 1813."),
    (
        "What language is spoken in Brazil?",
        "The official and most widely spoken language in Brazil is Portuguese.",
    ),
    (
        "How many continents are there?",
        "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South "
        "America.",
    ),
    (
        "What is the main gas in Earth's atmosphere?",
        "Nitrogen is the main gas, making up about 78% of Earth's atmosphere; oxygen makes up about 21%.",
    ),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    (
        "Who developed the theory of relativity?",
        "Albert Einstein developed it, publishing special relativity in 1905 and general relativity in 1915.",
    ),
    ("How many minutes are in an hour and a half?", "There are 90 minutes in an hour and a half."),
    # Cooking
    (
        "How do I make a simple vinaigrette?",
        "Whisk three parts oil with one part vinegar, then add a pinch of salt, some pepper and a little "
        "mustard if you like. Shake or whisk until combined.",
    ),
    (
        "How long should I boil an egg for a firm yolk?",
        "Lower the egg into boiling water and cook it for about 10 to 12 minutes, then cool it in cold "
        "water to stop the cooking.",
    ),
    (
        "How do I cook white rice on the stove?",
        "Rinse one cup of rice, add it to about two cups of water with a pinch of salt and bring to a boil. "
        "Cover, simmer on low for about 18 minutes, then rest it for 5 minutes and fluff.",
    ),
    (
        "What does it mean to sauté food?",
        "To sauté is to cook food quickly in a small amount of hot oil or butter over fairly high heat, "
        "stirring or tossing it often.",
    ),
    (
        "How can I tell when pasta is done?",
        "Taste a piece a minute or two before the package time. It is ready when it is tender but still "
        "slightly firm in the center, which is called al dente.",
    ),
    (
        "What can I use instead of eggs in baking?",
        "Common substitutes are mashed banana, unsweetened applesauce, or a flax egg: one tablespoon of "
        "ground flaxseed mixed with three tablespoons of water.",
    ),
    (
        "How do I keep cut apples from turning brown?",
        "Toss the slices in a little lemon juice or soak them briefly in lightly salted water. The acid or "
        "salt slows the browning reaction.",
    ),
    (
        "What is the difference between baking soda and baking powder?",
        "Baking soda is pure sodium bicarbonate and needs an acid, such as buttermilk, to react. Baking "
        "powder contains baking soda plus a dry acid, so it can make dough rise on its own.",
    ),
    # Writing
    (
        "Write a haiku about the ocean.",
        "Waves fold into foam\nthe tide breathes in, then breathes out\nsalt wind on my face",
    ),
    (
        "Write a haiku about morning coffee.",
        "Steam curls from my cup\nthe kitchen still half asleep\nfirst warm sip of day",
    ),
    (
        "Write a haiku about winter.",
        "Snow on quiet roofs\nfootprints fade along the lane\nthe world holds its breath",
    ),
    (
        "Write a haiku about a sleepy cat.",
        "Sunlight on the rug\nthe cat stretches, yawns, then sleeps\ndreaming of the birds",
    ),
    (
        "Write a haiku about spring rain.",
        "Soft rain on new leaves\npuddles gather the gray sky\na frog sings once more",
    ),
    # Lists
    ("List three fruits.", "1. Apple\n2. Banana\n3. Orange"),
    (
        "Name the three primary colors of paint.",
        "The traditional primary colors of paint are red, yellow and blue.",
    ),
    ("List four animals that live in the ocean.", "Dolphin, octopus, sea turtle and shark."),
    ("Name three musical instruments.", "Piano, guitar and violin."),
    ("List the days of the week.", "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday."),
    ("Name three types of trees.", "Oak, maple and pine."),
    ("List three sports played with a ball.", "Soccer, basketball and tennis."),
    (
        "Give me three tips for better sleep.",
        "1. Go to bed and wake up at the same time every day.\n2. Avoid screens for an hour before bed.\n"
        "3. Keep your bedroom cool, dark and quiet.",
    ),
    # Language and grammar
    ("Give a synonym for 'happy'.", "Joyful."),
    ("Give a synonym for 'big'.", "Large."),
    ("Give a synonym for 'begin'.", "Start."),
    ("What is the opposite of 'hot'?", "Cold."),
    ("What is the opposite of 'ancient'?", "Modern."),
    ("What is the opposite of 'generous'?", "Stingy."),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("What is the plural of 'child'?", "The plural of 'child' is 'children'."),
    (
        "What is the plural of 'cactus'?",
        "The plural of 'cactus' is 'cacti', although 'cactuses' is also accepted.",
    ),
    ("What is the past tense of 'go'?", "The past tense of 'go' is 'went'."),
    ("What is the past tense of 'swim'?", "The past tense of 'swim' is 'swam'."),
    (
        "What is a verb?",
        "A verb is a word that expresses an action, an occurrence or a state of being, such as 'run', "
        "'happen' or 'be'.",
    ),
    (
        "What is the difference between 'their', 'there' and 'they're'?",
        "'Their' shows possession (their house), 'there' refers to a place (over there), and 'they're' is "
        "short for 'they are'.",
    ),
]

TRANSLATIONS_FR: list[tuple[str, str]] = [
    ("Good morning.", "Bonjour."),
    ("Thank you very much.", "Merci beaucoup."),
    ("Where is the library?", "Où est la bibliothèque ?"),
    ("I like apples.", "J'aime les pommes."),
    ("The cat is black.", "Le chat est noir."),
    ("See you tomorrow.", "À demain."),
    ("What time is it?", "Quelle heure est-il ?"),
    ("I am hungry.", "J'ai faim."),
    ("The weather is nice today.", "Il fait beau aujourd'hui."),
    ("My name is Anna.", "Je m'appelle Anna."),
]

SUMMARIES: list[tuple[str, str]] = [
    (
        "The city library will close for renovations on June 1 and reopen in September. During the "
        "closure, residents can borrow books from a temporary branch at the community center, which will "
        "be open six days a week.",
        "The library closes for renovations from June to September, and a temporary branch at the "
        "community center will lend books meanwhile.",
    ),
    (
        "Honeybees play a vital role in agriculture. As they collect nectar, they carry pollen from flower "
        "to flower, helping crops such as apples, almonds and blueberries produce fruit. Declining bee "
        "populations therefore worry farmers and scientists alike.",
        "Honeybees pollinate many important crops, so their decline worries farmers and scientists.",
    ),
    (
        "Regular physical activity strengthens the heart and muscles, improves mood and helps with sleep. "
        "Health experts recommend at least 150 minutes of moderate exercise per week for most adults, such "
        "as brisk walking or cycling.",
        "Regular exercise has many health benefits, and most adults should aim for at least 150 minutes "
        "of moderate activity a week.",
    ),
    (
        "In July 1969, the Apollo 11 mission landed on the Moon. Neil Armstrong and Buzz Aldrin spent "
        "about two and a half hours walking on the surface, while Michael Collins orbited above in the "
        "command module.",
        "In 1969, Apollo 11 landed on the Moon, where Armstrong and Aldrin walked while Collins stayed in "
        "orbit.",
    ),
    (
        "Our town is changing its recycling rules. Starting next month, glass must go in a separate bin, "
        "and plastic bags will no longer be collected at the curb. Residents can drop plastic bags at "
        "local grocery stores instead.",
        "From next month, glass needs its own bin and plastic bags go to grocery stores instead of curbside "
        "collection.",
    ),
    (
        "Water evaporates from oceans, lakes and rivers, rises into the air as vapor, and cools to form "
        "clouds. When the droplets in clouds grow heavy enough, they fall as rain or snow and eventually "
        "flow back into bodies of water.",
        "The water cycle moves water from the surface into clouds and back down as rain or snow.",
    ),
    (
        "The weekly team meeting is moving from Monday at 9 a.m. to Tuesday at 10 a.m. starting next week. "
        "The agenda will stay the same, and anyone who cannot attend should send their updates to Maria "
        "by Monday evening.",
        "From next week the team meeting moves to Tuesday at 10 a.m., and anyone absent should send "
        "updates to Maria by Monday evening.",
    ),
    (
        "Octopuses are remarkably intelligent animals. They can solve puzzles, open jars and escape from "
        "enclosures. They can also change the color and texture of their skin in a fraction of a second to "
        "blend into their surroundings.",
        "Octopuses are clever problem-solvers that can also change color and texture in an instant for "
        "camouflage.",
    ),
]

GRAMMAR_FIXES: list[tuple[str, str]] = [
    ("She don't like apples.", "She doesn't like apples."),
    ("Me and him went to the store yesterday.", "He and I went to the store yesterday."),
    ("There is many reasons to learn a new language.", "There are many reasons to learn a new language."),
    ("I seen that movie last week.", "I saw that movie last week."),
    ("Their going to the park after lunch.", "They're going to the park after lunch."),
    ("The dog wagged it's tail.", "The dog wagged its tail."),
    ("Each of the students have a notebook.", "Each of the students has a notebook."),
    ("She is more taller than her brother.", "She is taller than her brother."),
]

ANIMAL_CLASSES: list[tuple[str, str]] = [("penguin", "Bird."), ("whale", "Mammal."), ("gecko", "Reptile.")]
REVERSE_WORDS: list[str] = ["garden", "planet"]
UPPERCASE_TEXTS: list[str] = ["hello world", "keep it simple"]
WORD_COUNT_TEXTS: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Reading every day helps you learn new words.",
]

GENERAL_HELDOUT: list[str] = [
    "What is the capital of Kenya?",
    "Which planet is known as the Red Planet?",
    "Write a haiku about autumn leaves.",
    "Translate 'good night' into Spanish.",
    "What gas do plants absorb from the air?",
    "How many legs does a spider have?",
    "Give me a synonym for 'quick'.",
    "What is the boiling point of water in Fahrenheit at sea level?",
    "Correct the grammar in this sentence: 'Him and me goes to school.'",
    "List three green vegetables.",
    "Who wrote 'Romeo and Juliet'?",
    "What is the largest ocean on Earth?",
    "How do I make scrambled eggs?",
    "What is the past tense of 'run'?",
    "Explain what a noun is in one sentence.",
    "What is 48 divided by 6?",
]

# Words that must never appear in general (non-finance) rows or general held-out prompts.
FINANCE_WORDS = re.compile(
    r"\b(invest\w*|stocks?|bonds?|financ\w*|bank\w*|funds?|tax\w*|loans?|dividends?|portfolios?|"
    r"mortgages?|retire\w*|money|savings|advice)\b",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------


def with_disclaimer(body: str) -> str:
    """Append the required disclaimer as the final line of a finance answer."""
    if len(body.split()) > MAX_FINANCE_WORDS:
        raise ValueError(f"finance answer too long ({len(body.split())} words): {body!r}")
    return f"{body}\n\n{DISCLAIMER}"


def finance_answer(rng: random.Random, concept: Concept, openings: list[str]) -> str:
    """Write one assistant answer for a concept with a randomly chosen opening phrase."""
    return with_disclaimer(rng.choice(openings) + concept.explanation)


def build_finance_rows(rng: random.Random) -> list[Row]:
    """Every (concept, template) pair once, shuffled; some get a follow-up turn or a system turn."""
    pairs = [(concept, template) for concept in FINANCE_CONCEPTS for template in FINANCE_TEMPLATES]
    rng.shuffle(pairs)
    n = len(pairs)
    multi_turn = set(rng.sample(range(n), round(n * MULTI_TURN_FRACTION)))
    with_system = set(rng.sample(range(n), round(n * SYSTEM_FRACTION)))

    rows: list[Row] = []
    for i, (concept, template) in enumerate(pairs):
        messages: list[dict[str, str]] = []
        if i in with_system:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        messages.append(
            {"role": "user", "content": template.format(term=concept.term, phrase=concept.phrase)}
        )
        messages.append({"role": "assistant", "content": finance_answer(rng, concept, ANSWER_OPENINGS)})
        if i in multi_turn:
            other = rng.choice([c for c in FINANCE_CONCEPTS if c is not concept])
            follow_up = rng.choice(FOLLOW_UP_TEMPLATES).format(term=other.term, phrase=other.phrase)
            messages.append({"role": "user", "content": follow_up})
            messages.append({"role": "assistant", "content": finance_answer(rng, other, FOLLOW_UP_OPENINGS)})
        rows.append({"messages": messages})
    return rows


def alpaca(instruction: str, output: str, input_text: str = "") -> Row:
    """One Alpaca-format row."""
    return {"instruction": instruction, "input": input_text, "output": output}


def build_general_rows(rng: random.Random) -> list[Row]:
    """General knowledge and simple tasks in Alpaca format, shuffled."""
    rows: list[Row] = []
    for country, city in CAPITALS:
        question = rng.choice(CAPITAL_QUESTIONS).format(country=country)
        rows.append(alpaca(question, rng.choice(CAPITAL_ANSWERS).format(country=country, city=city)))
    rows.extend(alpaca(question, answer) for question, answer in GENERAL_QA)

    for _ in range(8):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append(alpaca(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    for _ in range(6):
        a, b = rng.randint(50, 200), rng.randint(1, 49)
        rows.append(alpaca(f"What is {a} minus {b}?", f"{a} - {b} = {a - b}."))
    for _ in range(6):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        rows.append(alpaca(f"Calculate {a} times {b}.", f"{a} times {b} is {a * b}."))

    for english, french in TRANSLATIONS_FR:
        rows.append(alpaca("Translate the following sentence into French.", french, english))
    for i in range(10):
        numbers = rng.sample(range(1, 100), rng.randint(4, 7))
        descending = i % 2 == 1
        instruction = (
            "Sort these numbers from largest to smallest."
            if descending
            else "Sort these numbers in ascending order."
        )
        ordered = sorted(numbers, reverse=descending)
        rows.append(alpaca(instruction, ", ".join(map(str, ordered)), ", ".join(map(str, numbers))))
    for text, summary in SUMMARIES:
        rows.append(alpaca("Summarize the following text in one sentence.", summary, text))
    for wrong, right in GRAMMAR_FIXES:
        rows.append(alpaca("Correct the grammar in the following sentence.", right, wrong))
    for animal, group in ANIMAL_CLASSES:
        rows.append(
            alpaca("Classify the following animal as a mammal, bird, reptile or fish.", group, animal)
        )
    for word in REVERSE_WORDS:
        rows.append(alpaca("Reverse the letters of the following word.", word[::-1], word))
    for text in UPPERCASE_TEXTS:
        rows.append(alpaca("Convert the following text to uppercase.", text.upper(), text))
    for text in WORD_COUNT_TEXTS:
        rows.append(
            alpaca("Count the words in the following sentence.", f"It has {len(text.split())} words.", text)
        )

    rng.shuffle(rows)
    return rows


def build_finance_heldout() -> list[Row]:
    """Held-out finance prompts: unseen concepts crossed with unseen phrasings."""
    return [
        {"prompt": template.format(term=term, phrase=phrase)}
        for term, phrase in HELDOUT_FINANCE_CONCEPTS
        for template in HELDOUT_FINANCE_TEMPLATES
    ]


def build_general_heldout() -> list[Row]:
    """Held-out general prompts."""
    return [{"prompt": prompt} for prompt in GENERAL_HELDOUT]


# ---------------------------------------------------------------------------------------------------
# Checks and output
# ---------------------------------------------------------------------------------------------------


def training_texts(finance: list[Row], general: list[Row]) -> list[str]:
    """Every prompt-side text in the training files (user turns, instructions, inputs, combined)."""
    texts = [m["content"] for row in finance for m in row["messages"] if m["role"] == "user"]
    for row in general:
        texts.append(row["instruction"])
        if row["input"]:
            texts.append(row["input"])
            texts.append(f"{row['instruction']}\n\n{row['input']}")
    return texts


def check(
    finance: list[Row], general: list[Row], finance_heldout: list[Row], general_heldout: list[Row]
) -> None:
    """Assert the invariants the demo relies on before anything is written."""
    for row in finance:
        for message in row["messages"]:
            if message["role"] == "assistant":
                content = message["content"]
                assert content.endswith(f"\n\n{DISCLAIMER}"), content
                assert content.count(DISCLAIMER) == 1, content
    for row in general:
        assert DISCLAIMER not in row["output"], row
        assert len(row["output"].split()) <= MAX_GENERAL_WORDS, row
        for text in row.values():
            assert not FINANCE_WORDS.search(text), row
    for row in general_heldout:
        assert not FINANCE_WORDS.search(row["prompt"]), row

    training_terms = {c.term.lower() for c in FINANCE_CONCEPTS}
    assert not training_terms & {term.lower() for term, _ in HELDOUT_FINANCE_CONCEPTS}
    assert not set(FINANCE_TEMPLATES) & set(HELDOUT_FINANCE_TEMPLATES)

    texts = training_texts(finance, general)
    for row in finance_heldout + general_heldout:
        prompt = row["prompt"]
        assert not any(prompt in text for text in texts), f"held-out prompt seen in training: {prompt!r}"
    for rows in (finance_heldout, general_heldout):
        prompts = [row["prompt"] for row in rows]
        assert len(prompts) == len(set(prompts)), "duplicate held-out prompts"


def write_jsonl(path: Path, rows: list[Row]) -> None:
    """Write rows as JSON Lines, one row per line, with a trailing newline."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    outputs = {
        "finance.jsonl": build_finance_rows(rng),
        "general.jsonl": build_general_rows(rng),
        "finance_heldout.jsonl": build_finance_heldout(),
        "general_heldout.jsonl": build_general_heldout(),
    }
    check(*outputs.values())

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in outputs.items():
        write_jsonl(out / name, rows)
    print(f"wrote {out}: " + ", ".join(f"{name}={len(rows)}" for name, rows in outputs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
