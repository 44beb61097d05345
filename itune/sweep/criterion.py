"""A selection criterion on metrics.json: one metric to maximise (or minimise) subject to bounds on others.

The same criterion picks the recommended run in itune-report and, with a penalty for violated bounds, is
the objective itune-train returns to a sweeper (`optimized_metric`). Unless given, the direction follows
the metric's name: losses, perplexities, regression counts and KL divergences to the base are minimised,
everything else maximised. Bounds may name the confidence bounds of the forgetting report's summary
(`forgetting/general_delta_lo >= -0.05`: the forgetting budget holds with 95% confidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_METRIC = "gain/domain_delta"
DEFAULT_RETENTION = "forgetting/general_delta"
DEFAULT_BUDGET = -0.05  # forgetting budget of the default criterion
SIGNIFICANT = 1e-9  # `gain/domain_delta_lo >= SIGNIFICANT`: the gain's CI lies above 0 (a bound at 0 is not)
LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "regressions", "kl_base", "kl_general")  # name endings
Direction = Literal["maximize", "minimize"]


def metric_direction(metric: str) -> Direction:
    """`minimize` for names ending in loss, ppl, perplexity, regressions or a KL to the base (kl_base,
    kl_general); `maximize` otherwise.

    >>> metric_direction("val/general/loss"), metric_direction("gain/domain_delta_lo")
    ('minimize', 'maximize')
    """
    return "minimize" if metric.endswith(LOWER_IS_BETTER) else "maximize"


@dataclass(frozen=True)
class Criterion:
    """`direction` `metric` subject to `metrics[k] >= at_least[k]` and `metrics[k] <= at_most[k]`.

    `direction=None` takes the metric's own (metric_direction).

    >>> Criterion("val/loss").direction
    'minimize'
    >>> c = Criterion.parse({"metric": "gain/domain_delta", "at_least": {"forgetting/general_delta": -0.05}})
    >>> c.describe()
    'maximize gain/domain_delta subject to forgetting/general_delta >= -0.05'
    >>> c.feasible({"gain/domain_delta": 0.4, "forgetting/general_delta": -0.1})
    False
    """

    metric: str = DEFAULT_METRIC
    direction: Direction | None = None
    at_least: dict[str, float] = field(default_factory=dict)
    at_most: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction is None:
            object.__setattr__(self, "direction", metric_direction(self.metric))

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | None) -> Criterion:
        """From a metric name or `{metric, direction, at_least, at_most, penalty}` (direction null: auto)."""
        if spec is None:
            return cls()
        if isinstance(spec, str):
            return cls(metric=spec)
        unknown = set(spec) - {"metric", "direction", "at_least", "at_most", "penalty"}
        if unknown:
            raise ValueError(
                f"criterion: unknown key(s) {sorted(unknown)}; valid: metric, direction, at_least, at_most"
            )
        direction = spec.get("direction")
        if direction not in ("maximize", "minimize", None):
            raise ValueError(f"criterion.direction must be maximize or minimize, not {direction!r}")
        return cls(
            metric=spec.get("metric", DEFAULT_METRIC),
            direction=direction,
            at_least={str(k): float(v) for k, v in (spec.get("at_least") or {}).items()},
            at_most={str(k): float(v) for k, v in (spec.get("at_most") or {}).items()},
        )

    def describe(self) -> str:
        bounds = [f"{k} >= {v:g}" for k, v in self.at_least.items()]
        bounds += [f"{k} <= {v:g}" for k, v in self.at_most.items()]
        return f"{self.direction} {self.metric}" + (f" subject to {' and '.join(bounds)}" if bounds else "")

    def violation(self, metrics: Mapping[str, Any]) -> float:
        """How far the metrics are outside the bounds (0 when feasible; inf when a bounded key is missing)."""
        total = 0.0
        for key, bound in self.at_least.items():
            value = _number(metrics.get(key))
            total += math.inf if value is None else max(0.0, bound - value)
        for key, bound in self.at_most.items():
            value = _number(metrics.get(key))
            total += math.inf if value is None else max(0.0, value - bound)
        return total

    def feasible(self, metrics: Mapping[str, Any]) -> bool:
        return self.violation(metrics) == 0.0 and _number(metrics.get(self.metric)) is not None

    def score(self, metrics: Mapping[str, Any]) -> float | None:
        """The metric signed so that higher is better (None when missing)."""
        value = _number(metrics.get(self.metric))
        if value is None:
            return None
        return value if self.direction == "maximize" else -value

    def objective(self, metrics: Mapping[str, Any], penalty: float = 10.0) -> float:
        """The metric minus `penalty` × the bound violation, in the metric's own direction."""
        value = _number(metrics.get(self.metric))
        if value is None:
            raise KeyError(
                f"objective metric {self.metric!r} is not in metrics.json (keys: {sorted(metrics)[:20]}…); "
                "gain/ and forgetting/ keys need an eval preset with on_base: true, e.g. eval=demo"
            )
        shortfall = penalty * self.violation(metrics)
        return value - shortfall if self.direction == "maximize" else value + shortfall


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def ci_keys(key: str) -> tuple[str, str]:
    """The metrics.json keys of a summary metric's confidence bounds.

    >>> ci_keys("forgetting/general_delta")
    ('forgetting/general_delta_lo', 'forgetting/general_delta_hi')
    """
    return f"{key}_lo", f"{key}_hi"


