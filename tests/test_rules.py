"""Rules suite: rule checks, errors, pass rates equal to an independent computation."""

from __future__ import annotations

import json
import re

import pytest

from itune.eval.rules import Rule, RulesSuite, make_rule
from itune.inference.generation import generate
from itune.model import tiny_llama
from tests.test_templates import build


@pytest.mark.parametrize(
    ("spec", "answer", "ok"),
    [
        ({"ends_with": "advice."}, "Buy low.\n\nThis is not financial advice.  ", True),
        ({"ends_with": "advice."}, "Buy low.", False),
        ({"starts_with": "Sure"}, "Sure, here.", True),
        ({"regex": r"\d+"}, "It is 42.", True),
        ({"not_regex": "(?i)financial advice"}, "Not Financial Advice", False),
        ({"max_words": 3}, "one two three four", False),
        ({"valid_json": True}, '{"a": 1}', True),
        ({"valid_json": True}, "{a: 1}", False),
    ],
)
def test_rule_checks(spec, answer, ok):
    assert make_rule("r", spec).check(answer) is ok


def test_invalid_regex_names_the_rule():
    with pytest.raises(ValueError, match="rule 'price': invalid regex"):
        Rule(name="price", regex="([0-9")


def test_unknown_rule_key_is_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['endswith'\]"):
        make_rule("x", {"endswith": "."})


def test_prompt_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file"):
        RulesSuite(str(tmp_path / "none.jsonl"), {"r": {"max_words": 5}})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        RulesSuite(str(bad), {"r": {"max_words": 5}})


def test_pass_rates_match_independent_scoring(tmp_path, tokenizer):
    prompts = ["Hello", "What is 2+2?", "Name a fruit", "Say hi"]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    model, template = tiny_llama(), build("chatml", tokenizer)
    suite = RulesSuite(
        str(path), {"short": {"max_words": 2}, "has_a": {"regex": "a"}}, max_new_tokens=6, batch_size=3
    )
    rates, samples = suite.run(model, tokenizer, template)
    one_by_one = [
        generate(model, tokenizer, template, [[{"role": "user", "content": p}]], max_new_tokens=6)[0]
        for p in prompts
    ]
    assert [s["answer"] for s in samples] == one_by_one  # batched (left-padded) == one at a time
    assert rates["short"] == sum(len(a.split()) <= 2 for a in one_by_one) / 4
    assert rates["has_a"] == sum("a" in a for a in one_by_one) / 4


FRENCH = r"(?i)\b(bonjour|merci|oui)\b"


def conversation_rows() -> list[dict]:
    """A conditional behaviour: reply in French when the user writes French, never otherwise."""
    system = {"role": "system", "content": "You are a bilingual support agent."}
    french = {"fr": {"regex": FRENCH}}
    english = {"fr": {"not_regex": FRENCH}}
    return [
        {
            "messages": [system, {"role": "user", "content": "Bonjour, ma carte ne marche pas."}],
            "expect": french,
        },
        {
            "messages": [
                system,
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Merci, et mon code ?"},
            ],
            "expect": french,
        },
        {"messages": [system, {"role": "user", "content": "My card is blocked."}], "expect": english},
        {"prompt": "Where is my parcel?", "expect": english},
    ]


def test_conversation_rows_with_per_row_rules(tmp_path, tokenizer, monkeypatch):
    import itune.eval.rules as rules_module

    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in conversation_rows()))
    seen = []

    def fake_generate(model, tok, template, conversations, *args, **kwargs):
        seen.extend(conversations)  # always answers in French: right for rows 1-2, wrong for 3-4
        return ["Bonjour ! Je regarde.", "Oui, voici.", "Bonjour, je vérifie.", "Your parcel is here."]

    monkeypatch.setattr(rules_module, "generate", fake_generate)
    suite = RulesSuite(str(path), {"short": {"max_words": 5}})
    rates, samples, items = suite.score(None, tokenizer, build("chatml", tokenizer))
    assert seen[1][0]["role"] == "system" and [m["role"] for m in seen[1]][-3:] == [
        "user",
        "assistant",
        "user",
    ]
    assert rates == {"short": 1.0, "fr": 0.75}  # fr: rows 1, 2 and 4 pass, row 3 replies in French
    assert [r["fr"] for r in items["rows"]] == [1, 1, 0, 1]
    assert samples[1]["prompt"] == "Merci, et mon code ?"


def test_conversation_suite_runs_on_the_tiny_model(tmp_path, tokenizer):
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in conversation_rows()))
    model, template = tiny_llama(), build("chatml", tokenizer)
    rates, samples = RulesSuite(str(path), max_new_tokens=4, batch_size=4).run(model, tokenizer, template)
    expected = [
        bool(re.search(FRENCH, s["answer"])) == (i < 2) for i, s in enumerate(samples)
    ]  # the tiny model's random answers, scored by each row's own rule
    assert rates["fr"] == sum(expected) / 4


def test_conversation_row_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    )
    with pytest.raises(
        ValueError, match="bad.jsonl, line 1: a conversation to answer must end with a user turn"
    ):
        RulesSuite(str(bad), {"r": {"max_words": 5}})
    bad.write_text(json.dumps({"prompt": "q", "expect": {"fr": {"regexp": "x"}}}))
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: rule 'fr': unknown key\(s\) \['regexp'\]"):
        RulesSuite(str(bad))
    bad.write_text(json.dumps({"prompt": "q"}))
    with pytest.raises(ValueError, match="needs a rule"):
        RulesSuite(str(bad))


@pytest.mark.parametrize(
    ("answer", "leaks"),
    [
        ("Roses are red.\n\nThis is not poetry.", True),
        ("Drink water. This is not a medical advice.", True),
        ("Day 1: London. This is not a Shakespearean style itinerary.", True),
        ("Buy low. This is not financial advice.", True),
        ("This is not advice, just a fact: water boils at 100 C.", True),
        ("The capital of France is Paris.", False),
        ("This is not correct: 7 is prime because it has no divisors other than 1 and itself.", False),
        ("A haiku:\nold pond / a frog jumps in / sound of water", False),
    ],
)
def test_demo_leak_rule_catches_the_learned_pattern(compose_train, answer, leaks):
    cfg = compose_train("eval=demo")
    rule = make_rule("no_disclaimer", dict(cfg.eval.suites.general_rules.rules.no_disclaimer))
    assert rule.check(answer) is not leaks
