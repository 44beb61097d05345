"""Optuna search for itune-train: the search space from Hydra override syntax, study helpers, plugin
registration. The sweeper class itself is `hydra_plugins.itune_optuna_sweeper.OptunaSweeper` (Hydra only
instantiates plugins from the `hydra_plugins` package); its config is conf/hydra/sweeper/itune_optuna.yaml.

Why not hydra-optuna-sweeper: its last release (1.3.0) pins optuna<3, and optuna 2.10's SQLite storage
fails with SQLAlchemy 2 (which mlflow and alembic bring here), so a study could not be stored on disk or
resumed. This sweeper keeps its shape (`hydra/sweeper=itune_optuna`, the space in `hydra.sweeper.params`,
changed on the command line as `'optimizer.lr=interval(…)'`, `n_trials`, `n_jobs`, `sampler`, `storage`,
`study_name`, `direction`) on current Optuna. (Hydra itself refuses sweep syntax in `hydra.*` overrides,
so `hydra.sweeper.params.<key>=interval(…)` cannot work on the command line.)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.types import Override, Transformer
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)


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
    """({key: distribution}, fixed `key=value` overrides) of parsed overrides; the last one of a key wins.

    The sweeper passes the preset's `hydra.sweeper.params` first and the command line after, so
    `'optimizer.lr=interval(1e-4, 1e-3)'` replaces the preset's range, `optimizer.lr=1e-4` pins the key
    (it is no longer searched) and a sweep on a new key joins the search. A deletion stays before what
    follows it, so `~key '+key={…}'` replaces a node.
    """
    entries: dict[str, tuple[str, BaseDistribution | str]] = {}
    for override in overrides:
        bare = override.key_or_group + (f"@{override.package}" if override.package else "")
        bare = "~" + bare if override.is_delete() else bare  # `~key '+key=…'` replaces a node: keep both
        entries.pop(bare, None)
        entries[bare] = (override.get_key_element(), distribution(override))
    space = {key: dist for key, dist in entries.values() if isinstance(dist, BaseDistribution)}
    fixed = [f"{key}={dist}" for key, dist in entries.values() if not isinstance(dist, BaseDistribution)]
    return space, fixed


def fill_placeholders(params: dict[str, str], values: dict[str, Any]) -> dict[str, str]:
    """`hydra.sweeper.params` with `{name}` in a key replaced by `hydra.sweeper.vars.name`.

    A key whose placeholder is null is left out (that part of the space is switched off).

    >>> fill_placeholders({"data.sources.{general}.weight": "interval(0, 1)"}, {"general": "public"})
    {'data.sources.public.weight': 'interval(0, 1)'}
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        names = re.findall(r"{(\w+)}", key)
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(
                f"hydra.sweeper.params key {key!r} uses {{{missing[0]}}}, which hydra.sweeper.vars does not "
                f"set (vars: {sorted(values)})"
            )
        if any(values[n] is None for n in names):
            log.info("hydra.sweeper.params: %s left out (its placeholder is null)", key)
            continue
        out[re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), key)] = value
    return out


def check_space_keys(cfg: DictConfig, space: dict[str, BaseDistribution], hint: str = "") -> None:
    """Fail before any trial when a searched key is not in the job's config (e.g. a source the mix lacks).

    Keys added with `+` are not checked. `hint` ends the message (e.g. how to fill a preset's placeholder).
    """
    absent = object()
    for key in space:
        if key.startswith(("+", "~")) or "@" in key:
            continue
        if OmegaConf.select(cfg, key, default=absent, throw_on_resolution_failure=False) is not absent:
            continue
        parent = key.rpartition(".")[0]
        while parent and not isinstance(OmegaConf.select(cfg, parent, default=None), DictConfig):
            parent = parent.rpartition(".")[0]  # the deepest node that exists
        node = OmegaConf.select(cfg, parent) if parent else cfg
        raise ValueError(
            f"searched key {key} is not in the config ({parent or 'the root'} has {sorted(node)}){hint}"
        )


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


def build_sampler(spec: Any) -> optuna.samplers.BaseSampler | None:
    """The sampler of a `_target_` spec; a seeded one is seeded at this process's first trial.

    A sampler object is used as it is; None: Optuna's default. See `SeededAtFirstTrial`.
    """
    if spec is None or not isinstance(spec, DictConfig | dict):
        return spec
    node = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    assert isinstance(node, dict)
    return instantiate(node) if node.get("seed") is None else SeededAtFirstTrial(node)


class SeededAtFirstTrial(optuna.samplers.BaseSampler):
    """The sampler of a `_target_` node with a `seed`, built at the first trial this process asks, with
    `seed + that trial's number`.

    A seeded sampler restarts its random sequence whenever it is built: a resumed study would repeat its
    first suggestions, and processes sharing a study would all suggest the same ones. The number of a
    process's first trial is the study's trials so far (a resume continues the sequence, reproducibly) and
    differs between processes sharing a study (Optuna numbers trials under a lock).
    """

    def __init__(self, node: dict[str, Any]) -> None:
        self._node = node
        self._sampler: optuna.samplers.BaseSampler | None = None

    def _at(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if self._sampler is None:
            self._sampler = instantiate({**self._node, "seed": int(self._node["seed"]) + trial.number})
        return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._at(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._at(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._at(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._at(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self._sampler is not None:  # None: a stale trial of another process, told before any ask here
            self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        if self._sampler is not None:
            self._sampler.reseed_rng()


def ensure_storage_dir(storage: str | None) -> None:
    """Create the folder of a relative or absolute `sqlite:///` file so the study can be stored there."""
    if storage and storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def absolute_storage(storage: str) -> str:
    """A `sqlite:///` URL with a relative path made absolute, so jobs elsewhere reach the same file.

    >>> absolute_storage("sqlite:////tmp/s.db"), absolute_storage("postgresql://host/db")
    ('sqlite:////tmp/s.db', 'postgresql://host/db')
    """
    if not storage.startswith("sqlite:///") or storage.startswith("sqlite:////"):
        return storage
    return f"sqlite:///{Path(storage.removeprefix('sqlite:///')).resolve()}"


def redact(storage: str | None) -> str | None:
    """A storage URL with its password hidden, for logs and result files.

    >>> redact("postgresql://itune:secret@db.lan/optuna"), redact("sqlite:///s.db")
    ('postgresql://itune:***@db.lan/optuna', 'sqlite:///s.db')
    """
    if not storage or "@" not in storage:
        return storage
    return re.sub(r"^([\w+]+://[^:/@]*):[^@]*@", r"\1:***@", storage)


def register_plugin() -> None:
    """Make the sweeper known to Hydra when itune is an editable install (a wheel needs nothing)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.itune_optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
