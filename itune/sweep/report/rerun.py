"""The recommended run as an experiment: `<report dir>/experiment/recommended.yaml` holds its overrides, so
`itune-train hydra.searchpath=[file://<report dir>] experiment=recommended` composes its config again."""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import yaml

from itune.runs.files import HYDRA_DIR, HYDRA_HYDRA_FILE, HYDRA_OVERRIDES_FILE
from itune.sweep.report.collect import Run
from itune.sweep.report.select import Report

RECOMMENDED = "recommended"  # experiment=recommended: the file written for the recommended run
NOT_RERUN = ("optuna_trial", "run_dir", "resume", "ckpt_path", "resume_allow_changes")  # where, not what
PRESETS = ("experiment", "hparams_search")  # `_global_` groups: included by path in the experiment file


def experiment_config(overrides: Sequence[str], groups: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """(an experiment config that composes like the command-line `overrides`, the overrides it cannot hold).

    Presets (`experiment=`, `hparams_search=`) are included by path, other groups overridden after them
    (so they win, as on the command line), values set; `optuna_trial`, `run_dir` and resume keys are left
    out; deletions (`~key`) and packaged overrides stay on the command line. `groups`: the run's group names.

    >>> experiment_config(["experiment=demo", "model=tiny", "optimizer.lr=1e-3", "~logger.csv"],
    ...                   {"experiment", "model"})
    ({'defaults': ['/experiment/demo', {'override /model': 'tiny'}, '_self_'], 'optimizer': {'lr': 0.001}}, \
['~logger.csv'])
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    includes: list[Any] = []
    replaced: list[Any] = []
    values: dict[str, Any] = {}
    left: list[str] = []
    for raw, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        key = o.key_or_group
        if key in NOT_RERUN:
            continue
        if o.is_delete() or o.package or (key in groups and o.is_add()):
            left.append(raw)
        elif key in groups and o.value() is not None:
            preset = key in PRESETS
            (includes if preset else replaced).append(
                f"/{key}/{o.value()}" if preset else {f"override /{key}": o.value()}
            )
        elif key not in groups:
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = o.value()
    return {"defaults": [*includes, *replaced, "_self_"], **values}, left


def _quote_path(path: str) -> str:
    return path if re.fullmatch(r"[\w/.:\-]+", path) else "'" + path.replace("'", "\\'") + "'"


def _run_hydra(run: Run) -> tuple[list[str], dict[str, Any]] | None:
    """(a run's command-line overrides, its `hydra` node) from its `.hydra/`; None when a file is missing."""
    hydra_dir = Path(run.path) / HYDRA_DIR
    hydra_file, overrides_file = hydra_dir / HYDRA_HYDRA_FILE, hydra_dir / HYDRA_OVERRIDES_FILE
    if not hydra_file.is_file() or not overrides_file.is_file():
        return None
    overrides = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
    hydra = (yaml.safe_load(hydra_file.read_text(encoding="utf-8")) or {}).get("hydra")
    return [str(o) for o in overrides], hydra or {}


def recommended_experiment(report: Report, out_dir: Path) -> tuple[str, str] | None:
    """(the text of `<out_dir>/experiment/recommended.yaml`, the command that runs it) for the recommended
    run; None when there is none or its `.hydra/` files are missing. The run's own search path is kept."""
    run = next((r for r in report.runs if r.name == report.recommended), None)
    found = _run_hydra(run) if run else None
    if run is None or found is None:
        return None
    overrides, hydra = found
    config, left = experiment_config(overrides, set((hydra.get("runtime") or {}).get("choices") or {}))
    paths = [*map(str, hydra.get("searchpath") or []), f"file://{out_dir.resolve()}"]
    searchpath = f"hydra.searchpath=[{','.join(_quote_path(p) for p in paths)}]"
    searchpath = f'"{searchpath}"' if "'" in searchpath else searchpath  # quoted for the shell too
    command = " ".join(["itune-train", searchpath, f"experiment={RECOMMENDED}", *map(shlex.quote, left)])
    kept = [o for o in overrides if o.split("=")[0].lstrip("+~") not in NOT_RERUN]
    header = (
        f"# @package _global_\n# {command}\n"
        f"# The run itune-report recommends, {run.name} ({run.path}), as an experiment: the config of\n"
        f"#   itune-train {' '.join(kept)}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False), command
