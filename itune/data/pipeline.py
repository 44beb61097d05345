"""The data pipeline as pure stages that take values and return values:

    rows per source ─► format ─► curate (row filters; set filters across sources) ─► template/tokenize
    ─► length checks ─► split (val per source) ─► mix (weights → manifest) = `PreparedMix`

Every row that does not reach the mixture is counted in the recorder (per source and per step) and in the
stats (metrics.json); the manifest lists the rows of the mixture. The datamodule (itune/data/datamodule.py)
wires the result to Lightning; the audit (itune/data/audit.py) reads it; the stream (itune/data/streaming.py)
runs the same stages lazily.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset, concatenate_datasets

from itune.data.curate import Filter, build_filters
from itune.data.duplicates import set_pass
from itune.data.manifest import build_manifest
from itune.data.mix import draw_indices, mix_counts
from itune.data.records import (
    Recorder,
    new_recorder,
    no_rows_message,
    record_format,
    record_row_events,
    record_token_steps,
    source_stats,
)
from itune.data.sources import Source, make_source
from itune.data.stages import column, curate_rows, encode_rows, format_rows
from itune.data.templates import Template

log = logging.getLogger(__name__)

MIX_COLUMNS = ["input_ids", "labels", "source", "row", "sha"]  # what the mixture keeps of each row


@dataclass(frozen=True)
class Recipe:
    """Everything the pipeline needs besides the rows: the datamodule's settings (see `make_recipe`)."""

    sources: tuple[Source, ...]
    filters: tuple[Filter, ...]
    template: Template
    tokenizer: Any
    num_samples: int | str | None = None
    val_fraction: float = 0.05
    max_val_samples: int = 200
    max_length: int = 1024
    overlength: str = "drop"
    on_bad_row: str = "error"
    audit_examples: int = 3
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def weights(self) -> dict[str, float]:
        return {s.name: s.weight for s in self.sources}


def make_recipe(
    sources: Mapping[str, Mapping[str, Any]],
    tokenizer: Any,
    template: Template,
    curate: Mapping[str, Filter | None] | None = None,
    **settings: Any,
) -> Recipe:
    """A Recipe from the `data` config's values; ValueError naming the key that is wrong."""
    if not sources:
        raise ValueError("data.sources is empty; name at least one source with a path and a format")
    if settings.get("overlength", "drop") not in ("drop", "truncate"):
        raise ValueError(f"data.overlength={settings['overlength']!r}; valid: drop, truncate")
    if settings.get("on_bad_row", "error") not in ("error", "skip"):
        raise ValueError(f"data.on_bad_row={settings['on_bad_row']!r}; valid: error, skip")
    val_fraction = settings.get("val_fraction", 0.05)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    built = tuple(make_source(name, dict(node)) for name, node in sources.items())
    mix_counts({s.name: s.weight for s in built}, 1)  # validate weights now
    num_samples = settings.get("num_samples")
    names = [s.name for s in built]
    if isinstance(num_samples, str) and num_samples not in names:
        raise ValueError(
            f"data.num_samples={num_samples!r}: a number, null (all rows) or a source name "
            f"(one pass over it); sources: {names}"
        )
    if isinstance(num_samples, int) and num_samples <= 0:
        raise ValueError(f"data.num_samples={num_samples} must be > 0 (or null for all rows)")
    filters = tuple(build_filters(dict(curate) if curate else None))
    return Recipe(sources=built, filters=filters, template=template, tokenizer=tokenizer, **settings)


@dataclass(frozen=True)
class PreparedMix:
    """The prepared data as one value: what the loaders, the audit, the manifest and metrics.json read."""

    recipe: Recipe
    train: Dataset | IterableDataset  # the training mixture (a stream with data.streaming=true)
    val: Dataset | None  # the held-out rows of every source
    parts: tuple[tuple[Dataset, Dataset], ...]  # per source: (training rows available, held-out rows)
    counts: dict[str, int]  # rows of each source in the mixture
    available: dict[str, int]  # training rows of each source
    draws: dict[str, np.ndarray]  # per source: the rows of its `parts` training set drawn into the mixture
    stats: dict[str, float]  # data/... keys of metrics.json
    record: Recorder  # what each step did (the audit's counts and examples)
    manifest: dict[str, Any]

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.recipe.sources

    @property
    def streaming(self) -> bool:
        return self.manifest["mode"] == "streaming"


def prepare(
    recipe: Recipe, raws: list[tuple[Dataset, list[str]]], head_rows: int | None = None
) -> PreparedMix:
    """Format, curate, tokenize, split and mix the sources' rows.

    Args:
        recipe: the settings.
        raws: per source, its rows and the malformed JSON lines left out of them (`sources.load_rows`).
        head_rows: streaming: the rows are the first `head_rows` of each source (held-out rows are then
            the first kept ones, and the manifest says so).
    """
    filters = list(recipe.filters)
    rec = new_recorder(recipe.names, filters, recipe.max_length, recipe.overlength, recipe.audit_examples)
    pairs = zip(recipe.sources, raws, strict=True)
    curated = [curate_source(recipe, rec, src, raw, bad) for src, (raw, bad) in pairs]
    stops = set_pass(curated, recipe.names, filters, rec)
    kept: list[Dataset] = []
    stats: dict[str, float] = {}
    for src, cur, stop in zip(recipe.sources, curated, stops, strict=True):
        kept.append(encode_source(recipe, rec, src, cur, stop))
        stats |= source_stats(rec, filters, src.name)
    parts, split_stats = split(recipe, kept, head=head_rows is not None)
    return mix(recipe, parts, rec, stats | split_stats, head_rows)


