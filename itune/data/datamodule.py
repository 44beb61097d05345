"""LightningDataModule: sources → messages → held-out split → tokens + mask → weighted mix → batches."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Literal

import lightning as L
import numpy as np
from datasets import Dataset, concatenate_datasets
from torch.utils.data import DataLoader

from itune.data.collate import PadCollator
from itune.data.formats import RowError, get_format, to_messages
from itune.data.mix import draw_indices, mix_counts
from itune.data.sources import load_source
from itune.data.templates import IGNORE_INDEX, Template

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    """One named data source of a mix (a node under `data.sources`)."""

    name: str
    path: str
    format: str = "alpaca"
    weight: float = 1.0
    fields: dict[str, str] | None = None  # {format field: column name} for other column names
    split: str = "train"  # hub datasets only
    subset: str | None = None  # hub datasets only


def make_source(name: str, node: dict[str, Any]) -> Source:
    """Build a Source from its config node, naming the key that is wrong."""
    valid = [f.name for f in dataclasses.fields(Source) if f.name != "name"]
    unknown = sorted(set(node) - set(valid))
    if unknown:
        raise ValueError(f"data.sources.{name}: unknown key(s) {unknown}; valid keys: {valid}")
    if not node.get("path"):
        raise ValueError(f"data.sources.{name}.path is not set (a local file or a hub dataset id)")
    get_format(node.get("format", "alpaca"))
    return Source(name=name, **node)


def format_row(
    row: dict[str, Any], idx: int, format: str, fields: dict[str, str] | None, where: str, skip_bad: bool
) -> dict[str, Any]:
    """datasets.map function: raw row → {messages, error}; raises naming the row unless skipping."""
    try:
        return {"messages": to_messages(row, format, fields), "error": ""}
    except RowError as e:
        if not skip_bad:
            raise RowError(f"{where}, row {idx} (line {idx + 1} of a JSONL file): {e}") from None
        return {"messages": [], "error": str(e)}


def encode_row(row: dict[str, Any], template: Template, max_length: int, overlength: str) -> dict[str, Any]:
    """datasets.map function: messages → input_ids, labels, status (ok/truncated/too_long/no_trained)."""
    enc = template.encode(row["messages"])
    status = "ok"
    if len(enc["input_ids"]) > max_length:
        if overlength == "drop":
            return {"input_ids": [], "labels": [], "status": "too_long"}
        enc = {k: v[:max_length] for k, v in enc.items()}
        status = "truncated"
    if all(label == IGNORE_INDEX for label in enc["labels"]):
        status = "no_trained"
    return {**enc, "status": status}


class InstructDataModule(L.LightningDataModule):
    """Loads, formats, splits, tokenizes and mixes the sources of a `data` config.

    Args:
        sources: {name: {path, format, weight, fields, split, subset}}.
        tokenizer: injected at instantiate time; provides the pad id.
        template: injected; turns messages into ids + labels (the same one eval and inference use).
        num_samples: size of the training mixture; None = the sum of the sources' training rows.
        val_fraction: share of each source's rows held out for validation (before mixing).
        max_val_samples: cap on held-out rows per source.
        max_length: token budget per example.
        overlength: `drop` or `truncate` examples longer than max_length (counted either way).
        on_bad_row: `error` stops at the first malformed row naming file and row; `skip` counts it.
        batch_size: training examples per step (per device).
        eval_batch_size: validation batch size (default: batch_size).
        num_workers: DataLoader worker processes.
        pad_to_multiple_of: round padded lengths up (8 suits tensor cores).
        seed: seed of the split and the mix.
    """

    def __init__(
        self,
        sources: dict[str, dict[str, Any]],
        tokenizer: Any,
        template: Template,
        num_samples: int | None = None,
        val_fraction: float = 0.05,
        max_val_samples: int = 200,
        max_length: int = 1024,
        overlength: Literal["drop", "truncate"] = "drop",
        on_bad_row: Literal["error", "skip"] = "error",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources is empty; name at least one source with a path and a format")
        if overlength not in ("drop", "truncate"):
            raise ValueError(f"data.overlength={overlength!r}; valid: drop, truncate")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row={on_bad_row!r}; valid: error, skip")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        self.sources = [make_source(name, dict(node)) for name, node in sources.items()]
        mix_counts({s.name: s.weight for s in self.sources}, 1)  # validate weights now
        self.tokenizer, self.template = tokenizer, template
        self.num_samples, self.val_fraction, self.max_val_samples = num_samples, val_fraction, max_val_samples
        self.max_length, self.overlength, self.on_bad_row = max_length, overlength, on_bad_row
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.collate = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.stats: dict[str, float] = {}

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _prepare_source(self, i: int, src: Source) -> tuple[Dataset, Dataset]:
        raw = load_source(src.path, split=src.split, subset=src.subset)
        where = f"data.sources.{src.name} ({src.path})"
        formatted = raw.map(
            format_row,
            with_indices=True,
            remove_columns=raw.column_names,
            fn_kwargs={
                "format": src.format,
                "fields": src.fields,
                "where": where,
                "skip_bad": self.on_bad_row == "skip",
            },
            desc=f"format {src.name}",
        )
        errors = Counter(e for e in formatted["error"] if e)
        formatted = formatted.filter(lambda e: not e, input_columns="error")
        encoded = formatted.map(
            encode_row,
            fn_kwargs={
                "template": self.template,
                "max_length": self.max_length,
                "overlength": self.overlength,
            },
            remove_columns=["error"],
            desc=f"tokenize {src.name}",
        )
        status = Counter(encoded["status"])
        kept = encoded.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
        kept = kept.remove_columns(["status", "messages"]).add_column("source", [i] * len(kept))
        if len(kept) == 0:
            raise ValueError(
                f"{where} yields no usable rows: {len(raw)} read, {sum(errors.values())} malformed, "
                f"{status['too_long']} longer than max_length={self.max_length}, "
                f"{status['no_trained']} without trained tokens"
            )
        n_val = min(self.max_val_samples, int(round(len(kept) * self.val_fraction))) if len(kept) > 1 else 0
        order = np.random.default_rng([self.seed, i]).permutation(len(kept))
        val, train = kept.select(order[:n_val]), kept.select(np.sort(order[n_val:]))
        self.stats |= {
            f"data/{src.name}/rows_read": len(raw),
            f"data/{src.name}/rows_malformed_skipped": sum(errors.values()),
            f"data/{src.name}/rows_too_long_dropped": status["too_long"],
            f"data/{src.name}/rows_truncated": status["truncated"],
            f"data/{src.name}/rows_without_trained_tokens": status["no_trained"],
            f"data/{src.name}/rows_val": len(val),
            f"data/{src.name}/rows_train_available": len(train),
        }
        for reason, n in errors.most_common(3):
            log.warning("%s: skipped %d malformed row(s): %s", where, n, reason)
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Prepare the train mixture and the per-source validation sets (once)."""
        if self.train_set is not None:
            return
        prepared = [self._prepare_source(i, s) for i, s in enumerate(self.sources)]
        total = self.num_samples or sum(len(train) for train, _ in prepared)
        counts = mix_counts({s.name: s.weight for s in self.sources}, total)
        rng = np.random.default_rng(self.seed)
        parts = []
        for src, (train, _) in zip(self.sources, prepared, strict=True):
            parts.append(train.select(draw_indices(len(train), counts[src.name], rng)))
            self.stats[f"data/{src.name}/rows_in_mix"] = counts[src.name]
            self.stats[f"data/{src.name}/share"] = counts[src.name] / total
        self.train_set = concatenate_datasets(parts).shuffle(seed=self.seed).flatten_indices()
        vals = [val for _, val in prepared if len(val)]
        self.val_set = concatenate_datasets(vals) if vals else None
        self.stats["data/rows_train"] = len(self.train_set)
        self.stats["data/rows_val"] = len(self.val_set) if self.val_set else 0
        log.info("training mixture: %s", {s.name: counts[s.name] for s in self.sources})

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set.with_format(columns=["input_ids", "labels", "source"]),
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set.with_format(columns=["input_ids", "labels", "source"]),
            batch_size=self.eval_batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
