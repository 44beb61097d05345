"""The sensitive-terms filter: drop or flag rows that contain listed words or phrases (no network)."""

from __future__ import annotations

import re
from typing import Any, Literal

from itune.data.curate.base import Filter, Verdict, conversation_text, file_digest, read_lines
from itune.data.messages import Message


class Terms(Filter):
    """Drop or flag rows containing listed terms (toxicity, legally sensitive markers); no network.

    Args:
        terms: words or phrases, matched case-insensitively on word boundaries.
        files: text files with one term per line (`#` starts a comment).
        action: `drop` the row or `flag` it (kept, counted and listed in the audit).
        roles: which turns to scan (default: all).
    """

    def __init__(
        self,
        terms: list[str] | None = None,
        files: list[str] | None = None,
        action: Literal["drop", "flag"] = "flag",
        roles: list[str] | None = None,
    ) -> None:
        if action not in ("drop", "flag"):
            raise ValueError(f"curate Terms action={action!r}; valid: drop, flag")
        self.terms, self.files, self.action, self.roles = list(terms or []), list(files or []), action, roles
        self._digests = [file_digest(f, "term list") for f in self.files]
        every = self.terms + [t for f in self.files for t in read_lines(f)]
        words = sorted({t.strip().lower() for t in every if t.strip()}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
            if words
            else None
        )
        # ASCII terms in an ASCII text match (case-insensitively) only where the lower-cased text has them:
        # a substring search skips the regex for most rows (not exact beyond ASCII: 'İ', 'ſ', 'K' fold)
        self._ascii_terms = tuple(words) if all(w.isascii() for w in words) else None

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"file_digests": self._digests}

    def __call__(self, messages: list[Message]) -> Verdict:
        if self._pattern is None:
            return Verdict("keep", messages)
        text = conversation_text(messages, self.roles)
        if self._ascii_terms is not None and text.isascii():
            lower = text.lower()
            if not any(w in lower for w in self._ascii_terms):
                return Verdict("keep", messages)
        hits = sorted({m.lower() for m in self._pattern.findall(text)})
        if not hits:
            return Verdict("keep", messages)
        return Verdict(self.action, messages, ",".join(hits))
