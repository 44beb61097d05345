"""The forgetting report rendered: Markdown table, bar chart with CI error bars, Rich table (terminal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("metric", "kind", "n", "base", "tuned", "improvement", "CI", "p (Holm)", "MDE", "flag")
MDE_NOTE = (
    "MDE: the smallest change this many items detect with 80% power at the given alpha, assuming the "
    "tuned model's errors are independent of the base's (the worst case; a paired test usually sees less)."
)


def _num(value: float | None, spec: str = ".4f") -> str:
    """A number, or `n/a` where a metric has no item scores."""
    return "n/a" if value is None else format(value, spec)


def flag_text(row: dict[str, Any]) -> str:
    """`regression`, `better`, `n.s.` (a drop beyond the threshold that is not significant), `info` or ''.

    >>> flag_text({"informational": False, "regression": False, "significant": False, "improvement": -0.1,
    ...            "threshold": 0.02, "p": 0.3})
    'n.s.'
    """
    if row["informational"]:
        return "info"
    if row["regression"]:
        return "regression"
    if row["significant"]:
        return "better" if row["improvement"] > 0 else "worse"
    if row["improvement"] < -row["threshold"] and row["p"] is not None:
        return "n.s."
    return ""


def cells(row: dict[str, Any], digits: int = 4) -> list[str]:
    """The row's values in `COLUMNS` order, as text."""
    f = f".{digits}f"
    sig = f"+.{digits}f"
    ci = "n/a" if row["ci_lo"] is None else f"[{row['ci_lo']:{sig}}, {row['ci_hi']:{sig}}]"
    p = row["p_adj"] if row["p_adj"] is not None else row["p"]
    return [
        row["metric"],
        row["kind"],
        "n/a" if row["n"] is None else str(row["n"]),
        _num(row["base"], f),
        _num(row["tuned"], f".{digits}g" if row["informational"] else f),  # KL can be tiny
        _num(row["improvement"], sig),
        ci,
        _num(p, ".3g"),
        _num(row["mde"], ".3f"),
        flag_text(row),
    ]


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary bullets: mean improvements with their bounds, regression counts, KL, formats."""
    s = report["summary"]

    def bounded(key: str) -> str:
        return f"**{s[key]:+.4f}** [{s[f'{key}_lo']:+.4f}, {s[f'{key}_hi']:+.4f}]"

    lines = [
        f"- domain gain (mean improvement of domain metrics): {bounded('gain/domain_delta')}",
        f"- general change (negative = forgetting): {bounded('forgetting/general_delta')}",
        f"- regressions (significant and beyond threshold): **{s['forgetting/regressions']}**; "
        f"significant drops of general metrics: **{s['forgetting/significant_regressions']}**",
    ]
    if "forgetting/kl_general" in s:
        lines.append(f"- KL(base ‖ tuned) on general sources: **{s['forgetting/kl_general']:.4g}**")
    for name, meta in (report.get("suites") or {}).items():
        if meta.get("format"):
            wording = (
                "lm-eval's prompts, bare text"
                if meta["format"] == "plain"
                else "lm-eval's prompts in the template"
            )
            lines.append(f"- `{name}` ({meta.get('shape', '')}): `format: {meta['format']}` ({wording})")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the summary on top."""
    stats = report.get("stats") or {}
    level = 1 - stats.get("alpha", 0.05)
    small = [r["metric"] for r in report["rows"] if r["mde"] is not None and r["mde"] > r["threshold"]]
    lines = [
        "# Forgetting report: base → tuned",
        "",
        *_summary_lines(report),
        "",
        "Improvement is positive when better: the difference for scores, the relative drop for losses. "
        f"CI: {level:.0%} paired bootstrap ({stats.get('n_boot', '?')} resamples; summary bounds by a joint "
        "bootstrap); p: McNemar (0/1 items) or sign-flip permutation, Holm-corrected within each kind. "
        "A regression is significant *and* beyond its threshold. " + MDE_NOTE,
        "",
    ]
    if small:
        lines += [f"Too few items to detect a threshold-sized change: {', '.join(small)}.", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in report["rows"]:
        values = cells(r)
        values[-1] = f"**{values[-1]}** (> {r['threshold']:g})" if r["regression"] else values[-1]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars of each metric's improvement with CI error bars: domain blue, general green, regressions red."""
    rows = [r for r in report["rows"] if not r["informational"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    colours = [
        "tab:red" if r["regression"] else ("tab:blue" if r["kind"] == "domain" else "tab:green") for r in rows
    ]
    gains = [r["improvement"] for r in rows]
    errors = [
        [0.0 if r["ci_lo"] is None else max(0.0, r["improvement"] - r["ci_lo"]) for r in rows],
        [0.0 if r["ci_hi"] is None else max(0.0, r["ci_hi"] - r["improvement"]) for r in rows],
    ]
    ax.barh([r["metric"] for r in rows], gains, color=colours)
    with_ci = [i for i, r in enumerate(rows) if r["ci_lo"] is not None]  # val losses have no items
    ax.errorbar(
        [gains[i] for i in with_ci],
        with_ci,
        xerr=[[errors[0][i] for i in with_ci], [errors[1][i] for i in with_ci]],
        fmt="none",
        capsize=3,
        ecolor="black",
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("improvement over base, 95% CI\n(positive = better; red = significant regression)")
    kls = [f"{r['metric'].split('/')[1]} {r['tuned']:.3g}" for r in report["rows"] if r["informational"]]
    title = "Forgetting report: domain (blue) and general (green) metrics"
    ax.set_title(title + (f"\nKL(base ‖ tuned) on validation: {', '.join(kls)}" if kls else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def show_report(report: dict[str, Any], samples: dict[str, Any], n_samples: int = 3) -> None:
    """Print the report and a few tuned answers per suite to the terminal (stderr)."""
    console = Console(stderr=True)
    table = Table(title="forgetting report: base → tuned")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("metric", "kind", "flag") else "right")
    for r in report["rows"]:
        style = "red" if r["regression"] else ("dim" if r["informational"] else None)
        table.add_row(*cells(r, digits=3), style=style)
    console.print(table)
    console.print({k: round(v, 4) for k, v in report["summary"].items()})
    for suite, items in samples.get("tuned", {}).items():
        for item in items[:n_samples]:
            console.print(f"[bold]{suite}[/] Q: {item['prompt']}\n  A: {item['answer']}")
