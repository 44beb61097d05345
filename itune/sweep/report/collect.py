"""The jobs of sweeps as rows: where each ran, what it overrode, how it ended, what it measured.

Every job directory of a sweep is a Run: `completed` (metrics.json), `pruned` (an Optuna trial stopped
early by its pruner: itune.sweep.pruning), `failed` (error.txt / status.json), `interrupted` (stopped by
Ctrl-C or SIGTERM; resumable), `unfinished` (started, no result: still running or killed) or `pending` (in
the grid of a basic sweep, never started).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from itune.runs.files import (
    ERROR_FILE,
    HYDRA_CONFIG_FILE,
    HYDRA_DIR,
    HYDRA_OVERRIDES_FILE,
    METRICS_FILE,
    STATUS_FILE,
)
from itune.runs.read import read_json
from itune.sweep.status import read_status

log = logging.getLogger(__name__)

STATUSES = ("completed", "pruned", "failed", "interrupted", "unfinished", "pending")
BOOKKEEPING = ("optuna_trial",)  # overrides that say where a job reports, not what it does: not listed


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
        if sep and key.lstrip("+~") not in BOOKKEEPING:
            out[key] = value
    return out


def _error_line(run_dir: Path, status: dict[str, Any]) -> str:
    if status.get("error"):
        return str(status["error"])
    text = (run_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return text[-1] if text else "failed (error.txt is empty)"


def read_run(run_dir: Path, name: str) -> Run:
    """A Run from a job directory (metrics.json, status.json, error.txt, .hydra/overrides.yaml)."""
    status = read_status(run_dir)
    overrides_file = run_dir / HYDRA_DIR / HYDRA_OVERRIDES_FILE
    items = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else None
    overrides = _parse_overrides(items or status.get("overrides") or [])
    metrics_file = run_dir / METRICS_FILE
    raw = read_json(run_dir, METRICS_FILE)
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if status.get("status") == "failed" or (run_dir / ERROR_FILE).is_file():
        state, error = "failed", _error_line(run_dir, status)
    elif metrics_file.is_file():
        state, error = "completed", None
    elif status.get("status") == "pruned":
        state, error = "pruned", status.get("reason")
    elif status.get("status") == "interrupted":
        state, error = "interrupted", status.get("error")
    else:
        state, error = "unfinished", None
    return Run(name, str(run_dir), state, overrides, metrics, error, status.get("duration_s"))


def _job_dirs(root: Path) -> list[Path]:
    """Job directories under a sweep directory (or the directory itself when it is one run)."""
    if (root / HYDRA_DIR).is_dir() and not (root / "multirun.yaml").is_file():
        return [root]
    found = {p.parent for p in root.rglob(HYDRA_DIR) if p.is_dir() and ".submitit" not in p.parts}
    found |= {p.parent for p in root.rglob(STATUS_FILE) if ".submitit" not in p.parts}
    found.discard(root)

    def order(p: Path) -> tuple:
        return tuple(int(s) if s.isdigit() else s for s in p.relative_to(root).parts)

    return sorted(found, key=order)


def multirun_config(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's multirun.yaml (the config Hydra saved for the whole sweep), None when it has none."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    return conf if isinstance(conf, dict) else {}


def expected_grid(sweep_dir: Path) -> list[dict[str, str]] | None:
    """The override combinations of a basic-sweeper grid from multirun.yaml (None for other sweepers)."""
    conf = multirun_config(sweep_dir)
    if conf is None:
        return None
    hydra = conf.get("hydra") or {}
    if not str((hydra.get("sweeper") or {}).get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
        args += list((hydra.get("overrides") or {}).get("task") or [])
        axes: dict[str, list[str]] = {}  # a key given again (the command line after the preset) replaces it
        for override in OverridesParser.create().parse_overrides(args):
            key = override.get_key_element()
            if override.is_sweep_override():
                axes[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            else:
                axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        return [_parse_overrides(combo) for combo in product(*axes.values())]
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
            read_run(d, f"{label}/{d.relative_to(root)}" if d != root else label) for d in _job_dirs(root)
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


def general_sources(runs: Sequence[Run]) -> set[str]:
    """Data sources whose val loss counts as general: `eval.general_sources` of the completed runs' configs
    (Hydra's copy in .hydra/config.yaml), `{"general"}` when none says."""
    found: set[str] = set()
    for run in runs:
        path = Path(run.path) / HYDRA_DIR / HYDRA_CONFIG_FILE
        if run.status == "completed" and path.is_file():
            conf = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            found |= {str(s) for s in (conf.get("eval") or {}).get("general_sources") or []}
    return found or {"general"}
