"""Resume an interrupted run exactly: data position and RNG states saved in Lightning's checkpoint.

Lightning restores the weights, optimizer, scheduler and loop counters from `last.ckpt`, but a plain
DataLoader restarts its epoch from the first batch with a new shuffle, and the RNG states (dropout) are
not saved. `ResumeState` (a callback in `conf/callbacks/default.yaml`) closes both gaps:

- it gives the training DataLoader a sampler whose shuffle depends only on (seed, epoch), which shares
  it out between the DDP ranks so that the global batches are those of one process, and which, after a
  resume, skips the batches the interrupted run already trained on (`ShardSampler`);
- it saves the torch/numpy/python RNG states with every checkpoint and restores them before training
  continues.

A resumed run with the same config and seed therefore sees the same batches with the same dropout masks
as an uninterrupted one (checked by tests/test_resume.py with a SIGKILLed training process).
Iterable (streaming) datasets cannot skip by index; they restart their stream and a warning says so.

Ctrl-C (SIGINT) and SIGTERM (Slurm preemption, `kill`) stop training once the current optimizer step is
done and logged: `last.ckpt` is saved there and `TrainingInterrupted` ends the process with status
128 + signal, so `itune-train resume=<run dir>` continues exactly. A second Ctrl-C stops at once,
saving the state of the last completed step.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, Sampler

from itune.data.step_tokens import StepTokenLoader
from itune.runs.files import CHECKPOINT_DIR

log = logging.getLogger(__name__)


class EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), not on the global RNG."""

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        self.data_source, self.seed, self.epoch = data_source, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data_source)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self), generator=g).tolist()


