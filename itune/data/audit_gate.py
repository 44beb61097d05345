"""What makes a data audit fail: its checks, and `fail_on` (itune-audit as a CI gate).

`fail_on` names audit steps (`pii`, `exact_dedup`, `near_dedup`, `terms`, `decontaminate`, `length`: the
keys of the curate filters; and `format`, `max_length`, `no_trained`); the audit fails when any row was
dropped, redacted, flagged or truncated by one of them.

Example:
    >>> fail_on_steps(["pii"], {"pii": object(), "terms": None})
    ['pii']
    >>> audit = {"steps": [{"name": "pii", "totals": {"redacted": 2}, "details": {"email": 2}}]}
    >>> raise_for_fail_on(audit, ["pii"])
    Traceback (most recent call last):
    ...
    itune.data.audit_gate.AuditError: data audit fail_on=[pii]: pii: 2 rows redacted (email × 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

BUILTIN_STEPS = ("format", "max_length", "no_trained")  # steps every audit has, whatever the filters


class AuditError(RuntimeError):
    """An audit check failed (e.g. the end-of-turn token is never trained), or a `fail_on` step found rows."""


def audit_steps(filters: Mapping[str, Any] | None) -> list[str]:
    """The step names an audit with these curate filters has (filters set to None are switched off).

    >>> audit_steps({"pii": object(), "near_dedup": None})
    ['format', 'pii', 'max_length', 'no_trained']
    """
    names = [name for name, f in (filters or {}).items() if f is not None]
    return [BUILTIN_STEPS[0], *names, *BUILTIN_STEPS[1:]]


def fail_on_steps(fail_on: str | Iterable[str] | None, filters: Mapping[str, Any] | None) -> list[str]:
    """`fail_on` as a list of step names, checked against the audit's steps before any data is read.

    Raises:
        ValueError: a name that is not a step of this audit, with the valid names.
    """
    if not fail_on:
        return []
    names = [fail_on] if isinstance(fail_on, str) else [str(n) for n in fail_on]
    valid = audit_steps(filters)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(
            f"fail_on={unknown} names no step of this audit; valid: {', '.join(valid)} "
            "(the curate filters in use and the built-in steps)"
        )
    return names


def _describe(step: Mapping[str, Any]) -> str:
    """`pii: 2 rows redacted (email × 2)`: what one step did, with its most common details."""
    acted = ", ".join(f"{n} row{'s' * (n != 1)} {action}" for action, n in step["totals"].items() if n)
    details = list((step.get("details") or {}).items())[:3]
    found = f" ({', '.join(f'{k} × {v}' for k, v in details)})" if details else ""
    return f"{step['name']}: {acted}{found}"


def raise_for_fail_on(audit: Mapping[str, Any], fail_on: list[str]) -> None:
    """AuditError (one line) naming each `fail_on` step that dropped, redacted, flagged or truncated rows."""
    hits = [st for st in audit["steps"] if st["name"] in fail_on and any(st["totals"].values())]
    if hits:
        raise AuditError(
            f"data audit fail_on=[{','.join(fail_on)}]: " + "; ".join(_describe(st) for st in hits)
        )


def raise_for_checks(audit: Mapping[str, Any]) -> None:
    """AuditError naming each failed check."""
    failed = [c for c in audit.get("checks", []) if not c["ok"]]
    if failed:
        raise AuditError("data audit failed: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed))
