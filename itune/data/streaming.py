"""The streaming path: sources read lazily and interleaved by weight, the audit and the validation rows
taken from each source's head, and the one-process stream split by rank (`train_stream`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, IterableDataset, interleave_datasets
from datasets.distributed import split_dataset_by_node

from itune.data.curate import Filter
from itune.data.formats import RowError
from itune.data.pipeline import PreparedMix, Recipe, prepare
from itune.data.stages import column, curate_rows, encode_rows, format_rows, token_step


class StreamSetFilter:
    """Set filters (duplicates) of one stream: their state lives in this object, so it is per stream, and
    starts afresh with every pass over it (`idx` 0: an epoch, a rank's or a DataLoader worker's shard)."""

    def __init__(self, filters: Sequence[Filter], source: str) -> None:
        self.positions = [(pos, f) for pos, f in enumerate(filters) if f.stage == "set"]
        self.indexes = {f.name: f.index() for _, f in self.positions}
        self.source, self.n_filters = source, len(filters)

    def __call__(self, row: dict[str, Any], idx: int = -1) -> bool:
        """True when the row survives every filter (row filters already marked it in `drop_at`)."""
        if idx == 0:
            self.indexes = {f.name: f.index() for _, f in self.positions}
        for pos, f in self.positions:
            if pos >= row["drop_at"]:
                break
            if self.indexes[f.name].check_add(row[f"key_{f.name}"], (self.source, row["row"])) is not None:
                return False
        return row["drop_at"] == self.n_filters


def read_heads(recipe: Recipe, streams: list[IterableDataset], rows: int) -> list[tuple[Dataset, list[str]]]:
    """The first `rows` rows of every stream, as the pipeline's input."""
    heads = []
    for src, stream in zip(recipe.sources, streams, strict=True):
        try:
            head = list(stream.take(rows))
        except Exception as e:  # malformed lines surface while reading
            raise RowError(f"{src.where}: cannot read: {e}") from e
        heads.append((Dataset.from_list(head) if head else Dataset.from_dict({"_": []}), []))
    return heads


def prepare_stream(
    recipe: Recipe, streams: list[IterableDataset], head_rows: int, shuffle_buffer: int
) -> PreparedMix:
    """The stages on each source's head (audit, manifest, validation set), then the training stream:
    every source formatted, curated, deduplicated and tokenized lazily, without the head's held-out rows,
    interleaved by weight and shuffled (`num_samples` examples when a number)."""
    heads = read_heads(recipe, streams, head_rows)
    if isinstance(recipe.num_samples, str):
        raise ValueError("data.num_samples=<source name> needs the sources' sizes; not with streaming")
    prepared = prepare(recipe, heads, head_rows=head_rows)
    total_w = sum(recipe.weights.values())
    trains, probs = [], []
    for i, (src, stream) in enumerate(zip(recipe.sources, streams, strict=True)):
        if src.weight <= 0:
            continue
        held_out = set(column(prepared.parts[i][1], "sha"))
        trains.append(source_stream(recipe, i, stream, held_out))
        probs.append(src.weight / total_w)
    mixed = interleave_datasets(
        trains, probabilities=probs, seed=recipe.seed, stopping_strategy="all_exhausted"
    ).shuffle(seed=recipe.seed, buffer_size=shuffle_buffer)
    if isinstance(recipe.num_samples, int):
        mixed = mixed.take(recipe.num_samples)
    stats = {k: v for k, v in prepared.stats.items() if k != "data/rows_train"}  # unknown until read
    return dataclasses.replace(prepared, train=mixed, stats=stats)


def source_stream(recipe: Recipe, i: int, stream: IterableDataset, held_out: set[str]) -> IterableDataset:
    """Source `i`'s training stream: input_ids, labels, source."""
    src, filters = recipe.sources[i], list(recipe.filters)
    formatted = format_rows(src, stream, recipe.on_bad_row).filter(lambda e: not e, input_columns="error")
    curated = curate_rows(formatted, filters).filter(StreamSetFilter(filters, src.name), with_indices=True)
    encoded = encode_rows(
        curated.select_columns(["messages", "row", "sha"]),
        recipe.template,
        recipe.tokenizer,
        recipe.max_length,
        recipe.overlength,
    )
    encoded = encoded.filter(  # the head's val rows left out by content: right in any shard
        lambda nt, ntr, st, sha: (
            token_step(filters, recipe.max_length, nt, ntr, st)[1] != "dropped" and sha not in held_out
        ),
        input_columns=["n_tokens", "n_trained", "status", "sha"],
    )
    encoded = encoded.map(lambda r: {"source": i})
    return encoded.select_columns(["input_ids", "labels", "source"])


def train_stream(stream: IterableDataset, rank: int = 0, world_size: int = 1) -> IterableDataset:
    """The streaming training data of one rank of `world_size`: disjoint shards whose union is the
    one-process stream (`datasets.distributed.split_dataset_by_node`).

    When every source has a number of shards (files) that `world_size` divides, each rank reads only its
    own files; otherwise every rank reads the stream and keeps 1 example out of `world_size`. A
    DataLoader's workers then split the rank's shards between them (datasets' worker sharding; a
    worker without a shard stops). So each rank interleaves its shards of the sources by weight, with
    the same seed; `num_samples` counts the examples of all ranks together; duplicates are found within
    a shard (or within the stream when every rank reads all of it) and the held-out rows are left
    out by content on every rank.
    """
    if not isinstance(stream, IterableDataset):
        raise TypeError("train_stream: the training data is not a stream (data.streaming=false)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
    return stream if world_size == 1 else split_dataset_by_node(stream, rank, world_size)
