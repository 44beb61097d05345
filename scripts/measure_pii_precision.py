"""Run the PII detectors over real instruction data and print every hit in context, for labelling.

    python scripts/measure_pii_precision.py [--data ../shared/data] [--files alpaca_5000.json ...]
                                            [--context 50]

Runs two detector sets over every string of every row, kind by kind, as `redact_pii` does:
  before   the patterns of itune 0.x before issue 16 (frozen below, for comparison)
  after    the current `itune.data.pii.PII_PATTERNS`
Each hit is printed on one line: `<set> <kind> <file>:<row>  …left<<MATCH>>right…`, with `before+after`
when both sets found it (so a labeller reads each distinct hit once). A hit is a true positive when the
matched text really is an e-mail address / phone number / card number / ... (fictional ones included).
The summary gives rows scanned and hits per kind for both sets; label the hits to get precision.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from itune.data.pii import PII_PATTERNS, PLACEHOLDERS, iban_ok, luhn_ok

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ["alpaca_5000.json", "dolly_first6400_no_context.jsonl", "dolly_151_with_context.jsonl"]
SKIP_KEYS = {"id", "category", "key"}  # labels, not text

Validator = Callable[[re.Match[str]], bool]


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _ip_parses(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _old_phone(s: str) -> bool:
    return 10 <= len(_digits(s)) <= 15 or (s.startswith("+") and 8 <= len(_digits(s)) <= 15)


# The patterns before issue 16, verbatim (their validators looked at the matched text only).
BEFORE: dict[str, tuple[re.Pattern[str], Validator | None]] = {
    "email": PII_PATTERNS["email"],
    "iban": (
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        lambda m: iban_ok(m.group(0)),
    ),
    "credit_card": (
        re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)"),
        lambda m: 13 <= len(_digits(m.group(0))) <= 19 and luhn_ok(_digits(m.group(0))),
    ),
    "ssn": (re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), None),
    "ip": (
        re.compile(
            r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"
            r"[0-9A-Fa-f:]{2,39}[0-9A-Fa-f])(?![\w.:])"
        ),
        lambda m: _ip_parses(m.group(0)),
    ),
    "phone": (
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?|\d{1,4}[\s.-])?"
            r"\d{2,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?![\w])"
        ),
        lambda m: _old_phone(m.group(0)),
    ),
}


def strings(value: Any) -> Iterator[str]:
    """Every string in a row (nested lists and dicts too), label columns left out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in SKIP_KEYS:
                yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def rows(path: Path) -> Iterator[str]:
    """The text of each row of a JSON array or JSONL file (its strings joined by newlines)."""
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if path.suffix == ".json" else map(json.loads, text.splitlines())
    for record in records:
        yield "\n".join(strings(record))


def detect(text: str, patterns: dict[str, tuple[re.Pattern[str], Validator | None]]) -> list[tuple]:
    """(kind, position, match, left, right) of every validated match, kind by kind like `redact_pii`."""
    found = []
    for kind, (pattern, valid) in patterns.items():

        def sub(m: re.Match[str], kind: str = kind, valid: Validator | None = valid) -> str:
            if valid is not None and not valid(m):
                return m.group(0)
            found.append((kind, m.start(), m.group(0), m.string[: m.start()], m.string[m.end() :]))
            return PLACEHOLDERS[kind]

        text = pattern.sub(sub, text)
    return found


def pair(before: list[tuple], after: list[tuple]) -> Iterator[tuple]:
    """(label, kind, match, left, right) per distinct hit: `before+after` when both sets found it."""
    remaining = Counter((kind, match) for kind, _, match, *_ in after)
    for kind, _, match, left, right in before:
        both = remaining[(kind, match)] > 0
        remaining[(kind, match)] -= both
        yield ("before+after" if both else "before"), kind, match, left, right
    for kind, _, match, left, right in after:
        if remaining[(kind, match)] > 0:
            remaining[(kind, match)] -= 1
            yield "after", kind, match, left, right


def show(left: str, match: str, right: str, width: int) -> str:
    """One line of context around a match, whitespace collapsed."""
    left, right = re.sub(r"\s+", " ", left)[-width:], re.sub(r"\s+", " ", right)[:width]
    return f"…{left}<<{match}>>{right}…"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--files", nargs="+", default=DEFAULT_FILES, help="files under --data")
    parser.add_argument("--context", type=int, default=50, help="characters shown each side of a hit")
    args = parser.parse_args()
    paths = [Path(args.data) / f for f in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"not found: {', '.join(missing)} (pass --data or --files)")

    counts: dict[str, Counter[str]] = {"before": Counter(), "after": Counter()}
    n_rows = 0
    for path in paths:
        for i, text in enumerate(rows(path)):
            n_rows += 1
            found = {"before": detect(text, BEFORE), "after": detect(text, PII_PATTERNS)}
            for name, hits in found.items():
                counts[name].update(kind for kind, *_ in hits)
            for label, kind, match, left, right in pair(found["before"], found["after"]):
                context = show(left, match, right, args.context)
                print(f"{label:12} {kind:11} {path.name}:{i}  {context}")

    print(f"\nrows scanned: {n_rows} ({', '.join(args.files)})")
    print(f"{'kind':12} {'before':>7} {'after':>7}")
    for kind in PII_PATTERNS:
        print(f"{kind:12} {counts['before'][kind]:7d} {counts['after'][kind]:7d}")


if __name__ == "__main__":
    main()
