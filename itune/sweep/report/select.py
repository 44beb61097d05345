"""Which runs of a sweep are best: the Pareto front of two metrics, the recommended run, the report's columns.

Each metric is better in its own direction (itune.sweep.criterion.metric_direction: losses and
perplexities lower, everything else higher). The default pick needs a significant domain gain and a
forgetting bound that holds (criterion.default_criterion: bounds on `gain/domain_delta_lo` and
`forgetting/general_delta_lo`). Runs from before the paired statistics have no `_lo`/`_hi` keys: bounds on
them then apply to the means. A sweep without base evaluation (eval=none) has no gain or forgetting keys:
the report then falls back to validation losses. Every fallback is said in the report's notes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from itune.sweep.criterion import (
    DEFAULT_METRIC,
    DEFAULT_RETENTION,
    Criterion,
    ci_keys,
    default_criterion,
    metric_direction,
    point_key,
)
from itune.sweep.report.collect import STATUSES, Run, general_sources, varying_keys

log = logging.getLogger(__name__)

SUMMARY_METRICS = [
    DEFAULT_METRIC,
    DEFAULT_RETENTION,
    "forgetting/regressions",
    "forgetting/significant_regressions",
    "forgetting/kl_general",
    "train/loss",
    "val/loss",
]
FALLBACK_METRIC = "val/loss"  # what the pick minimises when no run has the criterion's metric


def finite(run: Run, key: str) -> float | None:
    """The run's metric when it is a finite number."""
    value = run.metrics.get(key)
    return value if value is not None and math.isfinite(value) else None


def interval(run: Run, key: str) -> tuple[float, float] | None:
    """The run's confidence interval of `key` (`<key>_lo`, `<key>_hi`) when it has both bounds."""
    lo, hi = (finite(run, k) for k in ci_keys(key))
    return (lo, hi) if lo is not None and hi is not None else None


def has_metric(runs: Sequence[Run], key: str) -> bool:
    """Whether some completed run measured `key`."""
    return any(r.status == "completed" and finite(r, key) is not None for r in runs)


def pareto_front(runs: Sequence[Run], x: str = DEFAULT_METRIC, y: str = DEFAULT_RETENTION) -> list[str]:
    """Names of the completed runs that no other run beats on both `x` and `y`, each in its direction."""
    sx = 1.0 if metric_direction(x) == "maximize" else -1.0
    sy = 1.0 if metric_direction(y) == "maximize" else -1.0
    points = [(r.name, finite(r, x), finite(r, y)) for r in runs if r.status == "completed"]
    points = [(n, sx * a, sy * b) for n, a, b in points if a is not None and b is not None]
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
        retention = finite(r, DEFAULT_RETENTION)
        return (
            criterion.score(r.metrics),
            retention if retention is not None else -math.inf,
            -(r.metrics.get("forgetting/regressions") or 0.0),
        )

    best = max(feasible, key=key)
    return best.name, f"{criterion.describe()}: {len(feasible)} of {len(done)} completed runs qualify"


def loss_axes(runs: Sequence[Run]) -> tuple[str, str]:
    """(x, y) without base evaluation: the domain source's val loss (or val/loss) and the general one's.

    Sources come from `val/<source>/loss` keys; general ones from the runs' `eval.general_sources`.
    """
    sources = sorted(
        {k.split("/")[1] for r in runs for k in r.metrics if k.startswith("val/") and k.count("/") == 2}
    )
    sources = [s for s in sources if has_metric(runs, f"val/{s}/loss")]
    general = general_sources(runs)
    domain = [s for s in sources if s not in general]
    x = f"val/{domain[0]}/loss" if len(domain) == 1 else FALLBACK_METRIC
    y = next((f"val/{s}/loss" for s in sources if s in general), "train/loss")
    return x, y


def resolve_axes(runs: Sequence[Run], x: str, y: str) -> tuple[str, str, list[str]]:
    """(x, y, notes): an axis no completed run has is replaced by a validation loss (loss_axes)."""
    if not any(r.status == "completed" for r in runs) or (has_metric(runs, x) and has_metric(runs, y)):
        return x, y, []
    fx, fy = loss_axes(runs)
    new_x, new_y = (x if has_metric(runs, x) else fx), (y if has_metric(runs, y) else fy)
    notes = [
        f"no completed run has {old} (no base evaluation, e.g. eval=none): {axis} is {new}, "
        f"{'lower' if metric_direction(new) == 'minimize' else 'higher'} is better"
        for axis, old, new in (("x", x, new_x), ("y", y, new_y))
        if old != new
    ]
    return new_x, new_y, notes


