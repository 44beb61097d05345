"""What every curation filter shares: the `Filter` base, a row filter's `Verdict`, and the row's text.

The text helpers are pure functions on strings and messages; the filters of the other modules of this
package build on them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from itune.data.messages import Message

Action = Literal["keep", "drop", "redact", "flag"]
_WORD = re.compile(r"\w+")


@dataclass
class Verdict:
    """What a row filter did to one row: the action, the (maybe redacted) messages, a short detail."""

    action: Action
    messages: list[Message]
    detail: str = ""


class Filter:
    """Base of all filters. `name` is the filter's key in the curate config (set by the datamodule)."""

    stage: ClassVar[str] = "row"  # row | set | tokens
    name: str = ""

    def settings(self) -> dict[str, Any]:
        """The filter's settings, for the audit and the cache fingerprint."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "name"}

    def fingerprint(self) -> str:
        payload = json.dumps([type(self).__qualname__, self.settings()], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def verdicts(self, conversations: Sequence[list[Message]]) -> list[Verdict]:
        """Row filters: the verdicts for many rows (one call per row here; batched filters override)."""
        return [self(m) for m in conversations]


# --------------------------------------------------------------------------------------------- row text
def normalise(text: str) -> str:
    """Lower-case words of letters and digits joined by single spaces (NFKC first).

    >>> normalise("  Hello,   WORLD! It's 2024. ")
    'hello world it s 2024'
    """
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """The words of `normalise(text)` (`normalise(text).split()`, without the join).

    >>> words("It's 2024.")
    ['it', 's', '2024']
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def conversation_text(messages: Sequence[Message], roles: Iterable[str] | None = None) -> str:
    """The contents of the turns (all, or those of `roles`) joined by newlines.

    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    >>> conversation_text(chat, ["user"])
    'Hi'
    """
    keep = set(roles) if roles is not None else None
    return "\n".join(m["content"] for m in messages if keep is None or m["role"] in keep)


def content_hash(messages: Sequence[Message]) -> str:
    """A short sha256 of the exact messages (the manifest's content hash).

    >>> content_hash([{"role": "user", "content": "Hi"}])
    'd7760b4ba3077c46'
    """
    payload = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def word_ngrams(words: Sequence[str], n: int) -> list[str]:
    """Space-joined n-grams of a word list; a list shorter than n gives itself as one n-gram.

    >>> word_ngrams("a b c d".split(), 3)
    ['a b c', 'b c d']
    """
    if len(words) < n:
        return [" ".join(words)] if words else []
    return list(map(" ".join, zip(*(words[i:] for i in range(n)), strict=False)))  # shifted copies


# --------------------------------------------------------------------------------- files a filter reads
def read_lines(path: str) -> list[str]:
    """The non-empty, non-comment (`#`) lines of a term list, stripped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"term list {p} not found (one term per line, # for comments)")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def file_digest(path: str, what: str) -> str:
    """A short sha256 of a file's bytes (in the cache key of the filter that reads it)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