def curate_source(recipe: Recipe, rec: Recorder, src: Source, raw: Dataset, bad_lines: list[str]) -> Dataset:
    """One source's rows → messages (malformed ones counted, and left out) → row filters applied."""
    formatted = format_rows(src, raw, recipe.on_bad_row)
    errors = column(formatted, "error")
    record_format(rec, src.name, errors, bad_lines, len(raw))
    for reason, n in Counter(e for e in errors if e).most_common(3):
        log.warning("%s: skipped %d malformed row(s): %s", src.where, n, reason)
    ok = formatted.filter(lambda e: not e, input_columns="error") if any(errors) else formatted
    return curate_rows(ok, recipe.filters)


def encode_source(recipe: Recipe, rec: Recorder, src: Source, cur: Dataset, stop: np.ndarray) -> Dataset:
    """One curated source's surviving rows → tokens and labels, less those the token checks drop."""
    filters = list(recipe.filters)
    record_row_events(rec, filters, src.name, cur, stop)
    n = len(filters)
    survivors = cur.select(np.flatnonzero(stop == n)) if (stop != n).any() else cur
    encoded = encode_rows(
        survivors.select_columns(["messages", "row", "sha"]),
        recipe.template,
        recipe.tokenizer,
        recipe.max_length,
        recipe.overlength,
    )
    keep = record_token_steps(rec, filters, recipe.max_length, src.name, encoded)
    final = encoded.select(keep) if len(keep) < len(encoded) else encoded
    if len(final) == 0:
        raise ValueError(f"{src.where} {no_rows_message(rec, filters, src.name, recipe.max_length)}")
    return final


def split(
    recipe: Recipe, kept: list[Dataset], head: bool = False
) -> tuple[list[tuple[Dataset, Dataset]], dict[str, float]]:
    """Hold out val_fraction of each source (a seeded random subset; the first rows when `head`).

    Returns per source (train, val), each with a `source` column (the source's index), and the stats.
    """
    out, stats = [], {}
    for i, (src, ds) in enumerate(zip(recipe.sources, kept, strict=True)):
        ds = ds.add_column("source", [i] * len(ds))
        n_val = min(recipe.max_val_samples, int(round(len(ds) * recipe.val_fraction))) if len(ds) > 1 else 0
        order = np.arange(len(ds)) if head else np.random.default_rng([recipe.seed, i]).permutation(len(ds))
        val, train = ds.select(order[:n_val]), ds.select(np.sort(order[n_val:]))
        stats |= {
            f"data/{src.name}/rows_val": len(val),
            f"data/{src.name}/rows_train_available": len(train),
        }
        out.append((train, val))
    return out, stats


def mixture_size(recipe: Recipe, available: dict[str, int]) -> int:
    """Rows of the training mixture: num_samples, one pass over the named source, or every row."""
    if isinstance(recipe.num_samples, int):
        return recipe.num_samples
    if isinstance(recipe.num_samples, str):
        share = recipe.weights[recipe.num_samples] / sum(recipe.weights.values())
        if share == 0:
            raise ValueError(f"data.num_samples={recipe.num_samples!r} names a source with weight 0")
        return max(1, round(available[recipe.num_samples] / share))
    return sum(available.values())


def mix(
    recipe: Recipe,
    parts: list[tuple[Dataset, Dataset]],
    rec: Recorder,
    stats: dict[str, float],
    head_rows: int | None = None,
) -> PreparedMix:
    """Draw each source's share of the mixture (weights → counts → rows) and list it in the manifest."""
    available = {s.name: len(train) for s, (train, _) in zip(recipe.sources, parts, strict=True)}
    total = mixture_size(recipe, available)
    counts = mix_counts(recipe.weights, total)
    rng = np.random.default_rng(recipe.seed)
    chosen, draws, stats = [], {}, dict(stats)
    for src, (train, _) in zip(recipe.sources, parts, strict=True):
        draws[src.name] = draw_indices(len(train), counts[src.name], rng)
        chosen.append(train.select_columns(MIX_COLUMNS).select(draws[src.name]))
        stats[f"data/{src.name}/rows_in_mix"] = counts[src.name]
        stats[f"data/{src.name}/share"] = counts[src.name] / total
    train_set = concatenate_datasets(chosen).shuffle(seed=recipe.seed)
    vals = [val.select_columns(MIX_COLUMNS) for _, val in parts if len(val)]
    val_set = concatenate_datasets(vals) if vals else None
    stats["data/rows_train"] = len(train_set)
    stats["data/rows_val"] = len(val_set) if val_set else 0
    manifest = build_manifest(
        list(recipe.sources),
        train_set,
        val_set,
        counts,
        available,
        seed=recipe.seed,
        num_samples=recipe.num_samples,
        template_fingerprint=recipe.template.fingerprint,
        head_rows=head_rows,
    )
    return PreparedMix(
        recipe, train_set, val_set, tuple(parts), counts, available, draws, stats, rec, manifest
    )
