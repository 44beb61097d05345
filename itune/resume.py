"""Resume an interrupted run exactly: data position and RNG states saved in Lightning's checkpoint.

Lightning restores the weights, optimizer, scheduler and loop counters from `last.ckpt`, but a plain
DataLoader restarts its epoch from the first batch with a new shuffle, and the RNG states (dropout) are
not saved. `ResumeState` (a callback in `conf/callbacks/default.yaml`) closes both gaps:

- it gives the training DataLoader a batch sampler whose shuffle depends only on (seed, epoch) and which,
  after a resume, skips the batches the interrupted run already trained on;
- it saves the torch/numpy/python RNG states with every checkpoint and restores them before training
  continues.

A resumed run with the same config and seed therefore sees the same batches with the same dropout masks
as an uninterrupted one (checked by tests/test_resume.py with a SIGKILLed training process).
Iterable (streaming) datasets cannot skip by index; they restart their stream and a warning says so.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, Sampler

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


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler that starts its first epoch after a resume at the saved batch."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, state: ResumeState) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.state, self.epoch = state, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.state.start_position(self.epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


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

    # -- the training DataLoader ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit" or dm is None or getattr(dm, "_itune_resumable", False):
            return
        original = dm.train_dataloader

        def train_dataloader() -> DataLoader:
            return self.wrap(original())

        dm.train_dataloader = train_dataloader  # the datamodule's loader, with a resumable sampler
        dm._itune_resumable = True

    def wrap(self, loader: DataLoader) -> DataLoader:
        """The same DataLoader with a batch sampler that can resume mid-epoch."""
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            log.warning("training data is a stream: a resumed run restarts the stream (position not saved)")
            return loader
        sampler: Sampler[int] = (
            EpochRandomSampler(loader.dataset, self.seed)
            if isinstance(loader.sampler, RandomSampler)
            else loader.sampler
        )
        return DataLoader(
            loader.dataset,
            batch_sampler=ResumableBatchSampler(sampler, loader.batch_size, loader.drop_last, self),
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds, not the global RNG
        )

    def start_position(self, epoch: int) -> tuple[int, int]:
        """(epoch, batches to skip) for a new pass over the data: the saved position once after a resume."""
        if self._resumed is not None:
            epoch, skip = int(self._resumed["epoch"]), int(self._resumed["batches"])
            self._resumed = None
            log.info("resuming data at epoch %d, batch %d", epoch, skip)
            return epoch, skip
        return epoch, 0

    # -- hooks ----------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Runs before ModelCheckpoint (Lightning orders checkpoint callbacks last), so a checkpoint
        # saved at this step records this batch as trained.
        batch_idx = args[-1] if args else kwargs["batch_idx"]
        self.epoch, self.batches = trainer.current_epoch, batch_idx + 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_pending is not None:  # right before the first resumed step, as at the checkpoint
            set_rng_states(self._rng_pending)
            self._rng_pending = None

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


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` → `<run_dir>/checkpoints/last.ckpt`, which must exist; a path is returned as given.

    Raises:
        FileNotFoundError: naming where the checkpoint was looked for and how to point at the old run.
    """
    if not ckpt_path:
        return None
    path = Path(run_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}. To resume an interrupted run, set its run "
            "directory (hydra.run.dir=<run dir>, or run_dir=<run dir>) with the same overrides as the "
            "original run, or give ckpt_path=<path to a .ckpt>."
        )
    return str(path)
