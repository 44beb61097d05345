"""The sweep report's pictures: tradeoff.png (x vs y, the Pareto front, the pick), by_<key>.png per numeric
swept key, and the inline SVG scatter of report.html. Axis labels say which way each metric is better.
Where runs have confidence bounds of an axis metric (`<key>_lo`, `<key>_hi`), both show them as error bars.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from itune.sweep.criterion import DEFAULT_METRIC, DEFAULT_RETENTION
from itune.sweep.report.collect import Run
from itune.sweep.report.render import axis_label, fmt
from itune.sweep.report.select import Report, finite, interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def is_change(key: str) -> bool:
    """Whether a metric is a change against the base model (its zero line means "no change")."""
    return key.startswith(("gain/", "forgetting/")) and not key.endswith("regressions")


def title(report: Report) -> str:
    """The trade-off's title: gain vs forgetting for the default axes, else `y vs x`."""
    if (report.x, report.y) == (DEFAULT_METRIC, DEFAULT_RETENTION):
        return "Gain vs forgetting"
    return f"{report.y} vs {report.x}"


def _plotted(report: Report) -> list[Run]:
    return [
        r
        for r in report.runs
        if r.status == "completed" and finite(r, report.x) is not None and finite(r, report.y) is not None
    ]


def number(text: str | None) -> float | None:
    """An override value as a number (None when it is not one)."""
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _short(run: Run, swept: Sequence[str]) -> str:
    return " ".join(f"{k.split('.')[-1]}={run.overrides.get(k, '')}" for k in swept) or run.name


def error_bars(runs: Sequence[Run], key: str) -> tuple[list[Run], list[list[float]]]:
    """The runs with a confidence interval of `key`, and matplotlib's `[below, above]` distances from
    their value to its bounds (clipped at 0: a bootstrap interval need not contain the mean)."""
    found = [(r, interval(r, key)) for r in runs if finite(r, key) is not None]
    found = [(r, ci) for r, ci in found if ci is not None]
    below = [max(0.0, r.metrics[key] - lo) for r, (lo, _) in found]
    above = [max(0.0, hi - r.metrics[key]) for r, (_, hi) in found]
    return [r for r, _ in found], [below, above]


def _draw_error_bars(ax: Axes, report: Report, done: Sequence[Run]) -> None:
    """Horizontal bars for the x metric's intervals, vertical ones for the y metric's."""
    label = "confidence interval"
    for axis, key in (("xerr", report.x), ("yerr", report.y)):
        runs, err = error_bars(done, key)
        if runs:
            ax.errorbar(
                [r.metrics[report.x] for r in runs],
                [r.metrics[report.y] for r in runs],
                **{axis: err},
                fmt="none",
                ecolor="tab:blue",
                alpha=0.5,
                capsize=3,
                label=label,
                zorder=1,
            )
            label = "_nolegend_"


def tradeoff_figure(report: Report) -> Figure:
    """x vs y (domain gain vs general retention by default): every completed run with its confidence
    intervals when the runs have them, the front joined in red, the pick starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _plotted(report)
    fig, ax = plt.subplots(figsize=(8, 6))
    _draw_error_bars(ax, report, done)
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
    _finish_tradeoff(ax, report)
    fig.tight_layout()
    return fig


def _finish_tradeoff(ax: Axes, report: Report) -> None:
    """Zero lines of change metrics, axis labels, the title with what is not plotted, the legend."""
    if is_change(report.y):
        ax.axhline(0, color="black", linewidth=0.6)
    if is_change(report.x):
        ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(axis_label(report.x))
    ax.set_ylabel(axis_label(report.y))
    others = {s: n for s, n in report.counts().items() if s != "completed" and n}
    note = (" | not plotted: " + ", ".join(f"{n} {s}" for s, n in others.items())) if others else ""
    ax.set_title(f"{title(report)}{note}", fontsize=10)
    ax.legend(loc="best", fontsize=8)


def plot_tradeoff(report: Report, path: Path) -> None:
    """Write `tradeoff_figure` to `path`."""
    import matplotlib.pyplot as plt

    fig = tradeoff_figure(report)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_override(report: Report, key: str, path: Path) -> None:
    """x and y metrics versus one numeric swept override, a line per combination of the other swept keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report.runs if r.status == "completed" and number(r.overrides.get(key)) is not None]
    others = [k for k in report.swept if k != key]
    values = [number(r.overrides.get(key)) for r in done]
    log_x = bool(values) and min(values) > 0 and max(values) / min(values) >= 10
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, (report.x, report.y), strict=True):
        groups: dict[str, list[Run]] = {}
        for r in done:
            groups.setdefault(
                " ".join(f"{k.split('.')[-1]}={r.overrides.get(k, '')}" for k in others), []
            ).append(r)
        for label, members in sorted(groups.items()):
            pts = sorted((number(r.overrides[key]), finite(r, metric)) for r in members)
            pts = [(a, b) for a, b in pts if b is not None]
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", label=label or "runs")
        if log_x:
            ax.set_xscale("log")
        if is_change(metric):
            ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel(key)
        ax.set_ylabel(axis_label(metric))
        ax.legend(fontsize=7)
    fig.suptitle(f"{report.x} and {report.y} versus {key}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _extent(report: Report, runs: Sequence[Run], key: str) -> tuple[float, float]:
    """The axis range of `key`: values, their confidence bounds, 0 for a change, with an 8% margin."""
    values = [r.metrics[key] for r in runs] + ([0.0] if is_change(key) else [])
    values += [b for r in runs for b in (interval(r, key) or ())]
    lo, hi = min(values), max(values)
    return (lo - 0.5, hi + 0.5) if hi == lo else (lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))


