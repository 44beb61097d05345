"""LightningDataModule: wires the data pipeline (itune/data/pipeline.py) to Lightning's loaders.

`setup` loads the sources, runs the pipeline (or the stream, itune/data/streaming.py) into a `PreparedMix`,
builds the audit from it and plans the batches; the loaders read that value.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from itune.data import audit as au
from itune.data import packing as pk
from itune.data import streaming as st
from itune.data.collate import PackCollator, PadCollator
from itune.data.curate import Filter
from itune.data.messages import IGNORE_INDEX
from itune.data.mix import format_table, mixture_table, mixture_warnings
from itune.data.pipeline import PreparedMix, make_recipe, prepare
from itune.data.sources import Source, load_rows, load_source
from itune.data.stages import token_lengths
from itune.data.step_tokens import StepTokenLoader
from itune.data.templates import Template

log = logging.getLogger(__name__)


class PaddedRows(TorchDataset):
    """`data` followed by copies of row 0 with every label ignored, `total` rows in all: padding that
    evens out the DDP ranks without adding to the loss."""

    def __init__(self, data: Any, total: int) -> None:
        self.data, self.total = data, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.data):
            return self.data[i]
        row = self.data[0]
        return {**row, "labels": [IGNORE_INDEX] * len(row["labels"])}


class InstructDataModule(L.LightningDataModule):
    """Loads, formats, curates, tokenizes and mixes the sources of a `data` config.

    Args:
        sources: {name: {path, format, weight, fields, split, subset}}; `format` is a built-in name or
            the dotted path of a row → messages function or class (itune/data/formats.py).
        tokenizer: injected at instantiate time; provides the pad id.
        template: injected; turns messages into ids + labels (the same one eval and inference use).
        curate: {name: filter} from the `curate` group, run in this order (None or {}: no filters).
        num_samples: size of the training mixture: a number, None (the sum of the sources' training rows)
            or a source name (one pass over that source: its training rows divided by its share).
        val_fraction: share of each source's rows held out for validation (before mixing).
        max_val_samples: cap on held-out rows per source.
        max_length: token budget per example.
        overlength: `drop` or `truncate` examples longer than max_length (counted either way).
        on_bad_row: `error` stops at the first malformed row naming file and row; `skip` counts it.
        streaming: read sources lazily and interleave them by weight (see the README for what differs);
            under several ranks each rank reads and interleaves its own shard (`train_stream`).
        streaming_audit_rows: in streaming mode, rows per source the audit and validation set are drawn from.
        shuffle_buffer: streaming shuffle buffer (examples).
        audit_examples: examples kept per filter, action and source in the audit (PII-redacted).
        batch_size: training examples a batch (per device; an optimizer step takes accumulate_grad_batches).
        eval_batch_size: validation batch size (default: batch_size).
        num_workers: DataLoader worker processes.
        pad_to_multiple_of: round padded lengths up (8 suits tensor cores).
        seed: seed of the split and the mix.
        packing: lay training examples side by side in rows (no padding between them), attention and
            position ids restarting per example; validation batches stay padded.
        pack_length: token budget of a packed row (None: max_length).
        pack_scope: `batch` packs each step's batch_size examples (same examples and loss per step as
            without packing); `dataset` packs the whole mixture once (best-fit decreasing) into rows of
            pack_length, and batch_size then counts rows (a fixed token budget per step).
        group_by_length: without packing, batch examples of similar length (less padding).
        max_repeats: warn when a source is repeated more than this many times in the mixture.
    """

    def __init__(
        self,
        sources: dict[str, dict[str, Any]],
        tokenizer: Any,
        template: Template,
        curate: dict[str, Filter | None] | None = None,
        num_samples: int | str | None = None,
        val_fraction: float = 0.05,
        max_val_samples: int = 200,
        max_length: int = 1024,
        overlength: Literal["drop", "truncate"] = "drop",
        on_bad_row: Literal["error", "skip"] = "error",
        streaming: bool = False,
        streaming_audit_rows: int = 2000,
        shuffle_buffer: int = 10_000,
        audit_examples: int = 3,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int = 8,
        seed: int = 0,
        packing: bool = True,
        pack_length: int | None = None,
        pack_scope: Literal["batch", "dataset"] = "batch",
        group_by_length: bool = True,
        max_repeats: float = 4.0,
    ) -> None:
        super().__init__()
        self.recipe = make_recipe(  # checks the sources and the pipeline's settings
            sources,
            tokenizer,
            template,
            curate,
            num_samples=num_samples,
            val_fraction=val_fraction,
            max_val_samples=max_val_samples,
            max_length=max_length,
            overlength=overlength,
            on_bad_row=on_bad_row,
            audit_examples=audit_examples,
            seed=seed,
        )
        self.filters = list(self.recipe.filters)
        self.tokenizer, self.template, self.num_samples = tokenizer, template, num_samples
        self.max_length, self.seed, self.max_repeats = max_length, seed, max_repeats
        self.streaming, self.streaming_audit_rows = streaming, streaming_audit_rows
        self.shuffle_buffer = shuffle_buffer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pad_to_multiple_of = num_workers, pad_to_multiple_of
        if pack_scope not in ("batch", "dataset"):
            raise ValueError(f"data.pack_scope={pack_scope!r}; valid: batch, dataset")
        self.pack_length = pack_length or max_length
        if packing and self.pack_length < max_length:
            raise ValueError(
                f"data.pack_length={pack_length} < data.max_length={max_length}: an example must fit a row; "
                "raise pack_length or lower max_length"
            )
        self.packing, self.pack_scope, self.group_by_length = packing, pack_scope, group_by_length
        if packing and streaming and pack_scope == "dataset":
            log.warning("data.pack_scope=dataset needs the whole mixture; a stream packs each batch instead")
            self.pack_scope = "batch"
        self.collate = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of)
        pack = PackCollator(tokenizer.pad_token_id, self.pack_length, pad_to_multiple_of)
        self.train_collate = pack if packing else self.collate
        self.train_loader_hook: Callable[[DataLoader], DataLoader] | None = None  # e.g. ResumeState.wrap
        self.prepared: PreparedMix | None = None
        self.plan: pk.BatchPlan | None = None  # map-style data only
        self.audit: dict[str, Any] = {}

    # -------------------------------------------------------------------------------- the prepared data
    @property
    def sources(self) -> list[Source]:
        return list(self.recipe.sources)

    @property
    def source_names(self) -> list[str]:
        return self.recipe.names

    @property
    def train_set(self) -> Dataset | IterableDataset | None:
        return self.prepared.train if self.prepared else None

    @property
    def val_set(self) -> Dataset | None:
        return self.prepared.val if self.prepared else None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.prepared.manifest if self.prepared else {}

    @property
    def stats(self) -> dict[str, float]:
        """The data/... keys of metrics.json (rows per source and step, shares, packing efficiency)."""
        plan = self.plan.stats if self.plan else {}
        return {**self.prepared.stats, **plan} if self.prepared else {}

    @property
    def lengths(self) -> list[int]:
        """Token count of every training example (map-style data)."""
        return self.plan.lengths if self.plan else []

    @property
    def bins(self) -> list[list[int]]:
        """pack_scope=dataset: example indices of every packed row."""
        return self.plan.bins if self.plan else []

    def setup(self, stage: str | None = None) -> None:
        """Prepare the train mixture, the per-source validation sets, the audit and the manifest (once)."""
        if self.prepared is not None:
            return
        if self.streaming:  # load_source looked up here, so a test can replace it
            streams = [
                load_source(s.path, split=s.split, subset=s.subset, streaming=True)
                for s in self.recipe.sources
            ]
            self.prepared = st.prepare_stream(
                self.recipe, streams, self.streaming_audit_rows, self.shuffle_buffer
            )
        else:
            raws = [load_rows(s, self.recipe.on_bad_row) for s in self.recipe.sources]
            self.prepared = prepare(self.recipe, raws)
        table = mixture_table(self.prepared.stats, self.source_names)
        log.info("training mixture (rows):\n%s", format_table(table))
        for warning in mixture_warnings(table, self.max_repeats):
            log.warning(warning)
        self.audit = au.build_audit(self.prepared)
        if isinstance(self.prepared.train, Dataset):
            lengths = token_lengths(self.prepared.train)
            self.plan = pk.plan_batches(
                lengths,
                self.batch_size,
                self.seed,
                self.packing,
                self.pack_scope,
                self.pack_length,
                self.group_by_length,
                self.pad_to_multiple_of,
            )
            mode = (
                f"packed ({self.pack_scope}, {self.pack_length} tokens a row)" if self.packing else "padded"
            )
            log.info("training batches %s: %.1f%% real tokens", mode, 100 * self.plan.efficiency)

    # ----------------------------------------------------------------------------------- loaders
    def train_stream(self, rank: int = 0, world_size: int = 1) -> IterableDataset:
        """The streaming training data of one rank of `world_size` (`itune.data.streaming.train_stream`)."""
        return st.train_stream(self.train_set, rank, world_size)

    def accumulation(self) -> int:
        """Micro-batches an optimizer step (the trainer's `accumulate_grad_batches`; 1 without a trainer)."""
        return int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)

    def train_dataloader(self) -> DataLoader:
        """The training batches, each with the trained tokens of the step's batches ahead
        (`itune.data.step_tokens`), so the loss is the mean over a step's tokens; a stream is split by rank
        (`train_stream`, rank and world size from the trainer), map-style data by Lightning's sampler.
        `train_loader_hook`, when set, gets the loader and returns the one used (a resumable sampler)."""
        loader = self._train_loader()
        return self.train_loader_hook(loader) if self.train_loader_hook else loader

    def _train_loader(self) -> DataLoader:
        loader = functools.partial(
            StepTokenLoader,
            batch_size=self.batch_size,
            collate_fn=self.train_collate,
            num_workers=self.num_workers,
            window=self.accumulation,
        )
        if isinstance(self.train_set, IterableDataset):  # packing=true packs each batch (pack_scope=batch)
            rank, world = getattr(self.trainer, "global_rank", 0), getattr(self.trainer, "world_size", 1)
            return loader(self.train_stream(rank, world))
        data = self.train_set.with_format(columns=["input_ids", "labels", "source"])
        if self.packing and self.pack_scope == "dataset":  # items are packed rows; shuffled row order
            data = pk.PackedDataset(data, self.bins)
        elif self.group_by_length and not self.packing:  # a seeded sampler with set_epoch: resumable
            world = int(getattr(self.trainer, "world_size", 1) or 1)  # groups of the global batch
            grouped = pk.LengthGroupedSampler(self.lengths, self.batch_size * world, self.seed)
            return loader(data, sampler=grouped)
        return loader(data, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation batches; under DDP each rank takes every world_size-th row, and the padding that
        evens out the ranks has no trained token (Lightning's sampler would repeat a row in the loss)."""
        if self.val_set is None:
            return []
        data: Any = self.val_set.with_format(columns=["input_ids", "labels", "source"])
        rank, world = getattr(self.trainer, "global_rank", 0), getattr(self.trainer, "world_size", 1)
        sampler = None
        if world > 1:
            data = PaddedRows(data, math.ceil(len(data) / world) * world)
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            data,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
