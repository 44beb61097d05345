"""Readers of a run directory: its config, template, weights folder, data manifest hash, JSON reports.

Example:
    >>> cfg = run_config("outputs/2026-01-01/12-00-00")  # doctest: +SKIP
    >>> read_json("outputs/2026-01-01/12-00-00", "metrics.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from itune.runs.files import ADAPTER_DIR, CONFIG_FILE, MANIFEST_FILE, MODEL_DIR, TEMPLATE_FILE


def run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config.yaml of a run directory (with a clear error when it is not one)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not an itune run directory (no {CONFIG_FILE}); pass the directory a "
            "training run wrote (outputs/<date>/<time>), or a base model: model=<option> template=<option>"
        )
    return OmegaConf.load(path)


def saved_template(run_dir: str | Path) -> dict[str, Any]:
    """The run's template.json."""
    path = Path(run_dir) / TEMPLATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run did not finish (train() writes it at the end)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of the run directory (`metrics.json`, `template.json`, ...); {} when absent."""
    path = Path(run_dir) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def manifest_hash(run_dir: str | Path) -> str | None:
    """The data mixture's hash from manifest.json, if the run wrote one."""
    return read_json(run_dir, MANIFEST_FILE).get("mixture_hash")


def artifacts_dir(run_dir: str | Path) -> Path:
    """`adapter/` (peft) or `model/` (full fine-tune) of a run directory."""
    for name in (ADAPTER_DIR, MODEL_DIR):
        if (Path(run_dir) / name).is_dir():
            return Path(run_dir) / name
    raise FileNotFoundError(
        f"{run_dir} has neither {ADAPTER_DIR}/ nor {MODEL_DIR}/ (was it trained with save_model=false?); "
        "retrain with save_model=true"
    )
