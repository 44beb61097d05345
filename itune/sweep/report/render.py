"""The sweep report as text: table rows, report.md, report.csv, the console table, and the labels and
number formats the plots and report.html share. Axis labels say which way each metric is better; a metric
with confidence bounds on a plotted axis gets a `<key> CI` column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from itune.sweep.criterion import DEFAULT_METRIC, DEFAULT_RETENTION, metric_direction
from itune.sweep.report.collect import Run
from itune.sweep.report.select import Report, interval

CI = " CI"  # suffix of the column of a metric's confidence interval
CI_MEANING = "confidence interval of the change against the base (paired bootstrap, eval.stats)"
MEANINGS = {DEFAULT_METRIC: "domain gain", DEFAULT_RETENTION: "general retention, negative = forgetting"}
STYLES = {
    "failed": "red",
    "pruned": "dim",
    "interrupted": "yellow",
    "unfinished": "yellow",
    "pending": "yellow",
}


def axis_label(key: str) -> str:
    """`key (meaning, higher|lower is better)`.

    >>> axis_label("val/loss")
    'val/loss (lower is better)'
    """
    better = "lower" if metric_direction(key) == "minimize" else "higher"
    meaning = f"{MEANINGS[key]}; " if key in MEANINGS else ""
    return f"{key} ({meaning}{better} is better)"


def axes(report: Report) -> str:
    """`<x label> vs <y label>`: what the Pareto front trades off."""
    return f"{axis_label(report.x)} vs {axis_label(report.y)}"


def fmt(value: float | None) -> str:
    """A metric for a table cell: 4 significant digits, small values in scientific notation."""
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def counts_line(report: Report) -> str:
    """`3 completed, 1 failed`: the statuses that occur, with their counts."""
    return ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)


def with_ci(report: Report) -> set[str]:
    """The axis metrics (x, y) that some run has confidence bounds of: their table cells show the CI."""
    return {k for k in (report.x, report.y) if any(interval(r, k) for r in report.runs)}


def metric_columns(report: Report, keys: Sequence[str]) -> list[str]:
    """The metric columns of a table: each key, followed by `<key> CI` for the keys of `with_ci`."""
    bounded = with_ci(report)
    return [c for k in keys for c in ([k, k + CI] if k in bounded else [k])]


def metric_cells(report: Report, run: Run, keys: Sequence[str]) -> dict[str, str]:
    """The run's metrics as table cells (`metric_columns`); a CI cell reads `[lo, hi]`."""
    cells = {}
    for column in metric_columns(report, keys):
        if column.endswith(CI):
            ci = interval(run, column.removesuffix(CI))
            cells[column] = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
        else:
            cells[column] = fmt(run.metrics.get(column))
    return cells


def table_rows(report: Report) -> list[dict[str, str]]:
    """One dict per run: run, status, swept overrides, metrics (CIs of x and y), front, recommended, error."""
    rows = []
    for r in report.runs:
        row = {"run": r.name, "status": r.status}
        row |= {k: r.overrides.get(k, "") for k in report.swept}
        row |= metric_cells(report, r, report.metric_keys)
        row["pareto"] = "yes" if r.name in report.front else ""
        row["recommended"] = "yes" if r.name == report.recommended else ""
        row["error"] = r.error or ""
        rows.append(row)
    return rows


def to_markdown(report: Report) -> str:
    """The table with the criterion, the recommendation and the counts on top."""
    lines = [
        "# Sweep report",
        "",
        f"- runs: {len(report.runs)} ({counts_line(report)})",
        f"- swept: {', '.join(report.swept) or '(nothing varies)'}",
        f"- Pareto front ({axes(report)}): {', '.join(report.front) or '-'}",
        f"- criterion: {report.criterion}",
        f"- **recommended: {report.recommended or 'none'}** ({report.reason})",
        *[f"- note: {note}" for note in report.notes],
        *[f"- `{k}{CI}`: {CI_MEANING}" for k in sorted(with_ci(report))],
        "",
    ]
    rows = table_rows(report)
    header = list(rows[0]) if rows else ["run"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [str(row[h]).replace("|", "\\|") for h in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    """Every override and every metric of every run (machines read this one)."""
    override_keys = sorted({k for r in report.runs for k in r.overrides})
    metric_keys = sorted({k for r in report.runs for k in r.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "status", "path", *override_keys, *metric_keys, "pareto", "recommended", "error"])
    for r in report.runs:
        writer.writerow(
            [r.name, r.status, r.path]
            + [r.overrides.get(k, "") for k in override_keys]
            + [r.metrics.get(k, "") for k in metric_keys]
            + [r.name in report.front, r.name == report.recommended, r.error or ""]
        )
    return buf.getvalue()


def show(report: Report) -> None:
    """The table (swept keys and summary metrics, short headers) and the recommendation (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    table = Table(title=f"itune-report: {len(report.runs)} runs")
    metric_keys = [k for k in report.metric_keys if not k.startswith("eval/")]  # all of them: report.md
    swept = [k.split(".")[-1] for k in report.swept]
    for header in ["run", "status", *swept, *metric_columns(report, metric_keys), "front", "pick"]:
        table.add_column(header, overflow="fold")
    for r in report.runs:
        cells = [r.name, r.status, *[r.overrides.get(k, "") for k in report.swept]]
        cells += list(metric_cells(report, r, metric_keys).values())
        cells += ["yes" if r.name in report.front else "", "*" if r.name == report.recommended else ""]
        table.add_row(*cells, style="bold green" if r.name == report.recommended else STYLES.get(r.status))
    console.print(table)
    for r in report.runs:
        if r.error:
            console.print(f"[red]{r.name} {r.status}:[/red] {r.error}")
    console.print(f"Pareto front ({axes(report)}): {', '.join(report.front) or '-'}")
    console.print(f"[bold]recommended: {report.recommended or 'none'}[/bold] ({report.reason})")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
