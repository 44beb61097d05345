"""Training and evaluation progress: Lightning's Rich bar on a terminal, a log line every N steps elsewhere.

Where no terminal is attached (CI, Slurm, `nohup`, output sent to a file) a live bar draws nothing useful
for minutes, so `progress_bar(mode="auto")` picks `LogProgress` there: one `logging` line every
`every_n_steps` optimizer steps or `every_s` seconds, whichever comes first, e.g.

    train step 20/50 (40%) | loss 2.314 | lr 0.0002 | 1,520 tok/s | elapsed 2:10 | ETA 3:15

and the same for validation batches. On a terminal it is `StepRichProgressBar`, Lightning's
Rich bar that counts optimizer steps (`Step 12/50`) on step-limited runs instead of `Epoch 0/-2`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- pure helpers
def format_duration(seconds: float) -> str:
    """`m:ss` or `h:mm:ss`.

    >>> format_duration(75.4), format_duration(3725)
    ('1:15', '1:02:05')
    """
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def remaining_seconds(elapsed: float, done: int, left: int) -> float | None:
    """Time to do `left` more units at the average pace of the `done` ones (None before the first).

    >>> remaining_seconds(10.0, 5, 20)
    40.0
    """
    return elapsed / done * left if done > 0 else None


def progress_line(
    what: str,
    done: int,
    total: int | None,
    elapsed: float,
    eta: float | None = None,
    metrics: Mapping[str, float] | None = None,
    tokens_per_s: float | None = None,
) -> str:
    """One progress line: position, metrics, throughput, elapsed time and ETA.

    >>> progress_line("train step", 20, 50, 130.0, 195.0, {"loss": 2.3141}, 1520.0)
    'train step 20/50 (40%) | loss 2.314 | 1,520 tok/s | elapsed 2:10 | ETA 3:15'
    """
    parts = [f"{what} {done}/{total} ({done / total:.0%})" if total else f"{what} {done}"]
    parts += [f"{k} {v:.4g}" for k, v in (metrics or {}).items()]
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


def batch_tokens(batch: Any) -> int | None:
    """Real (not padding) tokens of a batch dict, when it says: `num_real_tokens`, else `attention_mask`."""
    if not isinstance(batch, Mapping):
        return None
    for key in ("num_real_tokens", "attention_mask"):
        value = batch.get(key)
        if value is not None and hasattr(value, "sum"):
            return int(value.sum())
    return None


def total_steps(trainer: L.Trainer) -> int | None:
    """The optimizer steps the run will take (max_steps, or epochs × batches), None when unbounded."""
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) and total > 0 else None


def step_description(step: int, max_steps: int) -> str:
    """The Rich bar's header on a step-limited run.

    >>> step_description(12, 50), step_description(12, -1)
    ('Step 12/50', 'Step 12')
    """
    return f"Step {step}/{max_steps}" if max_steps > 0 else f"Step {step}"


class Ticker:
    """Says when a line is due: at every `every_n`-th unit, or `every_s` seconds after the last line."""

    def __init__(
        self, every_n: int | None, every_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_n, self.every_s, self.clock = every_n, every_s, clock
        self.start = self.last = clock()

    def due(self, n: int) -> bool:
        """True (and the clock of the last line reset) when unit `n` should get a line."""
        now = self.clock()
        hit = bool(self.every_n and n % self.every_n == 0)
        if hit or (self.every_s is not None and now - self.last >= self.every_s):
            self.last = now
            return True
        return False

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start


# -------------------------------------------------------------------------------------------- callbacks
class LogProgress(ProgressBar):
    """Progress as `logging` lines (logger `itune.progress`), for runs without a terminal.

    Args:
        every_n_steps: a line every n optimizer steps (and every n evaluation batches); None: time only.
        every_s: a line when this many seconds passed since the last one; None: steps only.
    """

    def __init__(self, every_n_steps: int | None = 50, every_s: float | None = 60.0) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(
                f"callbacks.progress.every_n_steps={every_n_steps}; valid: an integer >= 1 or null"
            )
        if every_s is not None and every_s <= 0:
            raise ValueError(f"callbacks.progress.every_s={every_s}; valid: a number of seconds > 0 or null")
        if every_n_steps is None and every_s is None:
            raise ValueError("callbacks.progress: set every_n_steps or every_s (both are null)")
        self.every_n_steps, self.every_s = every_n_steps, every_s
        self._enabled = True
        self._train, self._eval = Ticker(every_n_steps, every_s), Ticker(every_n_steps, every_s)
        self._start_step, self._last_step, self._total = 0, -1, None
        self._tokens, self._tokens_at, self._tokens_t = 0, 0, 0.0
        self._eval_done = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`LightningModule.print` goes to the log as well."""
        log.info(" ".join(str(a) for a in args))

    # -- training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train = Ticker(self.every_n_steps, self.every_s)
        self._start_step = self._last_step = trainer.global_step
        self._total, self._tokens, self._tokens_at, self._tokens_t = total_steps(trainer), 0, 0, 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += batch_tokens(batch) or 0
        step = trainer.global_step
        if step == self._last_step or not self._enabled:  # accumulating gradients: no new optimizer step
            return
        self._last_step = step
        first, last = step == self._start_step + 1, step == self._total
        if self._train.due(step) or first or last:
            log.info(self._train_line(trainer, step))

    def _train_line(self, trainer: L.Trainer, step: int) -> str:
        t = self._train.elapsed
        speed = (
            (self._tokens - self._tokens_at) / (t - self._tokens_t)
            if self._tokens and t > self._tokens_t
            else None
        )
        self._tokens_at, self._tokens_t = self._tokens, t
        left = self._total - step if self._total else 0
        eta = remaining_seconds(t, step - self._start_step, left) if self._total else None
        metrics = {
            k.removeprefix("train/"): float(v)
            for k, v in trainer.progress_bar_metrics.items()
            if k.startswith("train/") and isinstance(v, int | float)
        }
        return progress_line("train step", step, self._total, t, eta, metrics, speed)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            done = trainer.global_step - self._start_step
            log.info("train done: %d steps in %s", done, format_duration(self._train.elapsed))

    # -- validation (itune runs no trainer.test/predict)
    def _eval_start(self) -> None:
        self._eval, self._eval_done = Ticker(self.every_n_steps, self.every_s), 0

    def _eval_batch(self, what: str, total: int | float) -> None:
        self._eval_done += 1
        n = self._eval_done
        bounded = int(total) if math.isfinite(total) and total > 0 else None
        if self._enabled and (self._eval.due(n) or n == 1):
            t = self._eval.elapsed
            eta = remaining_seconds(t, n, bounded - n) if bounded else None
            log.info(progress_line(f"{what} batch", n, bounded, t, eta))

    def _eval_end(self, what: str, trainer: L.Trainer) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1
        }
        line = f"{what} done: {self._eval_done} batches in {format_duration(self._eval.elapsed)}"
        if trainer.state.fn == "fit":
            line += f" at step {trainer.global_step}"
        log.info(" | ".join([line] + [f"{k} {v:.4g}" for k, v in metrics.items()]))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._eval_batch("validation", self.total_val_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("validation", trainer)


class StepRichProgressBar(RichProgressBar):
    """Lightning's Rich bar; on step-limited runs (max_epochs=-1) it counts optimizer steps: `Step 12/50`."""

    def _by_steps(self) -> bool:
        return self.trainer.max_epochs in (None, -1)

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        text = step_description(self.trainer.global_step, self.trainer.max_steps)
        return f"{text:{len(self.validation_description)}}"  # padded like Lightning's, against flicker

    def _sync_steps(self) -> None:
        """Point the train bar at optimizer steps out of max_steps, with the step in its header."""
        if not self._by_steps() or self.progress is None or self.train_progress_bar_id is None:
            return
        text = self._get_train_description(self.trainer.current_epoch)
        self.progress.update(
            self.train_progress_bar_id,
            total=self.trainer.max_steps if self.trainer.max_steps > 0 else None,
            completed=self.trainer.global_step,
            description=f"[{self.theme.description}]{text}" if self.theme.description else text,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._sync_steps()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._sync_steps()


# ----------------------------------------------------------------------------------------------- choice
def on_terminal() -> bool:
    """True when a live bar can be drawn: stdout is an interactive terminal (or a Jupyter kernel)."""
    from rich.console import Console

    console = Console()
    return (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter


def progress_bar(
    mode: Literal["auto", "rich", "log"] = "auto",
    every_n_steps: int | None = 50,
    every_s: float | None = 60.0,
) -> ProgressBar:
    """The trainer's progress callback: the Rich bar on a terminal, log lines elsewhere (`auto`), or forced.

    Args:
        mode: `auto` (by `on_terminal()`), `rich` or `log`.
        every_n_steps: `LogProgress`: a line every n optimizer steps / evaluation batches.
        every_s: `LogProgress`: a line at least every this many seconds.
    """
    if mode not in ("auto", "rich", "log"):
        raise ValueError(f"callbacks.progress.mode={mode!r}; valid: auto, rich, log")
    if mode == "rich" or (mode == "auto" and on_terminal()):
        return StepRichProgressBar()
    return LogProgress(every_n_steps, every_s)