class ShardSampler(DistributedSampler):
    """This rank's share of `sampler`'s order, without the batches a resumed run already trained.

    Rank r of W takes every W-th index from r (padded with the order's first indices to a multiple of W,
    as DistributedSampler pads), so batch b of every rank holds the positions of the one-process batch b
    of batch_size x W: the global batches are those of one process. A DistributedSampler subclass, so
    Lightning keeps it; it calls `set_epoch` on it at every epoch, which sets `sampler`'s epoch.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, state: ResumeState, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(sampler, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.sampler, self.batch_size, self.state = sampler, batch_size, state

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.state.start_position(self.epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        order = (order * math.ceil(self.total_size / max(1, len(order))))[: self.total_size]  # padded
        yield from order[self.rank : self.total_size : self.num_replicas][skip * self.batch_size :]


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving `last.ckpt`; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(128 + signum)
        self.signal_name, self.step, self.checkpoint = signal.Signals(signum).name, step, checkpoint

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name} at step {self.step}; checkpoint {self.checkpoint}"


class ResumeState(Callback):
    """Saves the data position and RNG states in checkpoints and restores them on resume.

    Args:
        seed: seed of the per-epoch shuffle of the training data.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch, self.batches = 0, 0  # batches trained in the current epoch
        self._resumed: dict[str, Any] | None = None  # state loaded from a checkpoint, not yet applied
        self._rng_pending: dict[str, Any] | None = None
        self._signal: int | None = None  # SIGINT/SIGTERM received: stop after the current optimizer step
        self._previous_sigint: Any = None
        self.world_size, self.rank = 1, 0  # of the trainer, for the training data's shards

    # -- the training DataLoader ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.world_size, self.rank = int(trainer.world_size), int(trainer.global_rank)
        dm = trainer.datamodule
        if stage != "fit" or dm is None:
            return
        if not hasattr(dm, "train_loader_hook"):
            log.warning("%s has no train_loader_hook: a resumed run restarts its epoch", type(dm).__name__)
            return
        dm.train_loader_hook = self.wrap  # the datamodule's loader, with a resumable sampler
        # Our sampler resumes mid-epoch (and the RNG states are restored), unlike the loaders
        # Lightning's warning is about.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

    def wrap(self, loader: DataLoader) -> DataLoader:
        """The same DataLoader (class too) with this rank's `ShardSampler`, which can resume mid-epoch."""
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            log.warning("training data is a stream: a resumed run restarts the stream (position not saved)")
            return loader
        sampler: Sampler[int] = (
            EpochRandomSampler(loader.dataset, self.seed)
            if isinstance(loader.sampler, RandomSampler)
            else loader.sampler
        )
        # the loader's own class, so a StepTokenLoader keeps reading the step's trained tokens ahead
        cls, extra = (
            (StepTokenLoader, {"window": loader.window})
            if isinstance(loader, StepTokenLoader)
            else (DataLoader, {})
        )
        return cls(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=ShardSampler(sampler, loader.batch_size, self, self.world_size, self.rank),
            drop_last=loader.drop_last,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds, not the global RNG
            **extra,
        )

    def start_position(self, epoch: int) -> tuple[int, int]:
        """(epoch, batches to skip) for a new pass over `epoch`: the saved position once after a resume,
        unless Lightning already moved past the saved epoch (the checkpoint was taken at its last batch)."""
        if self._resumed is not None:
            saved, skip = int(self._resumed["epoch"]), int(self._resumed["batches"])
            self._resumed = None
            if epoch <= saved:
                log.info("resuming data at epoch %d, batch %d", saved, skip)
                return saved, skip
            log.info("resuming data at the start of epoch %d (epoch %d was complete)", epoch, saved)
        return epoch, 0

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Runs before ModelCheckpoint (Lightning orders checkpoint callbacks last), so a checkpoint
        # saved at this step records this batch as trained.
        batch_idx = args[-1] if args else kwargs["batch_idx"]
        self.epoch, self.batches = trainer.current_epoch, batch_idx + 1
        signum = self._stop_requested(trainer)
        if signum is not None and self.batches % trainer.accumulate_grad_batches == 0:
            # at an optimizer-step boundary: an exact resume point. Lightning logs this step's metrics
            # after this hook, so log them now or the CSV would miss the step.
            trainer._logger_connector.update_train_step_metrics()
            self._save_and_stop(trainer, signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_pending is not None:  # right before the first resumed step, as at the checkpoint
            set_rng_states(self._rng_pending)
            self._rng_pending = None
            for logger in trainer.loggers:  # e.g. itune.csv_history.CSVLogger keeps the earlier rows
                if hasattr(logger, "resumed_at"):
                    logger.resumed_at(trainer.global_step)
        self._install_sigint_handler()

    # -- stopping on a signal ------------------------------------------------------------------------
    def _install_sigint_handler(self) -> None:
        def on_sigint(signum: int, frame: Any) -> None:
            if self._signal is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("Ctrl-C: stopping after this step and saving a checkpoint (again to stop at once)")

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: keep the default behaviour
            self._previous_sigint = None

    def _restore_sigint_handler(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _stop_requested(self, trainer: L.Trainer) -> int | None:
        if self._signal is not None:
            return self._signal
        return int(signal.SIGTERM) if getattr(trainer, "received_sigterm", False) else None

    def _save_and_stop(self, trainer: L.Trainer, signum: int) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self._restore_sigint_handler()
        raise TrainingInterrupted(signum, trainer.global_step, path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint_handler()
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.training:
            # stopped inside a step: the checkpoint holds the last completed step's state
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            log.warning("interrupted at step %d; checkpoint %s", trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint_handler()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "seed": self.seed, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning("resuming with seed %s; the checkpoint used %s", self.seed, state_dict["seed"])
        self.epoch, self.batches = state_dict["epoch"], state_dict["batches"]
        self._resumed = {"epoch": self.epoch, "batches": self.batches}
        self._rng_pending = state_dict.get("rng")


def rng_states() -> dict[str, Any]:
    """The states of python's, numpy's and torch's (CPU and CUDA) global RNGs, as plain tensors/lists."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    py = states["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    np.random.set_state(
        ("MT19937", states["numpy"]["keys"].numpy().astype(np.uint32), states["numpy"]["pos"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where `ckpt_path=last` looks: the ModelCheckpoint's `last.ckpt` (or `<root>/checkpoints/`)."""
    cb = trainer.checkpoint_callback
    folder = cb.dirpath if isinstance(cb, ModelCheckpoint) and cb.dirpath else None
    folder = Path(folder or Path(trainer.default_root_dir) / CHECKPOINT_DIR)
    return folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` → `<run_dir>/checkpoints/last.ckpt`, which must exist; a path is returned as given.

    Raises:
        FileNotFoundError: naming where the checkpoint was looked for and how to point at the old run.
    """
    if not ckpt_path:
        return None
    path = Path(run_dir) / CHECKPOINT_DIR / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():  # a folder for sharded (FSDP, DeepSpeed) checkpoints
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}. To resume an interrupted run, set its run "
            "directory (hydra.run.dir=<run dir>, or run_dir=<run dir>) with the same overrides as the "
            "original run, or give ckpt_path=<path to a .ckpt>."
        )
    return str(path)
