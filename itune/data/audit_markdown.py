"""audit.md: the data audit for people (mixture, steps per source and filter, examples, tokens, checks)."""

from __future__ import annotations

from typing import Any

from itune.runs.files import AUDIT_PLOTS_DIR

MIXTURE_COLUMNS = ["source", "read", "kept", "val", "train avail.", "in mix", "passes", "upsampled"]
MIXTURE_COLUMNS += ["weight share", "effective"]
STEP_COLUMNS = ["step", "kind", "source", "in", "dropped", "redacted", "flagged", "truncated"]
TOKEN_COLUMNS = ["source", "tokens", "trained", "trained fraction", "share of trained tokens"]
TOKEN_COLUMNS += ["end-of-turn trained", "p50", "p95", "max"]
ROLE_COLUMNS = ["role", "tokens", "trained", "trained fraction", "share of tokens", "share of trained"]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def _header(audit: dict[str, Any]) -> list[str]:
    lines = [f"# Data audit ({audit['mode']} mode)", ""]
    if audit["note"]:
        lines += [f"> {audit['note']}", ""]
    lines += [
        f"- seed: {audit['seed']}; mixture hash: `{audit['mixture_hash'][:16]}…` (manifest.json)",
        f"- rows: {audit['rows_train']} train, {audit['rows_val']} validation",
        f"- max_length: {audit['max_length']} tokens",
        f"- template: {audit['template']['name']}, end of turn {audit['template']['end_of_turn']!r}",
        "",
        "## Checks",
        "",
    ]
    return lines + [
        f"- {'PASS' if c['ok'] else 'FAIL'} `{c['name']}`: {c['detail']}" for c in audit["checks"]
    ]


def _mixture(sources: dict[str, Any]) -> list[str]:
    rows = [
        [n, s["rows_read"], s["rows_kept"], s["rows_val"], s["rows_train_available"], s["rows_in_mix"]]
        + [s["passes"], "yes" if s["upsampled"] else "no"]
        + [f"{s['share_by_weight']:.3f}", f"{s['share_effective']:.3f}"]
        for n, s in sources.items()
    ]
    return ["", "## Mixture", "", *_table(MIXTURE_COLUMNS, rows)]


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    rows = [
        [st["name"], st["kind"], n, c["in"], c["dropped"], c["redacted"], c["flagged"], c["truncated"]]
        for st in steps
        for n, c in st["counts"].items()
    ]
    lines = ["## Steps (in order), per source", "", *_table(STEP_COLUMNS, rows)]
    for st in steps:
        if not st["details"] and not st["examples"]:
            continue
        lines += [f"### {st['name']} (`{st['target']}`)", ""]
        if st["details"]:
            lines += ["Found: " + ", ".join(f"{k} × {v}" for k, v in st["details"].items()), ""]
        for action, examples in st["examples"].items():
            for e in examples:
                lines.append(f"- {action}: {e['source']} row {e['row']}: {e['detail']}  ")
                if e["text"]:
                    text = e["text"].replace("`", "'")
                    lines.append(f"  `{text}`")
        lines.append("")
    return lines


def _tokens(audit: dict[str, Any]) -> list[str]:
    per_source = [
        [n, s["tokens_in_mix"], s["trained_tokens_in_mix"], s["trained_fraction"]]
        + [f"{s['share_of_trained_tokens']:.3f}", s["end_of_turn_trained"]]
        + [s["length"]["p50"], s["length"]["p95"], s["length"]["max"]]
        for n, s in audit["sources"].items()
    ]
    per_role = [
        [r, v["tokens_est"], v["trained_est"], v["trained_fraction"], v["share_of_tokens"]]
        + [v["share_of_trained_tokens"]]
        for r, v in audit["tokens"]["per_role"].items()
    ]
    return [
        "## Tokens per source (in the mixture)",
        "",
        *_table(TOKEN_COLUMNS, per_source),
        "## Tokens per role (estimated from a sample of each source, weighted by its rows in the mix)",
        "",
        *_table(ROLE_COLUMNS, per_role),
    ]


def to_markdown(audit: dict[str, Any]) -> str:
    """The audit for people: mixture, steps (per source and filter), examples, tokens, checks."""
    lines = _header(audit) + _mixture(audit["sources"]) + _steps(audit["steps"]) + _tokens(audit)
    lines += ["## Token lengths after templating", ""]
    lines += [f"![{n}]({AUDIT_PLOTS_DIR}/length_{n}.png)" for n in audit["sources"]] + [""]
    return "\n".join(lines)
