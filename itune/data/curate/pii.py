"""The PII filter: redact or drop rows with e-mails, phones, card numbers, IBANs, SSNs and IP addresses.

The patterns and the checks that keep look-alikes out are in `itune.data.curate.pii_patterns`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from itune.data.curate.base import Filter, Verdict
from itune.data.curate.pii_patterns import PII_KINDS, PII_PATTERNS_VERSION, check_kinds, redact_pii
from itune.data.messages import Message


class PII(Filter):
    """Redact (typed placeholder) or drop rows with e-mails, phones, card numbers, IBANs, SSNs, IPs.

    Args:
        action: `redact` replaces each match by `[EMAIL]`, `[PHONE]`, ... ; `drop` drops the row.
        kinds: which kinds to look for (default: all of email, iban, credit_card, ssn, ip, phone).
        roles: which turns to scan (default: all).
    """

    def __init__(
        self,
        action: Literal["redact", "drop"] = "redact",
        kinds: list[str] | None = None,
        roles: list[str] | None = None,
    ) -> None:
        if action not in ("redact", "drop"):
            raise ValueError(f"curate PII action={action!r}; valid: redact, drop")
        self.action, self.kinds, self.roles = action, list(kinds or PII_KINDS), roles
        check_kinds(self.kinds)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"patterns_version": PII_PATTERNS_VERSION}  # in the cache key

    def __call__(self, messages: list[Message]) -> Verdict:
        out, found = [], {}
        for m in messages:
            if self.roles is not None and m["role"] not in self.roles:
                out.append(m)
                continue
            text, counts = redact_pii(m["content"], self.kinds)
            for k, v in counts.items():
                found[k] = found.get(k, 0) + v
            out.append({"role": m["role"], "content": text})
        if not found:
            return Verdict("keep", messages)
        detail = ",".join(f"{k}:{v}" for k, v in found.items())
        return Verdict("drop", messages, detail) if self.action == "drop" else Verdict("redact", out, detail)


def snippet(messages: Sequence[Message], limit: int = 240) -> str:
    """A one-line, PII-redacted preview of a conversation for reports.

    >>> snippet([{"role": "user", "content": "Mail me: a@b.io"}])
    'user: Mail me: [EMAIL]'
    """
    text = " | ".join(f"{m['role']}: {m['content']}" for m in messages)
    text = redact_pii(" ".join(text.split()))[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
