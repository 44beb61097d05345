"""Optuna search for itune-train: the search space from Hydra override syntax, study helpers, plugin
registration. The sweeper class itself is `hydra_plugins.itune_optuna_sweeper.OptunaSweeper` (Hydra only
instantiates plugins from the `hydra_plugins` package); its config is conf/hydra/sweeper/itune_optuna.yaml.

Why not hydra-optuna-sweeper: its last release (1.3.0) pins optuna<3, and optuna 2.10's SQLite storage
fails with SQLAlchemy 2 (which mlflow and alembic bring here), so a study could not be stored on disk or
resumed. This sweeper keeps its command-line shape (`hydra/sweeper=itune_optuna`, `hydra.sweeper.params.<key>=
interval(…)`, `n_trials`, `n_jobs`, `sampler`, `storage`, `study_name`, `direction`) on current Optuna.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

log = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)


def distribution(override: Override) -> BaseDistribution | str:
    """An Optuna distribution for a sweep override, or the value string of a plain override.

    choice(a,b) → categorical; range(a,b,step) → int/float grid (stop inclusive, like Optuna's step);
    interval(a,b) → uniform; tag(log, interval(a,b)) → log-uniform. Integers stay integers.
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: the Optuna sweeper supports choice, range and interval sweeps")


def search_space(overrides: Sequence[Override]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """({key: distribution}, fixed `key=value` overrides) of parsed overrides."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        dist = distribution(override)
        if isinstance(dist, BaseDistribution):
            space[key] = dist
        else:
            fixed.append(f"{key}={dist}")
    return space, fixed


def trial_overrides(trial: optuna.trial.Trial, space: dict[str, BaseDistribution]) -> list[str]:
    """`key=value` overrides for one trial's suggestions."""
    out = []
    for key, dist in space.items():
        value = _suggest(trial, key, dist)
        out.append(f"{key}={value}")
    return out


def _suggest(trial: optuna.trial.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def as_values(result: Any, n_objectives: int) -> list[float] | None:
    """A job's return value as Optuna values (None: the trial failed or returned nothing usable)."""
    if result is None:
        return None
    values = list(result) if isinstance(result, list | tuple) else [result]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if len(values) != n_objectives or any(math.isnan(v) for v in values):
        return None
    return values


def ensure_storage_dir(storage: str | None) -> None:
    """Create the folder of a relative or absolute `sqlite:///` file so the study can be stored there."""
    if storage and storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def register_plugin() -> None:
    """Make the sweeper known to Hydra when itune is an editable install (a wheel needs nothing)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.itune_optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
