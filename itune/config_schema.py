"""Schemas for itune-train configs, so a misspelled key fails at composition with its name.

Three layers:
- the root of `train.yaml` is a structured config (`TrainSchema`, registered in Hydra's ConfigStore as
  `itune_train_schema` and listed first in its defaults): an unknown root key, e.g. `seeed: 1` in a preset,
  fails while Hydra composes;
- `check_config(cfg)` checks every `_target_` node against its target's signature (optimizer, scheduler,
  trainer, peft, data, loggers, callbacks, eval suites, curation filters: `optimizer.lrr`, `trainer.max_step`)
  and every `data.sources.<name>` against `itune.data.sources.Source` (`data.sources.x.wieght`). The
  valid keys come from the targets themselves, so any optimizer or data option (ours or a team's) is
  checked without a list to keep in sync;
- the groups without a `_target_` (`model`, `eval`, `tracking`) are checked against the dataclasses
  `GROUP_SCHEMAS` names (`eval.on_bse`, `model.liger_kernal`): `check_group_keys(cfg)`, which
  `check_config` calls and any command composing those groups can call.
`check_config` runs right after composition: at the start of every job (itune.sweep.job) and of a multirun,
before any data or model is loaded. `from_node` builds any such dataclass from its node, naming a wrong key
(Hydra is imported lazily, so data and eval code can use it cheaply).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from itune.config_values import value_problems

SCHEMA_NAME = "itune_train_schema"
_INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
T = TypeVar("T")


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


@dataclass
class ModelSchema:
    """The keys of the `model` group (conf/model/*.yaml): read by train, inference (loading, export), runs."""

    name: str | None = None  # the base model's id or a description (model cards, tracking tags)
    lm: Any = None  # `_target_` node that loads the causal LM (itune.model.load_causal_lm, tiny_llama, ...)
    tokenizer: Any = None  # `_target_` node that loads its tokenizer
    gradient_checkpointing: bool = False
    compile: bool = False
    liger_kernel: bool = False
    chunked_loss: Any = True  # true | false | tokens per chunk


@dataclass
class EvalSchema:
    """The keys of the `eval` group (conf/_base_eval.yaml, conf/eval/*.yaml): itune.train, itune.eval."""

    suites: Any = None  # {name: suite `_target_` node}
    on_base: bool = True
    cache_dir: str | None = None
    threshold: float = 0.02
    thresholds: Any = None  # {metric key: threshold}
    general_sources: Any = None  # [source name, ...]
    show_samples: int = 3
    stats: Any = field(default=None, metadata={"schema": "itune.eval.stats.StatsConfig"})
    data_dir: str | None = None  # read by the suites' interpolations (conf/eval/general.yaml, ifeval.yaml)


@dataclass
class TrackingSchema:
    """The keys of `tracking` (conf/logger/mlflow.yaml), read by itune.runs.tracking."""

    register_model: str | None = None


# Root key -> (its schema, its name in messages): the nodes without a `_target_` to check their keys against.
GROUP_SCHEMAS: dict[str, tuple[type, str]] = {
    "model": (ModelSchema, "the model group"),
    "eval": (EvalSchema, "the eval group"),
    "tracking": (TrackingSchema, "tracking"),
}


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (called when the `itune.conf` package is imported)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainSchema)


class ConfigSchemaError(ValueError):
    """Config keys that nothing reads (misspelled or misplaced), each named with its path."""


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _target_params(target: str) -> tuple[set[str] | None, str | None]:
    """(parameter names of a `_target_`, or None when it takes **kwargs; an import error message)."""
    from hydra.utils import get_method

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


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def key_problems(
    node: Any, schema: type | str, path: str, what: str = "", skip: Collection[str] = ()
) -> list[str]:
    """One line per key of a config node that the dataclass `schema` (or its import path) has no field for,
    naming the key and the valid ones; then the same for nested nodes (fields with metadata `schema`).

    >>> key_problems({"on_bse": True}, EvalSchema, "eval")[0].split(";")[0]
    "eval.on_bse: not a key of eval (did you mean 'on_base'?)"
    """
    if isinstance(schema, str):
        from hydra.utils import get_method

        schema = get_method(schema)
    cls: Any = schema
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    valid = list(fields)
    if not isinstance(node, Mapping):
        return [f"{path}: expected a mapping with keys {valid}, not {node!r}"]
    problems = [
        f"{_join(path, key)}: not a key of {what or path}{_suggest(str(key), valid)}; valid keys: {valid}"
        for key in node
        if key not in fields
    ]
    for name, f in fields.items():
        if "schema" in f.metadata and isinstance(node.get(name), Mapping):
            problems += key_problems(node[name], f.metadata["schema"], _join(path, name))
    return problems


def from_node(schema: type[T], node: Mapping[str, Any] | None, path: str, **given: Any) -> T:
    """The dataclass `schema` built from a config node (missing keys keep their defaults; `given` are set
    by the caller, e.g. `name=`). Raises ValueError naming each unknown key and the valid ones.

    >>> from_node(TrackingSchema, {"register_model": "fin"}, "tracking")
    TrackingSchema(register_model='fin')
    """
    node = dict(node or {})
    problems = key_problems(node, schema, path, skip=given)
    if problems:
        raise ValueError("; ".join(problems))
    return schema(**given, **node)


def group_key_problems(container: Mapping[str, Any]) -> list[str]:
    """The unknown keys of the `GROUP_SCHEMAS` nodes a config has (null or absent groups are skipped)."""
    problems = []
    for group, (schema, what) in GROUP_SCHEMAS.items():
        node = container.get(group)
        if node is not None:
            problems += key_problems(node, schema, group, what)
    return problems


SOURCE_SCHEMA = "itune.data.sources.Source"  # by name, as a `_target_`: the data layer is imported when used


def _source_problems(path: str, node: Any) -> list[str]:
    return key_problems(node, SOURCE_SCHEMA, path, "a data source", skip=("name",))


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
        child_path = _join(path, key)
        if child_path == "data.sources" and isinstance(child, Mapping):
            for name, source in child.items():
                problems.extend(_source_problems(f"data.sources.{name}", source))
            continue
        _walk(child, child_path, problems)


def _container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    return container


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigSchemaError(
            "config keys that nothing reads (misspelled or misplaced?):\n  "
            + "\n  ".join(problems)
            + "\nFix them in the preset or override that sets them (`--cfg job` shows it)."
        )


def check_group_keys(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise ConfigSchemaError naming every unknown key of the `model`, `eval` and `tracking` nodes of any
    command's config (itune-train, itune-eval, ...), before anything is loaded."""
    _raise(group_key_problems(_container(cfg)))


def check_config(cfg: DictConfig | Mapping[str, Any], files: bool = True) -> None:
    """Raise ConfigSchemaError naming every key that no target or schema accepts, then every value of
    the wrong type or out of range and (`files`) every missing or empty data file (itune.config_values)."""
    container = _container(cfg)
    problems = key_problems(container, TrainSchema, "", "train.yaml's root") + group_key_problems(container)
    _walk(container, "", problems)
    _raise(problems)
    values = value_problems(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)), files)
    if values:
        raise ConfigSchemaError("; ".join(values))
