"""LightningDataModule: sources → messages → curate → tokens + mask → held-out split → weighted mix → batches.

Every row that does not reach the mixture is counted in `self.audit` (per source and per step) and in
`self.stats` (metrics.json); `self.manifest` lists the rows of the mixture (see itune/data/audit.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
from datasets import Dataset, IterableDataset, concatenate_datasets, interleave_datasets
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from itune.data import audit as au
from itune.data import packing as pk
from itune.data.collate import PackCollator, PadCollator
from itune.data.curate import Filter, build_filters, curate_batch, snippet
from itune.data.formats import RowError, get_format, to_messages
from itune.data.mix import draw_indices, format_table, mix_counts, mixture_table, mixture_warnings
from itune.data.sources import SourceError, load_jsonl_skipping, load_source
from itune.data.step_tokens import StepTokenLoader
from itune.data.templates import IGNORE_INDEX, Template

log = logging.getLogger(__name__)

# Cache keys of the datasets.map steps include the code of the data package: datasets hashes importable
# functions by name only, so a changed format or filter would otherwise reuse a stale cache.
_CODE = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()


MIX_COLUMNS = ["input_ids", "labels", "source", "row", "sha"]  # what the mixture keeps of each row


def _column(ds: Dataset, name: str) -> list[Any]:
    """One column as a Python list (fast, unlike iterating `ds[name]`)."""
    return ds.select_columns([name]).to_dict()[name] if len(ds) else []


def _fingerprint(*parts: Any) -> str:
    """A datasets cache fingerprint from JSON-able parts."""
    return hashlib.sha256(json.dumps([_CODE, *parts], default=str).encode()).hexdigest()[:32]


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


def row_place(path: str, idx: int) -> str:
    """Where row `idx` (0-based) sits in its file, as its editor shows it.

    >>> row_place("a.jsonl", 3), row_place("a.json", 3)
    ('row 3 (line 4 of the JSONL file)', 'row 3 (record 4 of the JSON array)')
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return f"row {idx} (line {idx + 1} of the JSONL file)"
    if suffix == ".json":
        return f"row {idx} (record {idx + 1} of the JSON array)"
    if suffix in (".csv", ".tsv"):
        return f"row {idx} (line {idx + 2} of the CSV file)"
    return f"row {idx}"


def format_row(
    row: dict[str, Any],
    idx: int,
    format: str,
    fields: dict[str, str] | None,
    where: str,
    skip_bad: bool,
    path: str = "",
) -> dict[str, Any]:
    """datasets.map function: raw row → {messages, error, row}; raises naming the row unless skipping."""
    try:
        return {"messages": to_messages(row, format, fields), "error": "", "row": idx}
    except RowError as e:
        if not skip_bad:
            raise RowError(
                f"{where}, {row_place(path, idx)}: {e}; fix the row, or set data.on_bad_row=skip to skip "
                "such rows (counted in metrics.json and the audit)"
            ) from None
        return {"messages": [], "error": str(e), "row": idx}


def encode_row(row: dict[str, Any], template: Template, max_length: int, overlength: str) -> dict[str, Any]:
    """One row of `encode_batch` (kept for callers that map row by row)."""
    batch = encode_batch({"messages": [row["messages"]]}, template, max_length, overlength)
    return {k: v[0] for k, v in batch.items()}


