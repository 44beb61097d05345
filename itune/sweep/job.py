"""One itune-train job: validate the config, train, record the job's status, return the sweep objective.

In a multirun a failing job writes `error.txt` (traceback) and `status.json` into its run directory and
returns None, so the launcher goes on with the other jobs; the sweep callback (itune.sweep.callbacks)
lists it in the sweep summary and makes the command exit non-zero at the end. A single run re-raises.
A job whose Optuna trial is pruned (itune.sweep.pruning) writes `pruned` and returns `Pruned`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from optuna import TrialPruned

from itune.config_schema import check_config
from itune.runs.files import ERROR_FILE
from itune.sweep.criterion import DEFAULT_METRIC, objective_value
from itune.sweep.pruning import Pruned
from itune.sweep.status import write_error, write_status
from itune.train import is_rank_zero, train

log = logging.getLogger(__name__)


def _hydra_job() -> tuple[bool, list[str]]:
    """(whether this job is part of a multirun, its command-line overrides)."""
    if not HydraConfig.initialized():
        return False, []
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, list(hc.overrides.task)


def _objective_spec(cfg: DictConfig) -> Any:
    spec = cfg.get("optimized_metric")
    return OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec


def check_objective(cfg: DictConfig) -> None:
    """`optimized_metric` on forgetting-report keys needs an eval preset that evaluates the base model."""
    spec = _objective_spec(cfg)
    if spec is None:
        return
    if isinstance(spec, str):
        keys = [spec]
    elif isinstance(spec, list):
        keys = [str(k) for k in spec]
    else:
        keys = [
            spec.get("metric", DEFAULT_METRIC),
            *(spec.get("at_least") or {}),
            *(spec.get("at_most") or {}),
        ]
    report_keys = [k for k in keys if k.startswith(("gain/", "forgetting/", "base/"))]
    if report_keys and not (cfg.get("eval") or {}).get("on_base", False):
        raise ValueError(
            f"optimized_metric uses {report_keys} from the forgetting report, but eval.on_base is off: "
            "pick an eval preset that evaluates the base model, e.g. eval=demo (or experiment=demo_sweep)"
        )


def _pruned(
    error: TrialPruned, run_dir: Path, overrides: list[str], duration_s: float, rank0: bool
) -> Pruned:
    """Record a pruned trial's job in status.json (`pruned`, why, at which step) and return `Pruned`."""
    pruned = Pruned.from_error(error)
    if rank0:
        write_status(
            run_dir,
            "pruned",
            overrides=overrides,
            reason=pruned.reason,
            step=pruned.step,
            value=pruned.value,
            duration_s=duration_s,
        )
    log.warning("%s", pruned.reason)
    return pruned


def run_train_job(cfg: DictConfig) -> float | tuple[float, ...] | Pruned | None:
    """Validate and train one job; returns `optimized_metric`'s value from metrics.json (None when unset),
    or `Pruned` when the job's Optuna trial was pruned."""
    multirun, overrides = _hydra_job()
    run_dir = Path(cfg.run_dir)
    rank0 = is_rank_zero()
    started = time.time()
    if rank0:
        write_status(run_dir, "running", overrides=overrides)
    try:
        check_config(cfg)  # misspelled keys fail here, named, before anything is loaded
        check_objective(cfg)
        metrics, _ = train(cfg)
        value: Any = objective_value(metrics, _objective_spec(cfg))
    except SystemExit as e:  # Ctrl-C or SIGTERM (itune.resume.TrainingInterrupted, Lightning's own exits)
        if rank0:
            write_status(
                run_dir,
                "interrupted",
                overrides=overrides,
                error=str(e) or f"exit status {e.code}",
                resume=f"itune-train resume={run_dir}",
                duration_s=round(time.time() - started, 1),
            )
        raise
    except TrialPruned as e:  # the pruner stopped the trial (itune.sweep.pruning): not a failure
        return _pruned(e, run_dir, overrides, round(time.time() - started, 1), rank0)
    except Exception as e:
        if rank0:
            error = write_error(run_dir, e)
            write_status(
                run_dir,
                "failed",
                overrides=overrides,
                error=error,
                duration_s=round(time.time() - started, 1),
            )
        if not multirun:
            raise
        log.error("job failed: %s (traceback in %s); the sweep goes on", e, run_dir / ERROR_FILE)
        return None
    if rank0:
        write_status(
            run_dir,
            "completed",
            overrides=overrides,
            objective=value,
            duration_s=round(time.time() - started, 1),
        )
    return value
