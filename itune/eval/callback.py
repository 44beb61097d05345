"""A Lightning callback that runs cheap eval suites during training, to watch forgetting as it happens."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from itune.eval.distributed import check_full_parameters
from itune.eval.runner import Suite, run_suites

log = logging.getLogger(__name__)


class PeriodicEval(Callback):
    """Run `suites` on the model being trained after every `every_n_validations`-th validation.

    Metrics are logged to the trainer's loggers as `eval/<suite>/<metric>` at the current step. The
    tokenizer and template come from the datamodule, the same ones training uses. Under DDP every rank
    calls this hook: each suite runs once, on one rank's local replica, and every rank gets all metrics
    (itune.eval.distributed), so hooks such as early stopping decide alike everywhere. Strategies that
    shard the parameters (FSDP, DeepSpeed ZeRO-3) are refused at setup.

    Args:
        suites: {name: suite}, e.g. a rules suite with a small `limit`.
        every_n_validations: evaluate after every n-th validation run.
        on_eval: {name: hook(trainer, metrics)} called after each eval, e.g. Optuna pruning
            (itune.sweep.pruning.OptunaPruning, which may stop the run); null entries are skipped.
    """

    def __init__(
        self,
        suites: dict[str, Suite],
        every_n_validations: int = 1,
        on_eval: Mapping[str, Callable[[L.Trainer, dict[str, float]], None] | None] | None = None,
    ) -> None:
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.suites, self.every = suites, every_n_validations
        self.on_eval = [hook for hook in (on_eval or {}).values() if hook is not None]
        self.validations = 0
        self.history: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.suites:
            check_full_parameters(trainer.strategy, "the periodic eval's suites (callbacks.periodic_eval)")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations += 1
        if self.validations % self.every:
            return
        dm = trainer.datamodule
        metrics, _ = run_suites(self.suites, pl_module.model, dm.tokenizer, dm.template)
        self.history.append({"step": trainer.global_step, **metrics})
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        log.info("step %d: %s", trainer.global_step, {k: round(v, 3) for k, v in metrics.items()})
        for hook in self.on_eval:
            hook(trainer, metrics)


class StopAtTarget:
    """A `PeriodicEval` hook that stops training once `metric` reaches `at_least`: runs compared at
    matched domain gain (e.g. disclaimer compliance >= 0.95), not at a fixed step count.

    Training stops at the end of the step that validated (`trainer.should_stop`), so the final
    evaluation scores the weights that reached the target.
    """

    def __init__(self, metric: str, at_least: float) -> None:
        self.metric, self.at_least = metric, float(at_least)
        self.reached_at: int | None = None  # the step at which the target was first reached

    def __call__(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            raise KeyError(
                f"stop_at_target.metric={self.metric!r} is not a periodic-eval metric; "
                f"valid: {', '.join(sorted(metrics))}"
            )
        if self.reached_at is None and metrics[self.metric] >= self.at_least:
            self.reached_at = trainer.global_step
            trainer.should_stop = True
            log.info(
                "%s = %.3f >= %g at step %d: stopping",
                self.metric,
                metrics[self.metric],
                self.at_least,
                trainer.global_step,
            )