def encode_batch(
    batch: dict[str, list[Any]], template: Template, max_length: int, overlength: str
) -> dict[str, list[Any]]:
    """datasets.map (batched) function: messages → input_ids, labels and counts.

    `n_tokens` is the full example's length, `n_trained` the trained tokens of what is kept; `status` is
    ok, truncated (cut to max_length with
    overlength=truncate), too_long (overlength=drop; ids left empty) or no_trained (no trained token left);
    `n_eot` counts trained end-of-turn tokens of what is kept.
    """
    eot = template.stop_token_ids[0]
    out: dict[str, list[Any]] = {
        k: [] for k in ("input_ids", "labels", "n_tokens", "n_trained", "n_eot", "status")
    }
    for enc in template.encode_batch(batch["messages"]):
        ids, labels = enc["input_ids"], enc["labels"]
        n_tokens, status = len(ids), "ok"
        if n_tokens > max_length:
            if overlength == "drop":
                status = "too_long"
            else:
                ids, labels, status = ids[:max_length], labels[:max_length], "truncated"
        n_trained = len(labels) - labels.count(IGNORE_INDEX)
        if status == "too_long":
            ids, labels = [], []
        if status != "too_long" and n_trained == 0:
            status = "no_trained"
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["n_tokens"].append(n_tokens)
        out["n_trained"].append(n_trained)
        out["n_eot"].append(labels.count(eot))
        out["status"].append(status)
    return out


class StreamSetFilter:
    """Set filters (duplicates) of one stream: their state lives in this object, so it is per stream, and
    starts afresh with every pass over it (`idx` 0: an epoch, a rank's or a DataLoader worker's shard)."""

    def __init__(self, filters: list[Filter], source: str) -> None:
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


