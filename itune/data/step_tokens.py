"""Trained tokens of an optimizer step, read ahead so the loss can be their mean at any scale.

A step's loss should be the mean over every trained token it sees: the k micro-batches of gradient
accumulation on each of the W ranks. The module needs that count, N_step, before the first micro-batch's
backward, so the training loader reads ahead: `StepTokenLoader` yields each batch with
`step_tokens_ahead`, the trained tokens (labels[:, 1:] != IGNORE_INDEX) of this batch and of the next
ones, `window` batches in all (fewer where the data ends). The module adds up the entries of its step
(`step_span`) and sums them over the ranks once per step (see `InstructionTuner.step_tokens`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader

from itune.data.messages import IGNORE_INDEX

STEP_TOKENS = "step_tokens_ahead"  # 1-D int64: trained tokens of this batch and the next ones
STEP_WINDOW = "step_window"  # batches the loader reads ahead (len of STEP_TOKENS unless the data ended)


@dataclass(frozen=True)
class StepLayout:
    """How Lightning groups micro-batches into optimizer steps.

    Args:
        accumulate: micro-batches a step (`trainer.accumulate_grad_batches`).
        world_size: ranks whose gradients DDP averages.
        batches: batches an epoch (`trainer.num_training_batches`; inf for a stream).
    """

    accumulate: int = 1
    world_size: int = 1
    batches: float = math.inf


def step_span(batch_idx: int, layout: StepLayout) -> tuple[int, int]:
    """(first, end) batch index of the step that `batch_idx` (counted from the epoch's start) belongs to:
    groups of `accumulate` from the epoch's start, the last one cut at the epoch's end, as Lightning steps.

    >>> step_span(5, StepLayout(accumulate=4, batches=7)), step_span(3, StepLayout(accumulate=4))
    ((4, 7), (0, 4))
    """
    first = batch_idx - batch_idx % layout.accumulate
    return first, int(min(first + layout.accumulate, layout.batches))


def trained_tokens(batch: dict[str, Any]) -> int:
    """Trained tokens of a collated batch: labels that are predicted (shifted by one) and not ignored."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def annotate(batches: Iterable[dict[str, Any]], window: int | Callable[[], int]) -> Iterator[dict[str, Any]]:
    """The batches in order, each with `STEP_TOKENS` (trained tokens of it and the next `window` - 1) and
    `STEP_WINDOW`; `window` is read before each batch (a callable follows the trainer's setting)."""
    source = iter(batches)
    ahead: deque[tuple[dict[str, Any], int]] = deque()
    exhausted = False
    while True:
        size = max(1, int(window() if callable(window) else window))
        while not exhausted and len(ahead) < size:
            try:
                batch = next(source)
            except StopIteration:
                exhausted = True
                break
            ahead.append((batch, trained_tokens(batch)))
        if not ahead:
            return
        counts = torch.tensor([n for _, n in islice(ahead, size)], dtype=torch.long)
        batch = ahead.popleft()[0]
        yield {**batch, STEP_TOKENS: counts, STEP_WINDOW: size}


class StepTokenLoader(DataLoader):
    """A DataLoader whose batches say the trained tokens of the batches ahead (see `annotate`).

    A DataLoader subclass rather than a wrapper, so Lightning still injects its distributed sampler (it
    re-creates the loader with the same `window`) and `itune.resume` can swap in its sampler.

    Args:
        window: batches to read ahead, at least the micro-batches of a step: an int, or a callable
            (the trainer's `accumulate_grad_batches`, read as the loader goes).
        *args, **kwargs: those of `torch.utils.data.DataLoader`.
    """

    def __init__(self, *args: Any, window: int | Callable[[], int] = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return annotate(super().__iter__(), self.window)
