"""The forgetting report: every metric on the base and the tuned model, the change, and regressions.

Improvement is signed so that positive is better: `tuned - base` for scores (accuracy, pass rates,
ROUGE), and the relative drop `(base - tuned) / base` for losses and perplexities. Each metric belongs
to a kind, `domain` (what the run should teach) or `general` (what it must not forget). A metric whose
improvement is below `-threshold` is flagged as a regression. The summary keys (`gain/domain_delta`,
`forgetting/general_delta`, `forgetting/regressions`) go to metrics.json so sweeps can optimise on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from itune.eval.runner import metric_kinds  # noqa: E402

LOWER_IS_BETTER = ("loss", "ppl")
JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "forgetting.json", "forgetting.md", "forgetting.png"


def improvement(metric: str, base: float, tuned: float) -> float:
    """Signed change, positive = better.

    >>> improvement("eval/mc/acc", 0.5, 0.6)
    0.09999999999999998
    >>> improvement("val/general/loss", 2.0, 2.5)
    -0.25
    """
    if metric.endswith(LOWER_IS_BETTER):
        return (base - tuned) / base if base else 0.0
    return tuned - base


def build_report(
    base: dict[str, float],
    tuned: dict[str, float],
    kinds: dict[str, str],
    threshold: float = 0.02,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Rows for every metric measured on both models, and the summary.

    Args:
        base / tuned: metrics of the base and the tuned model, same keys.
        kinds: metric → `domain` or `general` (metrics not listed count as general).
        threshold: a drop larger than this (in improvement units) is a regression.
        thresholds: per-metric thresholds that replace `threshold`.
    """
    rows = []
    for metric in sorted(set(base) & set(tuned)):
        gain = improvement(metric, base[metric], tuned[metric])
        limit = (thresholds or {}).get(metric, threshold)
        rows.append(
            {
                "metric": metric,
                "kind": kinds.get(metric, "general"),
                "base": base[metric],
                "tuned": tuned[metric],
                "delta": tuned[metric] - base[metric],
                "improvement": gain,
                "threshold": limit,
                "regression": gain < -limit,
            }
        )

    def mean(kind: str) -> float:
        values = [r["improvement"] for r in rows if r["kind"] == kind]
        return sum(values) / len(values) if values else 0.0

    summary = {
        "gain/domain_delta": mean("domain"),
        "forgetting/general_delta": mean("general"),
        "forgetting/regressions": sum(r["regression"] for r in rows),
    }
    return {"rows": rows, "summary": summary}


def compare_runs(
    base: dict[str, float],
    tuned: dict[str, float],
    suites: dict[str, Any],
    source_names: list[str],
    eval_cfg: Mapping[str, Any],
) -> dict[str, Any]:
    """The report for a run: suite metrics take their suite's kind; `val/<source>/loss` is general for
    the sources listed in `eval_cfg.general_sources` and domain otherwise; thresholds from `eval_cfg`."""
    general = set(eval_cfg.get("general_sources") or [])
    kinds = metric_kinds(suites, tuned)
    kinds |= {f"val/{s}/loss": "general" if s in general else "domain" for s in source_names}
    compared = {k: tuned[k] for k in base if k in tuned and k != "val/loss"}
    return build_report(base, compared, kinds, eval_cfg.get("threshold", 0.02), eval_cfg.get("thresholds"))


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the summary on top."""
    s = report["summary"]
    lines = [
        "# Forgetting report: base → tuned",
        "",
        f"- domain gain (mean improvement of domain metrics): **{s['gain/domain_delta']:+.4f}**",
        f"- general change (mean improvement of general metrics; negative = forgetting): "
        f"**{s['forgetting/general_delta']:+.4f}**",
        f"- regressions beyond threshold: **{s['forgetting/regressions']}**",
        "",
        "Improvement is positive when better: the difference for scores, the relative drop for losses.",
        "",
        "| metric | kind | base | tuned | delta | improvement | regression |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        flag = f"**yes** (> {r['threshold']:g})" if r["regression"] else ""
        lines.append(
            f"| {r['metric']} | {r['kind']} | {r['base']:.4f} | {r['tuned']:.4f} | {r['delta']:+.4f} "
            f"| {r['improvement']:+.4f} | {flag} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Horizontal bars of each metric's improvement: domain blue, general green, regressions red."""
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    colours = [
        "tab:red" if r["regression"] else ("tab:blue" if r["kind"] == "domain" else "tab:green") for r in rows
    ]
    ax.barh([r["metric"] for r in rows], [r["improvement"] for r in rows], color=colours)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("improvement over base (positive = better; red = regression)")
    ax.set_title("Forgetting report: domain (blue) and general (green) metrics")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """forgetting.json, forgetting.md and forgetting.png in the run directory."""
    (run_dir / JSON_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (run_dir / MARKDOWN_FILE).write_text(to_markdown(report), encoding="utf-8")
    if report["rows"]:
        plot(report, run_dir / PLOT_FILE)


def show_report(report: dict[str, Any], samples: dict[str, Any], n_samples: int = 3) -> None:
    """Print the report and a few tuned answers per suite to the terminal (stderr)."""
    console = Console(stderr=True)
    table = Table(title="forgetting report: base → tuned")
    for col in ("metric", "kind", "base", "tuned", "improvement"):
        table.add_column(col, justify="left" if col in ("metric", "kind") else "right")
    for r in report["rows"]:
        style = "red" if r["regression"] else None
        table.add_row(
            r["metric"],
            r["kind"],
            f"{r['base']:.3f}",
            f"{r['tuned']:.3f}",
            f"{r['improvement']:+.3f}",
            style=style,
        )
    console.print(table)
    console.print({k: round(v, 4) for k, v in report["summary"].items()})
    for suite, items in samples.get("tuned", {}).items():
        for item in items[:n_samples]:
            console.print(f"[bold]{suite}[/] Q: {item['prompt']}\n  A: {item['answer']}")