def point_key(key: str) -> str | None:
    """The metric a confidence-bound key bounds (None for other keys).

    >>> point_key("gain/domain_delta_lo"), point_key("gain/domain_delta")
    ('gain/domain_delta', None)
    """
    stem, sep, suffix = key.rpartition("_")
    return stem if sep and suffix in ("lo", "hi") else None


def default_criterion(
    x: str = DEFAULT_METRIC, y: str = DEFAULT_RETENTION, budget: float = DEFAULT_BUDGET
) -> Criterion:
    """Maximise `x`; on the default axes, only runs whose domain gain is significant (its CI's lower bound
    above 0) and whose forgetting bound holds (general change's lower CI bound >= `budget`) qualify.

    >>> default_criterion().at_least
    {'gain/domain_delta_lo': 1e-09, 'forgetting/general_delta_lo': -0.05}
    """
    at_least = {ci_keys(x)[0]: SIGNIFICANT} if x == DEFAULT_METRIC else {}
    if y == DEFAULT_RETENTION:
        at_least[ci_keys(y)[0]] = budget
    return Criterion(metric=x, at_least=at_least)


def objective_directions(spec: Any) -> list[Direction] | None:
    """The direction(s) an `optimized_metric` spec reads as (None: no objective).

    >>> objective_directions(["gain/domain_delta", "val/loss"])
    ['maximize', 'minimize']
    """
    if spec is None:
        return None
    if isinstance(spec, list | tuple):
        return [metric_direction(str(k)) for k in spec]
    direction = Criterion.parse(spec).direction
    assert direction is not None
    return [direction]


def objective_value(metrics: Mapping[str, Any], spec: Any) -> float | tuple[float, ...] | None:
    """What itune-train returns to a sweeper for `optimized_metric`.

    `null` → None; a metrics.json key → its value; a list of keys → a tuple (multi-objective);
    `{metric, direction, at_least, at_most, penalty}` → Criterion.objective with that penalty (default 10).

    >>> objective_value({"a": 1.0, "b": -0.2}, {"metric": "a", "at_least": {"b": -0.1}, "penalty": 10})
    0.0
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        return Criterion(metric=spec).objective(metrics)
    if isinstance(spec, list | tuple):
        return tuple(Criterion(metric=str(k)).objective(metrics) for k in spec)
    return Criterion.parse(spec).objective(metrics, float(spec.get("penalty", 10.0)))
