"""Schemas for itune-train configs, so a misspelled key fails at composition with its name.

Two layers:
- the root of `train.yaml` is a structured config (`TrainSchema`, registered in Hydra's ConfigStore as
  `itune_train_schema` and listed first in its defaults): an unknown root key, e.g. `seeed: 1` in a preset,
  fails while Hydra composes;
- `check_config(cfg)` checks every `_target_` node against its target's signature (optimizer, scheduler,
  trainer, peft, data, loggers, callbacks, eval suites, curation filters: `optimizer.lrr`, `trainer.max_step`)
  and every `data.sources.<name>` against `itune.data.datamodule.Source` (`data.sources.x.wieght`). It runs
  right after composition: at the start of every job (itune.sweep.job) and of a multirun, before any data
  or model is loaded. The valid keys come from the targets themselves, so any optimizer or data option
  (ours or a team's) is checked without a list to keep in sync.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from itune.config_values import value_problems

SCHEMA_NAME = "itune_train_schema"
_INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


@dataclass
class TrainSchema:
    """The root keys of `train.yaml`; group nodes are checked by `check_config`."""

    seed: int = 42
    run_dir: str = "???"
    ckpt_path: Any = None  # a checkpoint path or `last`
    resume: Any = None  # a run directory: itune-train resume=<dir> (itune/resume_run.py)
    resume_allow_changes: bool = False  # let a resume take new overrides and a changed mixture/template/model
    save_model: bool = True
    kl_base: Any = "auto"  # reference of val/<source>/kl_base: auto | adapter | frozen_copy | off, or a bool
    optimized_metric: Any = None  # what itune-train returns to a sweeper (itune.sweep.criterion)
    optuna_trial: Any = None  # {storage, study, number}: set by the Optuna sweeper (itune.sweep.pruning)
    model: Any = None
    data: Any = None
    template: Any = None
    curate: Any = None
    optimizer: Any = None
    scheduler: Any = None
    peft: Any = None
    regularizer: Any = None  # a training-loss term (conf/regularizer/, itune/regularizers.py)
    peft_init_rows: int = 64  # peft=corda: training rows of eval.general_sources CorDA's init is computed on
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    eval: Any = None
    tracking: Any = None  # logger=mlflow: model registry settings


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (called when the `itune.conf` package is imported)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainSchema)


class ConfigSchemaError(ValueError):
    """Config keys that nothing reads (misspelled or misplaced), each named with its path."""


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _target_params(target: str) -> tuple[set[str] | None, str | None]:
    """(parameter names of a `_target_`, or None when it takes **kwargs; an import error message)."""
    try:
        obj = get_method(target)
    except Exception as e:  # ImportError or a missing attribute: the target is misspelled
        return None, f"_target_ {target!r} cannot be imported ({type(e).__name__}: {e})"
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None, None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, None
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}, None


def _source_problems(path: str, node: Any) -> list[str]:
    from itune.data.datamodule import Source  # data layer: imported only when a data config is checked

    valid = [f.name for f in dataclasses.fields(Source) if f.name != "name"]
    if not isinstance(node, Mapping):
        return [f"{path}: a source is a mapping with keys {valid}, not {node!r}"]
    return [
        f"{path}.{key}: not a data source key{_suggest(key, valid)}; valid keys: {valid}"
        for key in node
        if key not in valid
    ]


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", problems)
        return
    if not isinstance(node, Mapping):
        return
    target = node.get("_target_")
    if isinstance(target, str) and "${" not in target:
        params, error = _target_params(target)
        if error:
            problems.append(f"{path}.{error}")
        elif params is not None:
            valid = sorted(params)
            for key in node:
                if key not in params and key not in _INSTANTIATE_KEYS:
                    problems.append(f"{path}.{key}: not a parameter of {target}{_suggest(str(key), valid)}")
    for key, child in node.items():
        child_path = f"{path}.{key}" if path else str(key)
        if child_path == "data.sources" and isinstance(child, Mapping):
            for name, source in child.items():
                problems.extend(_source_problems(f"data.sources.{name}", source))
            continue
        _walk(child, child_path, problems)


def check_config(cfg: DictConfig | Mapping[str, Any], files: bool = True) -> None:
    """Raise ConfigSchemaError naming every key that no target or schema accepts, then every value of
    the wrong type or out of range and (`files`) every missing or empty data file (itune.config_values)."""
    container = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    problems: list[str] = []
    valid_root = [f.name for f in dataclasses.fields(TrainSchema)]
    problems += [
        f"{key}: not a root key of train.yaml{_suggest(str(key), valid_root)}"
        for key in container
        if key not in valid_root
    ]
    _walk(container, "", problems)
    if problems:
        raise ConfigSchemaError(
            "config keys that nothing reads (misspelled or misplaced?):\n  "
            + "\n  ".join(problems)
            + "\nFix them in the preset or override that sets them (`itune-train --cfg job` shows it)."
        )
    values = value_problems(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), files)
    if values:
        raise ConfigSchemaError("; ".join(values))
