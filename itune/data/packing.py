"""Packing and length grouping: pure bin-packing of example lengths into rows of a token budget.

Two ways to pack (`data.pack_scope`), both deterministic and both keeping every example whole:

- `batch`: each step's examples (drawn exactly as without packing) are laid into the fewest rows of at
  most `pack_length` tokens, balanced so the rows are about equally long (`balanced_rows`). The step
  trains on the same examples and the same loss as the padded batch; only the padding goes.
- `dataset`: the whole training mixture is packed once into rows of `pack_length` tokens
  (`best_fit_decreasing`); `batch_size` then counts rows, so every step has a fixed token budget.

The collator (itune/data/collate.py) turns a row into input_ids/labels/position_ids with position ids
restarting at 0 for every example, which transformers uses to keep attention inside each example.
`plan_batches` decides the rows ahead of training and measures the share of real tokens in the batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items into the fewest bins of `capacity` it can: longest first, each into the fullest bin
    that still holds it (ties: the oldest bin). Deterministic; O(n log n).

    Args:
        lengths: token count of every item (each ≤ capacity).
        capacity: the token budget of a bin (a packed row).

    Returns:
        bins of item indices, each bin's items in decreasing length.

    Example:
        >>> best_fit_decreasing([3, 8, 2, 5, 2], 10)
        [[1, 2], [3, 0, 4]]
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} example(s) longer than the packing budget {capacity} (first: index "
            f"{too_long[0]}, {lengths[too_long[0]]} tokens); set data.pack_length >= data.max_length"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))  # the smallest remaining capacity that fits
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
            continue
        left, b = free.pop(at)
        bins[b].append(i)
        bisect.insort(free, (left - n, b))
    return bins


def balanced_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Lay items into the fewest rows of at most `capacity` tokens, as evenly filled as possible.

    Longest first, each item goes to the currently shortest row (ties: the first row); the row count
    starts at ceil(total / capacity) and grows until every row fits. A batch padded to its longest row
    wastes least when the rows are balanced, which is what this is for.

    Example:
        >>> balanced_rows([6, 5, 4, 3], 10)
        [[0, 3], [1, 2]]
        >>> balanced_rows([9, 9], 10)
        [[0], [1]]
    """
    if not lengths:
        return []
    if max(lengths) > capacity:
        raise ValueError(
            f"an example of {max(lengths)} tokens does not fit the packing budget {capacity}; "
            "set data.pack_length >= data.max_length"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n_rows = max(1, -(-sum(lengths) // capacity))
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        fill = [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=lambda k: (fill[k], k))
            rows[r].append(i)
            fill[r] += lengths[i]
        if max(fill) <= capacity:
            return [r for r in rows if r]
        n_rows += 1


def padded_width(longest: int, multiple: int) -> int:
    """`longest` rounded up to a multiple of `multiple`.

    Example:
        >>> padded_width(13, 8)
        16
    """
    multiple = max(1, multiple)
    return -(-longest // multiple) * multiple


def rows_efficiency(row_lengths: Sequence[int], width: int) -> float:
    """Real tokens / row tokens of rows padded to `width`.

    Example:
        >>> rows_efficiency([8, 6], 8)
        0.875
    """
    return sum(row_lengths) / (len(row_lengths) * width) if row_lengths else 1.0


def packed_position_ids(lengths: Sequence[int], width: int) -> list[int]:
    """Position ids of one packed row: 0..n-1 for every example, then 0.. over the padding tail.

    The padding tail restarts too, so it forms a block of its own that no real token attends to.

    Example:
        >>> packed_position_ids([3, 2], 7)
        [0, 1, 2, 0, 1, 0, 1]
    """
    out = [p for n in lengths for p in range(n)]
    return out + list(range(width - len(out)))


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0, group_batches: int = 50
) -> list[int]:
    """A shuffled order whose consecutive `batch_size` chunks hold examples of similar length.

    The data is shuffled (by seed and epoch), cut into groups of `group_batches` batches, each group
    sorted by length (longest first), and the batches of all groups shuffled again, so padding shrinks
    while batches stay random across the data.

    Example:
        >>> order = length_grouped_order([1, 9, 2, 8], batch_size=2, seed=0)
        >>> sorted(sorted([1, 9, 2, 8][i] for i in order[k : k + 2]) for k in (0, 2))
        [[1, 2], [8, 9]]
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    group = max(1, batch_size * group_batches)
    batches: list[list[int]] = []
    for start in range(0, len(perm), group):
        chunk = sorted(perm[start : start + group], key=lambda i: -lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) != batch_size]  # kept last, so chunking stays aligned
    shuffled = [full[k] for k in torch.randperm(len(full), generator=g).tolist()]
    return [i for b in shuffled + partial for i in b]


@dataclass(frozen=True)
class BatchPlan:
    """How the training examples go into batches: their lengths, the packed rows (pack_scope=dataset:
    example indices of every row) and the share of real tokens in one epoch's batches."""

    lengths: list[int]
    efficiency: float
    bins: list[list[int]] = field(default_factory=list)
    packed: bool = False  # bins are the packed rows of the whole mixture

    @property
    def stats(self) -> dict[str, float]:
        """`data/packed_rows` (pack_scope=dataset) and `data/packing_efficiency` of metrics.json."""
        rows = {"data/packed_rows": len(self.bins)} if self.packed else {}
        return rows | {"data/packing_efficiency": self.efficiency}


def plan_batches(
    lengths: list[int],
    batch_size: int,
    seed: int,
    packing: bool,
    pack_scope: str,
    pack_length: int,
    group_by_length: bool,
    pad_to_multiple_of: int,
) -> BatchPlan:
    """Packed rows (pack_scope=dataset) and the share of real tokens in training batches.

    The efficiency is real tokens / (rows x row width) over one epoch: of the packed rows (x pack_length)
    with pack_scope=dataset, otherwise of the batches of one seeded shuffle (rows padded as the collator
    pads them), so it is also reported without packing.

    Example:
        >>> plan_batches([3, 5, 8], 2, 0, True, "dataset", 8, False, 1).bins
        [[2], [1, 0]]
    """
    if packing and pack_scope == "dataset":
        bins = best_fit_decreasing(lengths, pack_length)
        return BatchPlan(lengths, sum(lengths) / (len(bins) * pack_length), bins, packed=True)
    grouped = group_by_length and not packing
    efficiency = epoch_efficiency(
        lengths, batch_size, seed, pack_length if packing else None, grouped, pad_to_multiple_of
    )
    return BatchPlan(lengths, efficiency)


def epoch_efficiency(
    lengths: list[int],
    batch_size: int,
    seed: int,
    pack_length: int | None,
    group_by_length: bool,
    pad_to_multiple_of: int,
) -> float:
    """Real / batch tokens over one seeded epoch of padded batches, or of batches packed into rows of
    `pack_length` (pack_scope=batch), in the order the loader draws them.

    Example:
        >>> epoch_efficiency([8, 4], 2, 0, None, False, 1), epoch_efficiency([8, 4], 2, 0, 16, False, 1)
        (0.75, 1.0)
    """
    if group_by_length:
        order = length_grouped_order(lengths, batch_size, seed)
    else:
        order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    real = slots = 0
    for start in range(0, len(order), batch_size):
        lens = [lengths[i] for i in order[start : start + batch_size]]
        if pack_length is not None:
            rows = [sum(lens[i] for i in r) for r in balanced_rows(lens, pack_length)]
        else:
            rows = lens
        real += sum(rows)
        slots += len(rows) * padded_width(max(rows), pad_to_multiple_of)
    return real / max(1, slots)


class LengthGroupedSampler(Sampler[int]):
    """Yields `length_grouped_order` for the current epoch (set by Lightning or the resume callback)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        yield from length_grouped_order(self.lengths, self.batch_size, self.seed, self.epoch)


class PackedDataset(Dataset):
    """Rows of a map-style dataset packed by `best_fit_decreasing`: item i is {"examples": [...]}.

    Args:
        dataset: anything indexable by a list of indices returning {column: [values]} (a datasets
            Dataset with its format set) or a list of example dicts.
        bins: lists of example indices, one per packed row.
    """

    def __init__(self, dataset: Any, bins: list[list[int]]) -> None:
        self.dataset, self.bins = dataset, bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict[str, list[dict[str, Any]]]:
        idx = self.bins[i]
        if isinstance(self.dataset, list):
            return {"examples": [self.dataset[j] for j in idx]}
        cols = self.dataset[idx]
        return {"examples": [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]}
