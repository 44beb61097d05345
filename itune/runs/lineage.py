"""Where a run came from: base model, data manifest hash, template, peft, code version (tags and cards).

One implementation for the MLflow lineage tags (itune.runs.tracking) and the exported model card
(itune.inference.export).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import itune
from itune.runs.files import TEMPLATE_FILE
from itune.runs.read import manifest_hash, read_json

NO_PEFT = "none (full fine-tune)"


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout holding the itune code (None outside a checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path or Path(itune.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def lineage(run_dir: Path, cfg: DictConfig, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lineage of a run (values may be None; no git commit: see `lineage_tags`).

    Args:
        run_dir: the run directory (its manifest.json and template.json are read when present).
        cfg: the run's config.
        template: the run's template.json as a dict; read from `run_dir` when None.

    Returns:
        base_model, base_model_revision, data_manifest_hash, template, template_fingerprint, peft (the peft
        config's `_target_`, or `none (full fine-tune)`), version (of itune) and run_dir (absolute).
    """
    run_dir = Path(run_dir)
    if template is None:
        template = read_json(run_dir, TEMPLATE_FILE)
    lm = cfg.model.get("lm") or {}
    return {
        "base_model": cfg.model.get("name"),
        "base_model_revision": lm.get("revision"),
        "data_manifest_hash": manifest_hash(run_dir),
        "template": template.get("name"),
        "template_fingerprint": template.get("fingerprint"),
        "peft": (cfg.get("peft") or {}).get("_target_", NO_PEFT),
        "version": itune.__version__,
        "run_dir": str(run_dir.resolve()),
    }


def lineage_tags(run_dir: Path, cfg: DictConfig) -> dict[str, str]:
    """Lineage as `itune.<key>` string tags, the git commit included; None values left out."""
    found = lineage(run_dir, cfg) | {"git_commit": git_commit()}
    return {f"itune.{k}": str(v) for k, v in found.items() if v is not None}