def _svg_error_bars(report: Report, runs: Sequence[Run], px: Callable, py: Callable) -> list[str]:
    """SVG lines from each run's lower to upper confidence bound, per axis metric that has them."""
    parts = []
    for r in runs:
        x, y = px(r.metrics[report.x]), py(r.metrics[report.y])
        if ci := interval(r, report.x):
            parts.append(f'<line x1="{px(ci[0]):.1f}" y1="{y:.1f}" x2="{px(ci[1]):.1f}" y2="{y:.1f}"')
        if ci := interval(r, report.y):
            parts.append(f'<line x1="{x:.1f}" y1="{py(ci[0]):.1f}" x2="{x:.1f}" y2="{py(ci[1]):.1f}"')
    return [f'{line} stroke="#1f77b4" stroke-opacity="0.5"/>' for line in parts]


def _tip(report: Report, r: Run) -> str:
    """A point's hover text: run, overrides, metrics (with their confidence intervals when present)."""
    lines = [r.name + (" (recommended)" if r.name == report.recommended else "")]
    lines += [f"{k}={v}" for k, v in r.overrides.items()]
    for k in report.metric_keys:
        ci = interval(r, k)
        lines.append(f"{k}: {fmt(r.metrics.get(k))}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""))
    return "\n".join(lines)


def svg_scatter(report: Report) -> str:
    """An inline SVG trade-off scatter with confidence intervals; hovering a point shows its run,
    overrides and metrics."""
    done = _plotted(report)
    if not done:
        return "<p>No completed run has both metrics: nothing to plot.</p>"
    w, h, pad = 640, 440, 60
    x0, x1 = _extent(report, done, report.x)
    y0, y1 = _extent(report, done, report.y)

    def px(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 2 * pad)

    def py(v: float) -> float:
        return h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">',
        f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>',
    ]
    if is_change(report.x):
        parts.append(f'<line x1="{px(0):.1f}" y1="{pad}" x2="{px(0):.1f}" y2="{h - pad}" stroke="#ccc"/>')
    if is_change(report.y):
        parts.append(f'<line x1="{pad}" y1="{py(0):.1f}" x2="{w - pad}" y2="{py(0):.1f}" stroke="#ccc"/>')
    for i in range(5):
        vx, vy = x0 + i * (x1 - x0) / 4, y0 + i * (y1 - y0) / 4
        parts.append(f'<text x="{px(vx):.1f}" y="{h - pad + 16}" text-anchor="middle">{vx:.3g}</text>')
        parts.append(f'<text x="{pad - 6}" y="{py(vy) + 4:.1f}" text-anchor="end">{vy:.3g}</text>')
    parts.append(
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">{html.escape(axis_label(report.x))}</text>'
    )
    parts.append(
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
        f"{html.escape(axis_label(report.y))}</text>"
    )
    parts += _svg_error_bars(report, done, px, py)
    front = sorted((r for r in done if r.name in report.front), key=lambda r: r.metrics[report.x])
    if len(front) > 1:
        pts = " ".join(f"{px(r.metrics[report.x]):.1f},{py(r.metrics[report.y]):.1f}" for r in front)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#d62728" stroke-width="2"/>')
    for r in done:
        colour = "#d62728" if r.name in report.front else "#7f7f7f"
        radius = 9 if r.name == report.recommended else 6
        stroke = ' stroke="black" stroke-width="2"' if r.name == report.recommended else ""
        tip = html.escape(_tip(report, r))
        parts.append(
            f'<circle cx="{px(r.metrics[report.x]):.1f}" cy="{py(r.metrics[report.y]):.1f}" r="{radius}" '
            f'fill="{colour}" fill-opacity="0.8"{stroke}><title>{tip}</title></circle>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