def resolved_key(runs: Sequence[Run], key: str) -> str | None:
    """`key` when a completed run has it; for a confidence bound no run has (runs from before the paired
    statistics) the metric it bounds, when a run has that; else None."""
    if has_metric(runs, key):
        return key
    point = point_key(key)
    return point if point is not None and has_metric(runs, point) else None


def resolve_bounds(
    runs: Sequence[Run], bounds: dict[str, float], stricter: Callable[[float, float], float], notes: list[str]
) -> dict[str, float]:
    """Bounds on keys the completed runs have: a missing CI bound applies to its mean, other missing keys
    are dropped; each fallback appended to `notes`."""
    out: dict[str, float] = {}
    moved, dropped = [], []
    for key, value in bounds.items():
        new = resolved_key(runs, key)
        if new is None:
            dropped.append(key)
            continue
        if new != key:
            moved.append(f"{key} -> {new}")
        out[new] = stricter(out[new], value) if new in out else value
    if moved:
        notes.append(
            "no completed run has confidence bounds (runs from before the paired statistics): the bounds "
            f"apply to the means ({', '.join(moved)})"
        )
    if dropped:
        notes.append(f"bounds on {', '.join(dropped)} dropped: no completed run has them")
    return out


def resolve_criterion(runs: Sequence[Run], criterion: Criterion) -> tuple[Criterion, list[str]]:
    """(criterion, notes): a metric no completed run has falls back to the metric it bounds (for a `_lo`
    or `_hi` key), else to val/loss (minimised); bounds fall back as in `resolve_bounds`."""
    if not any(r.status == "completed" for r in runs):
        return criterion, []
    notes: list[str] = []
    metric, direction = criterion.metric, criterion.direction
    point = resolved_key(runs, metric)
    if point is not None and point != metric:
        metric = point
        notes.append(f"no completed run has {criterion.metric}: the pick uses {point}")
    elif point is None and has_metric(runs, FALLBACK_METRIC):
        metric, direction = FALLBACK_METRIC, "minimize"
        notes.append(f"no completed run has {criterion.metric}: the pick is the lowest {FALLBACK_METRIC}")
    at_least = resolve_bounds(runs, criterion.at_least, max, notes)
    at_most = resolve_bounds(runs, criterion.at_most, min, notes)
    done = [r for r in runs if r.status == "completed"]
    lacking = [r for r in done if any(finite(r, k) is None for k in (*at_least, *at_most))]
    if lacking:
        notes.append(
            f"{len(lacking)} of {len(done)} completed runs lack a bounded metric "
            f"({', '.join([*at_least, *at_most])}): they cannot qualify"
        )
    return Criterion(metric, direction, at_least, at_most), notes


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
    notes: list[str] = field(default_factory=list)  # fallbacks the report made (e.g. no base evaluation)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.runs) for s in STATUSES}


def build_report(
    runs: list[Run],
    criterion: Criterion | None = None,
    x: str = DEFAULT_METRIC,
    y: str = DEFAULT_RETENTION,
    metrics: Sequence[str] | None = None,
) -> Report:
    """Front, recommendation and table columns for the runs (with fallbacks for missing metrics)."""
    if criterion is None:
        criterion = default_criterion(x, y)
    x, y, axis_notes = resolve_axes(runs, x, y)
    criterion, criterion_notes = resolve_criterion(runs, criterion)
    for note in axis_notes + criterion_notes:
        log.info("report: %s", note)
    present = {k for r in runs for k in r.metrics}
    if metrics:
        keys = list(metrics)
    else:
        keys = [k for k in [x, y, criterion.metric, *SUMMARY_METRICS] if k in present]
        keys += sorted(k for k in present if k.startswith("eval/"))
    recommended, reason = recommend(runs, criterion)
    return Report(
        runs,
        varying_keys(runs),
        list(dict.fromkeys(keys)),
        x,
        y,
        pareto_front(runs, x, y),
        recommended,
        reason,
        criterion.describe(),
        axis_notes + criterion_notes,
    )
