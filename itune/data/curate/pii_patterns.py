"""PII detection on plain strings: typed patterns, each with a validator that looks at the match in context.

A regex alone mistakes real data for PII ("AC Milan, 86 2020-2021" is not a phone number, "version 1.2.3.4"
is not an IP address), so every kind has a validator that sees the match and the text around it:

- email: the pattern alone;
- iban: ISO 13616 mod-97 check;
- credit_card: 13-19 digits, Luhn-checked, a card network's first digit (2-6), card-like grouping;
- ssn: US, dashed, with the never-issued ranges excluded;
- ip: IPv4/IPv6 that parses; an IPv4 right after a version word (`version`, `v`, `release`, `build`) is
  not one; a version-shaped IPv4 (one-digit first part, no three-digit part: `1.2.3.4`, `8.8.8.8`) needs a
  network word nearby (`IP`, `address`, `server`, `host`, `DNS`...); so does a short IPv6 such as `::1`;
- phone: a `+` country code (8-15 digits), a parenthesised area code (10-15 digits), a phone word just
  before it (`phone`, `tel`, `mobile`, `fax`, `call`, `contact`...; 9-15 digits, separators optional), or a
  phone-like grouping with one kind of separator: North American `555-123-4567` / `1-800-273-8255`, or a
  national trunk `0` such as `020 7946 0958` (10-11 digits).

Measured on real data with `scripts/measure_pii_precision.py` (every hit printed for labelling).

Speed: each kind's regex runs only on a text that has what every match of that kind needs (an `@`, enough
digits, a `-`, dots or colons: `_PRECHECKS`), so most turns skip most patterns; the results are those of
running every pattern.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

Validator = Callable[[re.Match[str]], bool]
_SEPARATOR = re.compile(r"[ .-]")
_NON_DIGITS = re.compile(r"\D+")
_IP_WORDS = re.compile(
    r"\b(?:ip|ipv[46]|ips|address(?:es)?|addr|server|servers|host|hosts|hostname|router|gateway|dns|"
    r"subnet|netmask|proxy|ping|localhost|firewall|network|lan|wan|vpn|dhcp|nameserver|connect\w*)\b",
    re.IGNORECASE,
)
_VERSION_BEFORE = re.compile(
    r"(?:\bv|\bversions?|\bver\.?|\brelease|\brel\.?|\bbuild|\brevision|\brev\.?|\bpatch|\bupdate)"
    r"\s*[:#]?\s*$",
    re.IGNORECASE,
)
_PHONE_WORDS = re.compile(
    r"\b(?:phone|telephone|tel|mobile|cell|cellphone|fax|call|dial|contact|whatsapp|sms|hotline|helpline)\b"
    r"[^\d\n]{0,20}$",
    re.IGNORECASE,
)
_YEAR_RANGE = re.compile(r"\b(?:1[89]|20)\d\d[-–/](?:(?:1[89]|20)\d\d|\d\d)\b")  # 2020-2021, 1999-00
_CONTEXT = 40  # characters before (and half as many after) a match in which context words count


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (credit-card numbers pass it, most random digit runs do not).

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (spaces allowed).

    >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(digits) % 97 == 1


def _digits(text: str) -> str:
    return _NON_DIGITS.sub("", text)


def n_digits(text: str) -> int:
    """How many decimal digits (`\\d`: any script's) a text has.

    >>> n_digits("tel 030 1234567"), n_digits("٣٤ and 12")
    (10, 4)
    """
    if text.isascii():  # a flag of the string: O(1)
        return sum(map(text.count, "0123456789"))
    return len(_digits(text))


def _groups(text: str) -> tuple[list[str], set[str]]:
    """The digit groups of a number and the set of separators between them.

    >>> _groups("555-123-4567")
    (['555', '123', '4567'], {'-'})
    """
    return _SEPARATOR.split(text), set(_SEPARATOR.findall(text))


def _before(m: re.Match[str], n: int = _CONTEXT) -> str:
    return m.string[max(0, m.start() - n) : m.start()]


def _after(m: re.Match[str], n: int = _CONTEXT // 2) -> str:
    return m.string[m.end() : m.end() + n]


def card_ok(m: re.Match[str]) -> bool:
    """A card number: 13-19 digits, Luhn, first digit 2-6, ungrouped or grouped in fours (Amex 4-6-5).

    >>> [card_ok(re.match(r".*", s)) for s in ("4111 1111 1111 1111", "01010100 01110011")]
    [True, False]
    """
    digits = _digits(m.group(0))
    if not (13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)):
        return False
    groups, seps = _groups(m.group(0))
    sizes = [len(g) for g in groups]
    if len(groups) == 1:
        return True
    fours = all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4
    return len(seps) == 1 and (fours or sizes in ([4, 6, 5], [4, 6, 4]))


def _ip_parses(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _version_shaped(ipv4: str) -> bool:
    """An IPv4 that reads like a version or section number: one-digit first part, no three-digit part.

    >>> _version_shaped("1.2.3.4"), _version_shaped("10.0.0.1"), _version_shaped("192.168.1.20")
    (True, False, False)
    """
    parts = ipv4.split(".")
    return len(parts[0]) == 1 and all(len(p) <= 2 for p in parts)


def ip_ok(m: re.Match[str]) -> bool:
    """An IP address: parses, not right after a version word; needs a network word if version-shaped.

    >>> [ip_ok(re.search(r"\\d[\\d.]+\\d", s)) for s in ("host 10.0.0.1", "version 10.0.0.1", "see 1.2.3.4")]
    [True, False, False]
    """
    text = m.group(0)
    if not _ip_parses(text):
        return False
    context = bool(_IP_WORDS.search(_before(m)) or _IP_WORDS.search(_after(m)))
    if ":" in text:  # IPv6: `::1` or a slice such as `a[::2]` needs context; a full address does not
        return context or sum(bool(g) for g in text.split(":")) >= 3
    if _VERSION_BEFORE.search(_before(m)):
        return False
    return context or not _version_shaped(text)


def _phone_grouped(text: str) -> bool:
    """Phone-like grouping with one kind of separator: North American or a national trunk `0`.

    >>> [_phone_grouped(s) for s in ("555-123-4567", "1-800-273-8255", "020 7946 0958", "86 2020-2021")]
    [True, True, True, False]
    """
    groups, seps = _groups(text)
    if len(seps) != 1:
        return False
    sizes = [len(g) for g in groups]
    if sizes == [3, 3, 4] or (sizes == [1, 3, 3, 4] and groups[0] == "1"):
        return True
    n = len(_digits(text))
    return groups[0].startswith("0") and 10 <= n <= 11 and len(groups) >= 3 and min(sizes) >= 2


def phone_ok(m: re.Match[str]) -> bool:
    """A phone number: `+` country code, `(area)` code, a phone word before it, or phone-like grouping.

    >>> texts = ("tel 0410787999", "AC Milan, 86 2020-2021", "Heat (2019) 2020 2021")
    >>> [phone_ok(re.search(r"[+(\\d][\\d() .-]+\\d", s)) for s in texts]
    [True, False, False]
    """
    text = m.group(0)
    n = len(_digits(text))
    if n < 8:  # fewer than every branch below needs (most matches: years, counts, prices)
        return False
    if _YEAR_RANGE.search(text):  # seasons and spans of years: "86 2020-2021", "+3 2019-2020"
        return False
    if text.startswith("+"):
        return 8 <= n <= 15
    if text.startswith("("):  # an area code, not a year: "(555) 123-4567", not "(2019) 2020 2021"
        return 10 <= n <= 15 and not re.match(r"\((?:1[89]|20)\d\d\)", text)
    if _PHONE_WORDS.search(_before(m)):
        return 9 <= n <= 15
    return _phone_grouped(text)


# kind → (pattern, validator of the match or None). Applied in this order: phone last, so that card
# numbers, IBANs, SSNs and IP addresses are already replaced when it runs.
PII_PATTERNS: dict[str, tuple[re.Pattern[str], Validator | None]] = {
    "email": (re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    "iban": (
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        lambda m: iban_ok(m.group(0)),
    ),
    "credit_card": (  # not inside a decimal
        re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)"),
        card_ok,
    ),
    "ssn": (re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), None),
    "ip": (
        re.compile(
            r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"
            r"[0-9A-Fa-f:]{2,39}[0-9A-Fa-f])(?![\w.:])"
        ),
        ip_ok,
    ),
    "phone": (
        re.compile(
            r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}"
            r"(?!\w|[.-]\d)"
        ),
        phone_ok,
    ),
}
PII_KINDS = tuple(PII_PATTERNS)
PII_PATTERNS_VERSION = 2  # bump when a pattern or check changes: it is part of the curate cache key
PLACEHOLDERS = {k: f"[{k.upper()}]" for k in PII_KINDS} | {"ip": "[IP_ADDRESS]"}
_IBAN_START = re.compile(r"[A-Z]{2}\d\d")
# kind → what every validated match of that kind needs in a text (given its digit count); a text that
# lacks it cannot match, so its pattern (a regex that tries every position) is skipped
_PRECHECKS: dict[str, Callable[[str, int], bool]] = {
    "email": lambda text, digits: "@" in text,
    "iban": lambda text, digits: digits >= 2 and _IBAN_START.search(text) is not None,
    "credit_card": lambda text, digits: digits >= 13,  # card_ok
    "ssn": lambda text, digits: digits >= 9 and "-" in text,
    "ip": lambda text, digits: (digits >= 4 and text.count(".") >= 3) or "::" in text or text.count(":") >= 7,
    "phone": lambda text, digits: digits >= 8,  # phone_ok
}


def check_kinds(kinds: Iterable[str]) -> None:
    """ValueError naming the valid kinds when `kinds` has an unknown one."""
    unknown = set(kinds) - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}; valid kinds: {', '.join(PII_KINDS)}")


def find_pii(text: str, kinds: Iterable[str] = PII_KINDS) -> dict[str, int]:
    """Counts of each kind of PII in `text` (the same matches `redact_pii` replaces).

    >>> find_pii("mail ann@example.com or call +1 (555) 010-2345")
    {'email': 1, 'phone': 1}
    """
    return redact_pii(text, kinds)[1]


def redact_pii(text: str, kinds: Iterable[str] = PII_KINDS) -> tuple[str, dict[str, int]]:
    """Replace PII by typed placeholders; return the new text and the count per kind.

    Kinds and their checks are in the module docstring.

    >>> redact_pii("card 4111 1111 1111 1111, ssn 123-45-6789, host 10.0.0.1")
    ('card [CREDIT_CARD], ssn [SSN], host [IP_ADDRESS]', {'credit_card': 1, 'ssn': 1, 'ip': 1})
    >>> redact_pii("AC Milan, 86 2020-2021: Inter; version 1.2.3.4")
    ('AC Milan, 86 2020-2021: Inter; version 1.2.3.4', {})
    """
    wanted = set(kinds)
    check_kinds(wanted)
    counts: dict[str, int] = {}
    digits = n_digits(text)
    for kind in PII_KINDS:
        if kind in wanted and _PRECHECKS[kind](text, digits):
            text, n = _redact_kind(text, kind)
            if n:
                counts[kind] = n
                digits = n_digits(text)
    return text, counts


def _redact_kind(text: str, kind: str) -> tuple[str, int]:
    """Replace the validated matches of one kind; return the new text and how many."""
    pattern, valid = PII_PATTERNS[kind]
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        if valid is not None and not valid(m):
            return m.group(0)
        n += 1
        return PLACEHOLDERS[kind]

    return pattern.sub(sub, text), n
