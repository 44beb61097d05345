"""Values checked where they are named, before any data or model loads: types, ranges, data files.

`value_problems(cfg)` runs within `check_config` at the start of every job. Each rule names the key, the value
and what would be valid (`optimizer.lr='fast': expected a number > 0, e.g. 2e-4`), so a bad override
fails in a second instead of deep inside the scheduler or the data loader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


Rule = tuple[Callable[[Any], bool], str]
RULES: dict[str, Rule] = {
    "seed": (_integer, "an integer"),
    "optimizer.lr": (lambda v: _number(v) and v > 0, "a number > 0, e.g. 2e-4"),
    "optimizer.weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "scheduler.num_warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "peft.r": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (the LoRA rank, e.g. 8)"),
    "peft.lora_alpha": (lambda v: _number(v) and v > 0, "a number > 0 (e.g. 2 x r)"),
    "peft.lora_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v is None or (_integer(v) and v >= 1), "null or an integer >= 1"),
    "data.max_length": (lambda v: _integer(v) and v >= 8, "an integer >= 8 (tokens per example)"),
    "data.val_fraction": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.max_val_samples": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "data.max_repeats": (lambda v: _number(v) and v >= 1, "a number >= 1"),
    "data.num_samples": (
        lambda v: v is None or isinstance(v, str) or (_integer(v) and v >= 1),
        "null (all rows), an integer >= 1 or a source name",
    ),
    "trainer.max_steps": (lambda v: _integer(v) and (v == -1 or v >= 1), "-1 (no limit) or an integer >= 1"),
    "trainer.max_epochs": (
        lambda v: v is None or (_integer(v) and (v == -1 or v >= 1)),
        "null, -1 or an integer >= 1",
    ),
    "trainer.accumulate_grad_batches": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "trainer.gradient_clip_val": (lambda v: v is None or (_number(v) and v >= 0), "null or a number >= 0"),
    "trainer.val_check_interval": (lambda v: v is None or (_number(v) and v > 0), "null or a number > 0"),
    "trainer.log_every_n_steps": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "model.gradient_checkpointing": (_boolean, "true or false"),
    "model.compile": (_boolean, "true or false"),
    "model.liger_kernel": (_boolean, "true or false"),
    "model.chunked_loss": (
        lambda v: _boolean(v) or (_integer(v) and v >= 1),
        "true, false or tokens per chunk (an integer >= 1)",
    ),
    "eval.on_base": (_boolean, "true or false"),
    "eval.threshold": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "eval.show_samples": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "eval.general_sources": (
        lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
        "a list of data source names, e.g. [general]",
    ),
    "eval.stats.n_boot": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "eval.stats.alpha": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "eval.stats.power": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
}
SOURCE_RULES: dict[str, Rule] = {
    "weight": (lambda v: _number(v) and v >= 0, "a number >= 0 (its share of the mixture)"),
    "path": (lambda v: isinstance(v, str) and bool(v.strip()), "a file path or a hub dataset id"),
}


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(whether `key` is set, its resolved value)."""
    value = OmegaConf.select(cfg, key, default="__unset__", throw_on_missing=False)
    if isinstance(value, str) and value == "__unset__":
        return False, None
    return True, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _file_problem(path: str) -> str | None:
    """Why a local data file cannot be read (None for hub ids and readable files)."""
    p = Path(path).expanduser()
    if p.suffix not in DATA_SUFFIXES and not p.is_absolute() and not path.startswith("."):
        return None  # a hub dataset id
    if not p.exists():
        return f"no such file ({p.resolve()})"
    if not p.is_file():
        return "not a file"
    if p.stat().st_size == 0:
        return "the file is empty"
    return None


def source_problems(sources: Mapping[str, Any], files: bool = True) -> list[str]:
    """Problems of every `data.sources.<name>` value: weight, path and (`files`) whether a local file is
    there and not empty."""
    problems = []
    for name, node in sources.items():
        if not isinstance(node, Mapping):
            continue
        for key, (ok, valid) in SOURCE_RULES.items():
            if key in node and not ok(node[key]):
                problems.append(f"data.sources.{name}.{key}={_show(node[key])}: expected {valid}")
        path = node.get("path")
        if files and isinstance(path, str) and path.strip() and (problem := _file_problem(path)):
            problems.append(f"data.sources.{name}.path={path}: {problem}")
    return problems


def value_problems(cfg: DictConfig, files: bool = True) -> list[str]:
    """Every named value that is of the wrong type or out of range, as `key=value: expected …`; with
    `files`, also every local data file that is missing or empty."""
    problems = []
    for key, (ok, valid) in RULES.items():
        present, value = _select(cfg, key)
        if present and not ok(value):
            problems.append(f"{key}={_show(value)}: expected {valid}")
    present, sources = _select(cfg, "data.sources")
    if present and isinstance(sources, Mapping):
        problems += source_problems(sources, files)
    return problems
