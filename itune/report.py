"""itune-report: aggregate the run directories of one or more sweeps into a table, the Pareto front of
domain gain versus general retention, a recommended run, plots and a self-contained HTML page.

Every job directory of a sweep is a row: `completed` (metrics.json), `failed` (error.txt / status.json),
`unfinished` (started, no result: still running or killed) or `pending` (in the grid of a basic sweep, never
started). Written once, by `write_report`: report.csv, report.md, report.json, tradeoff.png,
by_<override>.png per numeric swept key, report.html.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from itune.sweep.criterion import DEFAULT_METRIC, DEFAULT_RETENTION, Criterion
from itune.sweep.status import ERROR_FILE, read_status

log = logging.getLogger(__name__)

STATUSES = ("completed", "failed", "unfinished", "pending")
SUMMARY_METRICS = [DEFAULT_METRIC, DEFAULT_RETENTION, "forgetting/regressions", "train/loss", "val/loss"]


@dataclass
class Run:
    """One job of a sweep: where it is, what it overrode, how it ended, what it measured."""

    name: str  # `<sweep dir name>/<job subdir>`
    path: str
    status: str
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    duration_s: float | None = None


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key] = value
    return out


def _error_line(run_dir: Path, status: dict[str, Any]) -> str:
    if status.get("error"):
        return str(status["error"])
    text = (run_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return text[-1] if text else "failed (error.txt is empty)"


def load_run(run_dir: Path, name: str) -> Run:
    """A Run from a job directory (metrics.json, status.json, error.txt, .hydra/overrides.yaml)."""
    status = read_status(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else None
    overrides = _parse_overrides(items or status.get("overrides") or [])
    metrics_file = run_dir / "metrics.json"
    metrics: dict[str, float] = {}
    if metrics_file.is_file():
        raw = json.loads(metrics_file.read_text(encoding="utf-8"))
        metrics = {
            k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    if status.get("status") == "failed" or (run_dir / ERROR_FILE).is_file():
        state, error = "failed", _error_line(run_dir, status)
    elif metrics_file.is_file():
        state, error = "completed", None
    else:
        state, error = "unfinished", None
    return Run(name, str(run_dir), state, overrides, metrics, error, status.get("duration_s"))


def _job_dirs(root: Path) -> list[Path]:
    """Job directories under a sweep directory (or the directory itself when it is one run)."""
    if (root / ".hydra").is_dir() and not (root / "multirun.yaml").is_file():
        return [root]
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir() and ".submitit" not in p.parts}
    found |= {p.parent for p in root.rglob("status.json") if ".submitit" not in p.parts}
    found.discard(root)

    def order(p: Path) -> tuple:
        return tuple(int(s) if s.isdigit() else s for s in p.relative_to(root).parts)

    return sorted(found, key=order)


def expected_grid(sweep_dir: Path) -> list[dict[str, str]] | None:
    """The override combinations of a basic-sweeper grid from multirun.yaml (None for other sweepers)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    conf = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    hydra = conf.get("hydra") or {}
    if not str((hydra.get("sweeper") or {}).get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
        args += list((hydra.get("overrides") or {}).get("task") or [])
        axes: list[list[str]] = []
        for override in OverridesParser.create().parse_overrides(args):
            key = override.get_key_element()
            if override.is_sweep_override():
                axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            else:
                axes.append([f"{key}={override.get_value_element_as_str()}"])
        return [_parse_overrides(combo) for combo in product(*axes)]
    except Exception as e:  # a grid we cannot expand here (e.g. glob choices): no pending rows
        log.warning("could not expand the grid of %s: %s", sweep_dir, e)
        return None


def collect_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every job of the given sweep (or run) directories, with pending grid points of basic sweeps."""
    runs: list[Run] = []
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} is not a directory: pass sweep dirs, e.g. outputs/multirun/<date>/<time>"
            )
        label = root.name if len(paths) == 1 else f"{root.parent.name}/{root.name}"
        found = [
            load_run(d, f"{label}/{d.relative_to(root)}" if d != root else label) for d in _job_dirs(root)
        ]
        grid = expected_grid(root)
        if grid:
            seen = [r.overrides for r in found]
            for i, combo in enumerate(grid):
                if combo not in seen:
                    found.append(Run(f"{label}/pending-{i}", str(root), "pending", combo))
        runs += found
    if not runs:
        raise FileNotFoundError(f"no run directories under {', '.join(map(str, paths))}")
    return runs


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between runs (the swept ones)."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def _finite(run: Run, key: str) -> float | None:
    value = run.metrics.get(key)
    return value if value is not None and math.isfinite(value) else None


def pareto_front(runs: Sequence[Run], x: str = DEFAULT_METRIC, y: str = DEFAULT_RETENTION) -> list[str]:
    """Names of the completed runs that no other run beats on both `x` and `y` (higher is better on both)."""
    points = [(r.name, _finite(r, x), _finite(r, y)) for r in runs if r.status == "completed"]
    points = [(n, a, b) for n, a, b in points if a is not None and b is not None]
    return [
        n for n, a, b in points if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for _, a2, b2 in points)
    ]


def recommend(runs: Sequence[Run], criterion: Criterion) -> tuple[str | None, str]:
    """(the run the criterion picks, why). Ties go to the better general retention, then fewer regressions."""
    done = [r for r in runs if r.status == "completed" and criterion.score(r.metrics) is not None]
    feasible = [r for r in done if criterion.feasible(r.metrics)]
    if not feasible:
        if not done:
            return None, f"no completed run has {criterion.metric}"
        closest = min(done, key=lambda r: criterion.violation(r.metrics))
        return None, (
            f"no run meets: {criterion.describe()}; closest is {closest.name} "
            f"(violation {criterion.violation(closest.metrics):.4g})"
        )

    def key(r: Run) -> tuple:
        retention = _finite(r, DEFAULT_RETENTION)
        return (
            criterion.score(r.metrics),
            retention if retention is not None else -math.inf,
            -(r.metrics.get("forgetting/regressions") or 0.0),
        )

    best = max(feasible, key=key)
    return best.name, f"{criterion.describe()}: {len(feasible)} of {len(done)} completed runs qualify"


@dataclass
class Report:
    runs: list[Run]
    swept: list[str]
    metric_keys: list[str]
    x: str
    y: str
    front: list[str]
    recommended: str | None
    reason: str
    criterion: str

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.runs) for s in STATUSES}


def build_report(
    runs: list[Run],
    criterion: Criterion | None = None,
    x: str = DEFAULT_METRIC,
    y: str = DEFAULT_RETENTION,
    metrics: Sequence[str] | None = None,
) -> Report:
    """Front, recommendation and table columns for the runs."""
    criterion = criterion or Criterion(metric=x, at_least={y: -0.05})
    present = {k for r in runs for k in r.metrics}
    if metrics:
        keys = list(metrics)
    else:
        keys = [k for k in [x, y, *SUMMARY_METRICS] if k in present]
        keys += sorted(k for k in present if k.startswith("eval/"))
    keys = list(dict.fromkeys(keys))
    recommended, reason = recommend(runs, criterion)
    return Report(
        runs,
        varying_keys(runs),
        keys,
        x,
        y,
        pareto_front(runs, x, y),
        recommended,
        reason,
        criterion.describe(),
    )


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def table_rows(report: Report) -> list[dict[str, str]]:
    """One dict per run: run, status, swept overrides, metrics, front, recommended, error."""
    rows = []
    for r in report.runs:
        row = {"run": r.name, "status": r.status}
        row |= {k: r.overrides.get(k, "") for k in report.swept}
        row |= {k: _fmt(r.metrics.get(k)) for k in report.metric_keys}
        row["pareto"] = "yes" if r.name in report.front else ""
        row["recommended"] = "yes" if r.name == report.recommended else ""
        row["error"] = r.error or ""
        rows.append(row)
    return rows


def to_markdown(report: Report) -> str:
    """The table with the criterion, the recommendation and the counts on top."""
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    lines = [
        "# Sweep report",
        "",
        f"- runs: {len(report.runs)} ({counts})",
        f"- swept: {', '.join(report.swept) or '(nothing varies)'}",
        f"- Pareto front ({report.x} vs {report.y}, higher is better): {', '.join(report.front) or '-'}",
        f"- criterion: {report.criterion}",
        f"- **recommended: {report.recommended or 'none'}** ({report.reason})",
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


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _short(run: Run, swept: Sequence[str]) -> str:
    return " ".join(f"{k.split('.')[-1]}={run.overrides.get(k, '')}" for k in swept) or run.name


def plot_tradeoff(report: Report, path: Path) -> None:
    """Domain gain vs general retention: every completed run, the front joined in red, the pick starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [
        r
        for r in report.runs
        if r.status == "completed" and _finite(r, report.x) is not None and _finite(r, report.y) is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.scatter(
        [r.metrics[report.x] for r in done],
        [r.metrics[report.y] for r in done],
        c="tab:gray",
        label="run",
        zorder=2,
    )
    front = sorted((r for r in done if r.name in report.front), key=lambda r: r.metrics[report.x])
    if front:
        ax.plot(
            [r.metrics[report.x] for r in front],
            [r.metrics[report.y] for r in front],
            "o-",
            c="tab:red",
            label="Pareto front",
            zorder=3,
        )
    for r in done:
        ax.annotate(
            _short(r, report.swept),
            (r.metrics[report.x], r.metrics[report.y]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    pick = next((r for r in done if r.name == report.recommended), None)
    if pick:
        ax.scatter(
            [pick.metrics[report.x]],
            [pick.metrics[report.y]],
            marker="*",
            s=300,
            c="gold",
            edgecolors="black",
            label="recommended",
            zorder=4,
        )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(f"{report.x} (domain gain, higher is better)")
    ax.set_ylabel(f"{report.y} (general retention, negative = forgetting)")
    others = {s: n for s, n in report.counts().items() if s != "completed" and n}
    note = (" | not plotted: " + ", ".join(f"{n} {s}" for s, n in others.items())) if others else ""
    ax.set_title(f"Gain vs forgetting{note}", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_override(report: Report, key: str, path: Path) -> None:
    """x and y metrics versus one numeric swept override, a line per combination of the other swept keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report.runs if r.status == "completed" and _number(r.overrides.get(key)) is not None]
    others = [k for k in report.swept if k != key]
    values = [_number(r.overrides.get(key)) for r in done]
    log_x = bool(values) and min(values) > 0 and max(values) / min(values) >= 10
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, (report.x, report.y), strict=True):
        groups: dict[str, list[Run]] = {}
        for r in done:
            groups.setdefault(
                " ".join(f"{k.split('.')[-1]}={r.overrides.get(k, '')}" for k in others), []
            ).append(r)
        for label, members in sorted(groups.items()):
            pts = sorted((_number(r.overrides[key]), _finite(r, metric)) for r in members)
            pts = [(a, b) for a, b in pts if b is not None]
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", label=label or "runs")
        if log_x:
            ax.set_xscale("log")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report.x} and {report.y} versus {key}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _svg_scatter(report: Report) -> str:
    """An inline SVG trade-off scatter; hovering a point shows its run, overrides and metrics."""
    done = [
        r
        for r in report.runs
        if r.status == "completed" and _finite(r, report.x) is not None and _finite(r, report.y) is not None
    ]
    if not done:
        return "<p>No completed run has both metrics: nothing to plot.</p>"
    w, h, pad = 640, 440, 60
    xs = [r.metrics[report.x] for r in done] + [0.0]
    ys = [r.metrics[report.y] for r in done] + [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x1 == x0 else (x0 - 0.08 * (x1 - x0), x1 + 0.08 * (x1 - x0))
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 == y0 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))

    def px(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def py(v: float) -> float:
        return h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
        f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>',
        f'<line x1="{px(0):.1f}" y1="{pad}" x2="{px(0):.1f}" y2="{h - pad}" stroke="#ccc"/>',
        f'<line x1="{pad}" y1="{py(0):.1f}" x2="{w - pad}" y2="{py(0):.1f}" stroke="#ccc"/>',
    ]
    for i in range(5):
        vx, vy = x0 + i * (x1 - x0) / 4, y0 + i * (y1 - y0) / 4
        parts.append(f'<text x="{px(vx):.1f}" y="{h - pad + 16}" text-anchor="middle">{vx:.3g}</text>')
        parts.append(f'<text x="{pad - 6}" y="{py(vy) + 4:.1f}" text-anchor="end">{vy:.3g}</text>')
    parts.append(
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">{html.escape(report.x)} (domain gain)</text>'
    )
    parts.append(
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
        f"{html.escape(report.y)} (general retention)</text>"
    )
    front = sorted((r for r in done if r.name in report.front), key=lambda r: r.metrics[report.x])
    if len(front) > 1:
        pts = " ".join(f"{px(r.metrics[report.x]):.1f},{py(r.metrics[report.y]):.1f}" for r in front)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#d62728" stroke-width="2"/>')
    for r in done:
        colour = "#d62728" if r.name in report.front else "#7f7f7f"
        radius = 9 if r.name == report.recommended else 6
        stroke = ' stroke="black" stroke-width="2"' if r.name == report.recommended else ""
        tip = "\n".join(
            [r.name + (" (recommended)" if r.name == report.recommended else "")]
            + [f"{k}={v}" for k, v in r.overrides.items()]
            + [f"{k}: {_fmt(r.metrics.get(k))}" for k in report.metric_keys]
        )
        parts.append(
            f'<circle cx="{px(r.metrics[report.x]):.1f}" cy="{py(r.metrics[report.y]):.1f}" r="{radius}" '
            f'fill="{colour}" fill-opacity="0.8"{stroke}><title>{html.escape(tip)}</title></circle>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def to_html(report: Report) -> str:
    """A self-contained page (no external files or scripts): summary, scatter with hover, table."""
    rows = table_rows(report)
    header = list(rows[0]) if rows else []
    body = []
    for row in rows:
        cls = row["status"] + (" pick" if row["recommended"] else "")
        body.append(
            f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(row[h]))}</td>" for h in header) + "</tr>"
        )
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    front = html.escape(", ".join(report.front) or "-")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>itune sweep report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; }} table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; }} th {{ background: #f3f3f3; position: sticky; top: 0; }}
tr.failed td {{ background: #fde2e2; }} tr.unfinished td, tr.pending td {{ background: #fff6d5; }}
tr.pick td {{ font-weight: bold; background: #e6f4e6; }} circle:hover {{ fill-opacity: 1; stroke: #000; }}
</style></head><body>
<h1>Sweep report</h1>
<ul>
<li>runs: {len(report.runs)} ({html.escape(counts)})</li>
<li>swept: {html.escape(", ".join(report.swept) or "(nothing varies)")}</li>
<li>Pareto front ({html.escape(report.x)} vs {html.escape(report.y)}): {front}</li>
<li>criterion: {html.escape(report.criterion)}</li>
<li><b>recommended: {html.escape(report.recommended or "none")}</b> ({html.escape(report.reason)})</li>
</ul>
<p>Hover a point for its run, overrides and metrics. Red: the Pareto front; outlined: the recommended run.</p>
{_svg_scatter(report)}
<h2>Runs</h2>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>
{chr(10).join(body)}
</table></body></html>
"""


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def write_report(report: Report, out: Path, plots: bool = True) -> list[Path]:
    """report.csv/.md/.json (+ tradeoff.png, by_<key>.png, report.html with `plots`); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.csv", out / "report.md", out / "report.json"]
    written[0].write_text(to_csv(report), encoding="utf-8")
    written[1].write_text(to_markdown(report), encoding="utf-8")
    payload = {k: v for k, v in asdict(report).items() if k != "runs"} | {
        "counts": report.counts(),
        "runs": [asdict(r) for r in report.runs],
    }
    written[2].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if plots:
        plot_tradeoff(report, out / "tradeoff.png")
        written.append(out / "tradeoff.png")
        for key in report.swept:
            if all(_number(r.overrides.get(key)) is not None for r in report.runs if key in r.overrides):
                plot_by_override(report, key, out / f"by_{_slug(key)}.png")
                written.append(out / f"by_{_slug(key)}.png")
        (out / "report.html").write_text(to_html(report), encoding="utf-8")
        written.append(out / "report.html")
    return written


def show(report: Report) -> None:
    """The table (swept keys and summary metrics, short headers) and the recommendation (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    table = Table(title=f"itune-report: {len(report.runs)} runs")
    metric_keys = [k for k in report.metric_keys if not k.startswith("eval/")]  # all of them: report.md
    for header in ["run", "status", *[k.split(".")[-1] for k in report.swept], *metric_keys, "front", "pick"]:
        table.add_column(header, overflow="fold")
    styles = {"failed": "red", "unfinished": "yellow", "pending": "yellow"}
    for r in report.runs:
        cells = [r.name, r.status, *[r.overrides.get(k, "") for k in report.swept]]
        cells += [_fmt(r.metrics.get(k)) for k in metric_keys]
        cells += ["yes" if r.name in report.front else "", "*" if r.name == report.recommended else ""]
        table.add_row(*cells, style="bold green" if r.name == report.recommended else styles.get(r.status))
    console.print(table)
    for r in report.runs:
        if r.error:
            console.print(f"[red]{r.name} failed:[/red] {r.error}")
    console.print(f"Pareto front: {', '.join(report.front) or '-'}")
    console.print(f"[bold]recommended: {report.recommended or 'none'}[/bold] ({report.reason})")


def run_report(cfg: Any) -> Path:
    """itune-report: collect, build, write and show the report of `cfg.sweeps`; returns the output dir."""
    sweeps = list(cfg.sweeps or [])
    if not sweeps:
        raise ValueError(
            "no sweep directory given: itune-report outputs/multirun/<date>/<time> [more dirs...]"
        )
    runs = collect_runs(sweeps)
    criterion = Criterion.parse(_plain(cfg.criterion))
    report = build_report(runs, criterion, cfg.x, cfg.y, list(cfg.metrics) if cfg.metrics else None)
    if cfg.out:
        out = Path(cfg.out)
    elif len(sweeps) == 1:
        out = Path(sweeps[0]) / "report"
    else:
        import time

        out = Path("outputs/report") / time.strftime("%Y-%m-%d/%H-%M-%S")
    write_report(report, out)
    show(report)
    log.info("report written to %s (open report.html for hover details)", out)
    return out


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
