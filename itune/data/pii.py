"""PII detection on plain strings; moved to `itune.data.curate.pii_patterns`, importable from here too."""

from itune.data.curate.pii_patterns import (
    PII_KINDS,
    PII_PATTERNS,
    PII_PATTERNS_VERSION,
    PLACEHOLDERS,
    Validator,
    card_ok,
    check_kinds,
    find_pii,
    iban_ok,
    ip_ok,
    luhn_ok,
    n_digits,
    phone_ok,
    redact_pii,
)

__all__ = [
    "PII_KINDS",
    "PII_PATTERNS",
    "PII_PATTERNS_VERSION",
    "PLACEHOLDERS",
    "Validator",
    "card_ok",
    "check_kinds",
    "find_pii",
    "iban_ok",
    "ip_ok",
    "luhn_ok",
    "n_digits",
    "phone_ok",
    "redact_pii",
]