class InstructDataModule(L.LightningDataModule):
    """Loads, formats, curates, tokenizes and mixes the sources of a `data` config.

    Args:
        sources: {name: {path, format, weight, fields, split, subset}}.
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
        packing: bool = False,
        pack_length: int | None = None,
        pack_scope: Literal["batch", "dataset"] = "batch",
        group_by_length: bool = False,
        max_repeats: float = 4.0,
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
        if isinstance(num_samples, str) and num_samples not in self.source_names:
            raise ValueError(
                f"data.num_samples={num_samples!r}: a number, null (all rows) or a source name "
                f"(one pass over it); sources: {self.source_names}"
            )
        if isinstance(num_samples, int) and num_samples <= 0:
            raise ValueError(f"data.num_samples={num_samples} must be > 0 (or null for all rows)")
        self.filters = build_filters(curate)
        self.tokenizer, self.template = tokenizer, template
        self.num_samples, self.val_fraction, self.max_val_samples = num_samples, val_fraction, max_val_samples
        self.max_length, self.overlength, self.on_bad_row = max_length, overlength, on_bad_row
        self.streaming, self.streaming_audit_rows = streaming, streaming_audit_rows
        self.shuffle_buffer, self.audit_examples = shuffle_buffer, audit_examples
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.max_repeats = num_workers, seed, max_repeats
        self.collate = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of)
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
        self.pad_to_multiple_of = pad_to_multiple_of
        pack = PackCollator(tokenizer.pad_token_id, self.pack_length, pad_to_multiple_of)
        self.train_collate = pack if packing else self.collate
        self.lengths: list[int] = []  # token count of every training example (map-style data)
        self.bins: list[list[int]] = []  # pack_scope=dataset: example indices of every packed row
        self.train_set: Dataset | IterableDataset | None = None
        self.val_set: Dataset | None = None
        self.stats: dict[str, float] = {}
        self.audit: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self._bad_lines: dict[str, list[str]] = {}  # malformed JSON lines skipped per source

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def _where(self, src: Source) -> str:
        return f"data.sources.{src.name} ({src.path})"

    # ------------------------------------------------------------------------------------ per-row maps
    def _format(self, src: Source, raw: Dataset | IterableDataset) -> Dataset | IterableDataset:
        kwargs = {}
        if isinstance(raw, Dataset):
            fp = _fingerprint(raw._fingerprint, "format", src.format, src.fields, src.name, self.on_bad_row)
            kwargs = {"desc": f"format {src.name}", "new_fingerprint": fp}
        return raw.map(
            format_row,
            with_indices=True,
            remove_columns=raw.column_names,
            fn_kwargs={
                "format": src.format,
                "fields": src.fields,
                "where": self._where(src),
                "skip_bad": self.on_bad_row == "skip",
                "path": src.path,
            },
            **kwargs,
        )

    def _curate(self, formatted: Dataset | IterableDataset) -> Dataset | IterableDataset:
        kwargs: dict[str, Any] = {"remove_columns": ["error"]}
        if isinstance(formatted, Dataset):
            fp = _fingerprint(formatted._fingerprint, "curate", [f.fingerprint() for f in self.filters])
            kwargs |= {"new_fingerprint": fp, "desc": "curate"}
        return formatted.map(
            curate_batch, batched=True, batch_size=500, fn_kwargs={"filters": self.filters}, **kwargs
        )

    def _encode(self, curated: Dataset | IterableDataset) -> Dataset | IterableDataset:
        kwargs = {}
        if isinstance(curated, Dataset):
            tok = self.tokenizer
            fp = _fingerprint(
                curated._fingerprint,
                "encode",
                self.template.fingerprint,
                self.template.spec(),
                getattr(tok, "name_or_path", ""),
                len(tok),
                self.max_length,
                self.overlength,
            )
            kwargs = {"desc": "tokenize", "new_fingerprint": fp}
        return curated.map(
            encode_batch,
            batched=True,
            batch_size=500,
            fn_kwargs={
                "template": self.template,
                "max_length": self.max_length,
                "overlength": self.overlength,
            },
            **kwargs,
        )

    def _token_steps(self, n_tokens: int, n_trained: int, status: str) -> tuple[str | None, str, str]:
        """(step that drops/changes the row or None, action, detail) for the token-stage checks."""
        for f in self.filters:
            if f.stage == "tokens":
                action, detail = f.check(n_tokens, n_trained)
                if action == "drop":
                    return f.name, "dropped", detail
        if status == "too_long":
            return "max_length", "dropped", f"tokens {n_tokens} > max_length {self.max_length}"
        if status == "no_trained":
            return "no_trained", "dropped", "no trained token (no assistant content left)"
        if status == "truncated":
            return "max_length", "truncated", f"tokens {n_tokens} cut to max_length {self.max_length}"
        return None, "", ""

    # -------------------------------------------------------------------------------------- map mode
    def _prepare(self, raws: list[Dataset]) -> list[Dataset]:
        """Format, curate and tokenize every source; record every step in the audit; return kept rows."""
        rec = au.Recorder(self.source_names, self.audit_examples)
        rec.step("format", "format", "malformed rows (data.on_bad_row=skip)")
        for f in self.filters:
            if f.stage != "tokens":
                rec.step(f.name, f.stage, type(f).__module__ + "." + type(f).__qualname__, f.settings())
        for f in self.filters:
            if f.stage == "tokens":
                rec.step(f.name, f.stage, type(f).__module__ + "." + type(f).__qualname__, f.settings())
        rec.step(
            "max_length", "tokens", f"data.max_length={self.max_length}, data.overlength={self.overlength}"
        )
        rec.step("no_trained", "tokens", "rows without a trained token")

        curated: list[Dataset] = []
        for src, raw in zip(self.sources, raws, strict=True):
            formatted = self._format(src, raw)
            errors = _column(formatted, "error")
            bad = [i for i, e in enumerate(errors) if e]
            lines = self._bad_lines.get(src.name, [])
            rec.count("format", src.name, "in", len(raw) + len(lines))
            rec.count("format", src.name, "dropped", len(bad) + len(lines))
            for line in lines[: self.audit_examples]:
                rec.example("format", "dropped", src.name, -1, f"malformed JSON {line}", "")
            for i in bad[: self.audit_examples]:
                rec.example("format", "dropped", src.name, i, errors[i], "")
            for reason, n in Counter(e for e in errors if e).most_common(3):
                log.warning("%s: skipped %d malformed row(s): %s", self._where(src), n, reason)
            ok = formatted.filter(lambda e: not e, input_columns="error") if bad else formatted
            curated.append(self._curate(ok))

        stops = self._set_pass(curated, rec)
        kept: list[Dataset] = []
        n = len(self.filters)
        for src, cur, stop in zip(self.sources, curated, stops, strict=True):
            self._count_row_events(src, cur, stop, rec)
            survivors = cur.select(np.flatnonzero(stop == n)) if (stop != n).any() else cur
            encoded = self._encode(survivors.select_columns(["messages", "row", "sha"]))
            cols = encoded.select_columns(["n_tokens", "n_trained", "status", "row"]).to_dict()
            keep = []
            triples = zip(cols["n_tokens"], cols["n_trained"], cols["status"], strict=True)
            for k, (nt, ntr, st) in enumerate(triples):
                step, action, detail = self._token_steps(nt, ntr, st)
                if step is not None:
                    rec.count(step, src.name, action, 1)
                    if rec.wants_example(step, action, src.name):
                        text = snippet(encoded[k]["messages"])
                        rec.example(step, action, src.name, cols["row"][k], detail, text)
                if action != "dropped":
                    keep.append(k)
            for step in [f.name for f in self.filters if f.stage == "tokens"] + ["max_length", "no_trained"]:
                rec.count(step, src.name, "in", len(encoded))  # every templated row is checked
            rec.set_lengths(src.name, cols["n_tokens"])
            final = encoded.select(keep) if len(keep) < len(encoded) else encoded
            if len(final) == 0:
                dropped = [
                    f"{rec.get(f.name, src.name, 'dropped')} dropped by curate.filters.{f.name}"
                    for f in self.filters
                    if rec.get(f.name, src.name, "dropped")
                ]
                raise ValueError(
                    f"{self._where(src)} yields no usable rows: {rec.get('format', src.name, 'in')} read, "
                    f"{rec.get('format', src.name, 'dropped')} malformed, "
                    + "".join(d + ", " for d in dropped)
                    + f"{rec.get('max_length', src.name, 'dropped')} longer than "
                    f"max_length={self.max_length}, "
                    f"{rec.get('no_trained', src.name, 'dropped')} without trained tokens"
                )
            kept.append(final)
            self.stats |= {
                f"data/{src.name}/rows_read": rec.get("format", src.name, "in"),
                f"data/{src.name}/rows_malformed_skipped": rec.get("format", src.name, "dropped"),
                f"data/{src.name}/rows_curated_dropped": sum(
                    rec.get(f.name, src.name, "dropped") for f in self.filters
                ),
                f"data/{src.name}/rows_redacted": sum(
                    rec.get(f.name, src.name, "redacted") for f in self.filters
                ),
                f"data/{src.name}/rows_flagged": sum(
                    rec.get(f.name, src.name, "flagged") for f in self.filters
                ),
                f"data/{src.name}/rows_too_long_dropped": rec.get("max_length", src.name, "dropped"),
                f"data/{src.name}/rows_truncated": rec.get("max_length", src.name, "truncated"),
                f"data/{src.name}/rows_without_trained_tokens": rec.get("no_trained", src.name, "dropped"),
            }
        self._recorder = rec
        return kept

    def _set_pass(self, curated: list[Dataset], rec: au.Recorder) -> list[np.ndarray]:
        """Duplicates across the whole mixture, sources in order, first occurrence kept.

        Returns per source the position of the filter that drops each row (len(filters): kept). The
        result is cached beside the curated data (keyed by their fingerprints and the filter settings).
        """
        sets = [(pos, f) for pos, f in enumerate(self.filters) if f.stage == "set"]
        cache = self._set_cache(curated, sets)
        if cache is not None and cache.is_file():
            found = json.loads(cache.read_text())
        else:
            found = self._find_duplicates(curated, sets)
            if cache is not None:  # whole or not at all: another rank may be reading it
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(found))
                os.replace(tmp, cache)
        stops = []
        for s, (src, cur) in enumerate(zip(self.sources, curated, strict=True)):
            stop = np.asarray(_column(cur, "drop_at"), dtype=np.int64)
            for i, pos, row, first in found[s]:
                f = self.filters[pos]
                stop[i] = pos
                rec.count(f.name, src.name, "dropped", 1)
                if rec.wants_example(f.name, "dropped", src.name):
                    detail = f"duplicate of {first[0]} row {first[1]}"
                    rec.example(f.name, "dropped", src.name, row, detail, snippet(cur[i]["messages"]))
            stops.append(stop)
        return stops

    def _set_cache(self, curated: list[Dataset], sets: list[tuple[int, Filter]]) -> Path | None:
        files = [c.cache_files for c in curated]
        if not sets or not all(files):
            return None
        key = _fingerprint("sets", [c._fingerprint for c in curated], [(p, f.fingerprint()) for p, f in sets])
        return Path(files[0][0]["filename"]).parent / f"itune-sets-{key}.json"

    def _find_duplicates(self, curated: list[Dataset], sets: list[tuple[int, Filter]]) -> list[list[Any]]:
        """Per source: [index, filter position, row, [source, row] of the first occurrence] of each dup."""
        indexes = {f.name: f.index() for _, f in sets}
        found: list[list[Any]] = []
        for src, cur in zip(self.sources, curated, strict=True):
            dups: list[Any] = []
            if sets and len(cur):
                cols = ["row", "drop_at"] + [f"key_{f.name}" for _, f in sets]
                i = 0
                for batch in cur.select_columns(cols).iter(batch_size=2000):
                    for j in range(len(batch["row"])):
                        for pos, f in sets:
                            if pos >= batch["drop_at"][j]:
                                break
                            where = (src.name, batch["row"][j])
                            first = indexes[f.name].check_add(batch[f"key_{f.name}"][j], where)
                            if first is not None:
                                dups.append([i, pos, batch["row"][j], list(first)])
                                break
                        i += 1
            found.append(dups)
        return found

    def _count_row_events(self, src: Source, cur: Dataset, stop: np.ndarray, rec: au.Recorder) -> None:
        """Count what each row filter did to the rows that reached it; rows reaching each filter."""
        for pos, f in enumerate(self.filters):
            if f.stage != "tokens":
                rec.count(f.name, src.name, "in", int((stop >= pos).sum()) if len(stop) else 0)
        verbs = {"drop": "dropped", "redact": "redacted", "flag": "flagged"}
        events = _column(cur, "events")
        wanted: list[tuple[str, str, int, str]] = []
        for i, ev in enumerate(events):
            if not ev:
                continue
            for pos, action, detail in json.loads(ev):
                if pos > stop[i]:  # an earlier set filter dropped the row before this filter saw it
                    continue
                f = self.filters[pos]
                rec.count(f.name, src.name, verbs[action], 1)
                rec.detail(f.name, detail)
                if rec.wants_example(f.name, verbs[action], src.name):
                    wanted.append((f.name, verbs[action], i, detail))
                    rec.reserve(f.name, verbs[action], src.name)
        if wanted:
            rows = cur.select([i for _, _, i, _ in wanted])
            for (name, action, _, detail), row in zip(wanted, rows, strict=True):
                rec.example(name, action, src.name, row["row"], detail, snippet(row["messages"]))

    def _total(self, kept_train: dict[str, int]) -> int:
        if isinstance(self.num_samples, int):
            return self.num_samples
        if isinstance(self.num_samples, str):
            w = {s.name: s.weight for s in self.sources}
            share = w[self.num_samples] / sum(w.values())
            if share == 0:
                raise ValueError(f"data.num_samples={self.num_samples!r} names a source with weight 0")
            return max(1, round(kept_train[self.num_samples] / share))
        return sum(kept_train.values())

    def setup(self, stage: str | None = None) -> None:
        """Prepare the train mixture, the per-source validation sets, the audit and the manifest (once)."""
        if self.train_set is not None:
            return
        if self.streaming:
            self._setup_streaming()
            return
        raws = [self._load(s) for s in self.sources]
        prepared = self._split(self._prepare(raws))
        self._mix(prepared)
        self._plan_batches()

    def _load(self, src: Source) -> Dataset:
        """Load a source; with on_bad_row=skip, a JSONL file's malformed lines are left out and counted."""
        try:
            return load_source(src.path, split=src.split, subset=src.subset)
        except SourceError:
            if self.on_bad_row != "skip" or not src.path.endswith(".jsonl"):
                raise
            raw, bad = load_jsonl_skipping(src.path)
            self._bad_lines[src.name] = bad
            log.warning(
                "%s: skipped %d malformed JSON line(s), first: %s", self._where(src), len(bad), bad[0]
            )
            return raw

    def _split(self, kept: list[Dataset], head: bool = False) -> list[tuple[Dataset, Dataset]]:
        """Hold out val_fraction of each source (a seeded random subset; the first rows when `head`)."""
        out = []
        for i, (src, ds) in enumerate(zip(self.sources, kept, strict=True)):
            ds = ds.add_column("source", [i] * len(ds))
            n_val = min(self.max_val_samples, int(round(len(ds) * self.val_fraction))) if len(ds) > 1 else 0
            order = np.arange(len(ds)) if head else np.random.default_rng([self.seed, i]).permutation(len(ds))
            val, train = ds.select(order[:n_val]), ds.select(np.sort(order[n_val:]))
            self.stats |= {
                f"data/{src.name}/rows_val": len(val),
                f"data/{src.name}/rows_train_available": len(train),
            }
            out.append((train, val))
        return out

    def _mix(self, prepared: list[tuple[Dataset, Dataset]]) -> None:
        available = {s.name: len(train) for s, (train, _) in zip(self.sources, prepared, strict=True)}
        total = self._total(available)
        counts = mix_counts({s.name: s.weight for s in self.sources}, total)
        rng = np.random.default_rng(self.seed)
        parts, draws = [], {}
        for src, (train, _) in zip(self.sources, prepared, strict=True):
            idx = draw_indices(len(train), counts[src.name], rng)
            draws[src.name] = idx
            parts.append(train.select_columns(MIX_COLUMNS).select(idx))
            self.stats[f"data/{src.name}/rows_in_mix"] = counts[src.name]
            self.stats[f"data/{src.name}/share"] = counts[src.name] / total
        self.train_set = concatenate_datasets(parts).shuffle(seed=self.seed)
        vals = [val.select_columns(MIX_COLUMNS) for _, val in prepared if len(val)]
        self.val_set = concatenate_datasets(vals) if vals else None
        self.stats["data/rows_train"] = len(self.train_set)
        self.stats["data/rows_val"] = len(self.val_set) if self.val_set else 0
        table = mixture_table(self.stats, self.source_names)
        log.info("training mixture (rows):\n%s", format_table(table))
        for warning in mixture_warnings(table, self.max_repeats):
            log.warning(warning)
        self.manifest = au.build_manifest(self, prepared, counts, available)
        self.audit = au.build_audit(self, self._recorder, prepared, draws, self.manifest)

    def _plan_batches(self) -> None:
        """Lengths, packed rows (pack_scope=dataset) and the share of real tokens in training batches.

        `data/packing_efficiency` is real tokens / (rows x row width) over one epoch: of the packed rows
        (x pack_length) with pack_scope=dataset, otherwise of the batches of one seeded shuffle (rows
        padded as the collator pads them), so it is also reported without packing.
        """
        import pyarrow.compute as pc

        arrow = self.train_set.select_columns(["input_ids"]).with_format("arrow")
        self.lengths = [
            n for t in arrow.iter(batch_size=10_000) for n in pc.list_value_length(t["input_ids"]).to_pylist()
        ]
        if self.packing and self.pack_scope == "dataset":
            self.bins = pk.best_fit_decreasing(self.lengths, self.pack_length)
            efficiency = sum(self.lengths) / (len(self.bins) * self.pack_length)
            self.stats["data/packed_rows"] = len(self.bins)
        else:
            efficiency = self._epoch_efficiency()
        self.stats["data/packing_efficiency"] = efficiency
        mode = f"packed ({self.pack_scope}, {self.pack_length} tokens a row)" if self.packing else "padded"
        log.info("training batches %s: %.1f%% real tokens", mode, 100 * efficiency)

    def _epoch_efficiency(self) -> float:
        """Real / batch tokens over one seeded epoch of the padded or batch-packed training batches."""
        bs, lengths = self.batch_size, self.lengths
        if self.group_by_length and not self.packing:
            order = pk.length_grouped_order(lengths, bs, self.seed)
        else:
            order = np.random.default_rng(self.seed).permutation(len(lengths)).tolist()
        real = slots = 0
        for start in range(0, len(order), bs):
            lens = [lengths[i] for i in order[start : start + bs]]
            if self.packing:
                rows = [sum(lens[i] for i in r) for r in pk.balanced_rows(lens, self.pack_length)]
            else:
                rows = lens
            real += sum(rows)
            slots += len(rows) * pk.padded_width(max(rows), self.pad_to_multiple_of)
        return real / max(1, slots)

    # ------------------------------------------------------------------------------------ streaming
    def _setup_streaming(self) -> None:
        """Lazy sources interleaved by weight; the audit and validation rows come from each source's head.

        `train_set` is the one-process stream; `train_stream` splits it by rank and DataLoader worker.
        """
        heads, streams = [], []
        for src in self.sources:
            stream = load_source(src.path, split=src.split, subset=src.subset, streaming=True)
            try:
                head = list(stream.take(self.streaming_audit_rows))
            except Exception as e:  # malformed lines surface while reading
                raise RowError(f"{self._where(src)}: cannot read: {e}") from e
            heads.append(Dataset.from_list(head) if head else Dataset.from_dict({"_": []}))
            streams.append(stream)
        if isinstance(self.num_samples, str):
            raise ValueError("data.num_samples=<source name> needs the sources' sizes; not with streaming")
        prepared = self._split(self._prepare(heads), head=True)
        val_shas = [_column(val, "sha") for _, val in prepared]
        w = {s.name: s.weight for s in self.sources}
        self._mix(prepared)  # audit, manifest and val set from the heads
        total_w = sum(w.values())
        trains, probs = [], []
        for i, (src, stream) in enumerate(zip(self.sources, streams, strict=True)):
            if w[src.name] <= 0:
                continue
            formatted = self._format(src, stream).filter(lambda e: not e, input_columns="error")
            curated = self._curate(formatted).filter(
                StreamSetFilter(self.filters, src.name), with_indices=True
            )
            encoded = self._encode(curated.select_columns(["messages", "row", "sha"]))
            encoded = encoded.filter(  # the head's val rows left out by content: right in any shard
                lambda nt, ntr, st, sha, val=set(val_shas[i]): (
                    self._token_steps(nt, ntr, st)[1] != "dropped" and sha not in val
                ),
                input_columns=["n_tokens", "n_trained", "status", "sha"],
            )
            encoded = encoded.map(lambda r, i=i: {"source": i})
            trains.append(encoded.select_columns(["input_ids", "labels", "source"]))
            probs.append(w[src.name] / total_w)
        mixed = interleave_datasets(
            trains, probabilities=probs, seed=self.seed, stopping_strategy="all_exhausted"
        ).shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        if isinstance(self.num_samples, int):
            mixed = mixed.take(self.num_samples)
        self.train_set = mixed
        self.stats.pop("data/rows_train", None)  # unknown until read

    # ----------------------------------------------------------------------------------- loaders
    def train_stream(self, rank: int = 0, world_size: int = 1) -> IterableDataset:
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
        if not isinstance(self.train_set, IterableDataset):
            raise TypeError("train_stream: the training data is not a stream (data.streaming=false)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        return self.train_set if world_size == 1 else split_dataset_by_node(self.train_set, rank, world_size)

    def accumulation(self) -> int:
        """Micro-batches an optimizer step (the trainer's `accumulate_grad_batches`; 1 without a trainer)."""
        return int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)

    def train_dataloader(self) -> DataLoader:
        """The training batches, each with the trained tokens of the step's batches ahead
        (`itune.data.step_tokens`), so the loss is the mean over a step's tokens; a stream is split by rank
        (`train_stream`, rank and world size from the trainer), map-style data by Lightning's sampler."""
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
