"""Experiment tracking at the end of a run: params, lineage tags and artifacts to every configured logger.

`train()` calls `log_run_artifacts(trainer.loggers, run_dir, cfg, metrics)` once (rank 0) after the run
directory is written. Every logger gets the flattened, secret-redacted config as hyperparameters. MLflow
also gets lineage tags (base model id and revision, data manifest hash, template name and fingerprint, git
commit, itune version), the run directory's artifacts (resolved config, template.json, metrics, audit and
forgetting reports, the adapter or model directory) and, with `tracking.register_model=<name>`, a model
registry version pointing at the logged adapter/model (lineage: itune.runs.lineage).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from itune.runs.files import ADAPTER_DIR, ARTIFACT_DIRS, ARTIFACT_FILES, MODEL_DIR
from itune.runs.lineage import lineage_tags
from itune.runs.write import resolved_config

log = logging.getLogger(__name__)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}, "c": [2]}` → `{"a.b": 1, "c.0": 2}`; empty containers are kept as strings.

    >>> flatten({"optimizer": {"lr": 0.001}, "peft": {"target_modules": ["q", "v"]}})
    {'optimizer.lr': 0.001, 'peft.target_modules.0': 'q', 'peft.target_modules.1': 'v'}
    """
    if isinstance(tree, dict) and tree:
        items = tree.items()
    elif isinstance(tree, list | tuple) and tree:
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree if not isinstance(tree, dict | list | tuple) else str(tree)}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


@rank_zero_only
def log_run_artifacts(
    loggers: list[Logger], run_dir: Path, cfg: DictConfig, metrics: dict[str, float]
) -> None:
    """Log the redacted config to every logger; MLflow also gets lineage tags, artifacts and registration.

    Args:
        loggers: the trainer's loggers (`trainer.loggers`).
        run_dir: the run directory, already written (config.yaml, template.json, adapter/ ...).
        cfg: the composed config of the run (secrets are redacted before logging).
        metrics: the run's final metrics (as in metrics.json).
    """
    params = flatten(resolved_config(cfg))
    for lg in loggers:
        lg.log_hyperparams(params)
        lg.save()
    tracking = cfg.get("tracking") or {}
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            _log_mlflow(lg, Path(run_dir), cfg, metrics, tracking.get("register_model"))


def _log_mlflow(
    lg: MLFlowLogger, run_dir: Path, cfg: DictConfig, metrics: dict[str, float], register: str | None
) -> None:
    client, run_id = lg.experiment, lg.run_id
    tags = lineage_tags(run_dir, cfg)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    # Losses and eval metrics reach the logger during the run; data counts and the step count do not.
    lg.log_metrics({k: float(v) for k, v in metrics.items() if k.startswith("data/") or k == "train/steps"})
    for name in ARTIFACT_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    logged_model = None
    for name in ARTIFACT_DIRS:
        if (run_dir / name).is_dir():
            client.log_artifacts(run_id, str(run_dir / name), artifact_path=name)
            if name in (ADAPTER_DIR, MODEL_DIR):
                logged_model = name
    if register and logged_model:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # it exists: add a version
            client.create_registered_model(register)
        run = client.get_run(run_id)
        version = client.create_model_version(
            register, f"{run.info.artifact_uri}/{logged_model}", run_id=run_id, tags=tags
        )
        log.info("registered %s version %s (%s)", register, version.version, logged_model)
    log.info("MLflow run %s: params, lineage tags and artifacts logged", run_id)
