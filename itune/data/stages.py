"""The per-row stages as `datasets.map` functions, shared by the map-style pipeline and the stream:
raw row → messages (format), curate filters, messages → tokens + loss mask (template), token checks.

Each `*_rows` function applies its stage to a Dataset or an IterableDataset and returns the new one.
A Dataset's step is cached by `datasets` under a fingerprint of the step's inputs and of the data
package's code: datasets hashes importable functions by name only, so a changed format or filter would
otherwise reuse a stale cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from itune.data.curate import Filter, curate_batch
from itune.data.formats import RowError, format_version, to_messages
from itune.data.messages import IGNORE_INDEX
from itune.data.sources import Source, row_place
from itune.data.templates import Template

_CODE = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py")))
).hexdigest()
ENCODE_BATCH = 500  # rows per tokenizer call


def fingerprint(*parts: Any) -> str:
    """A datasets cache fingerprint from JSON-able parts (and the data package's code)."""
    return hashlib.sha256(json.dumps([_CODE, *parts], default=str).encode()).hexdigest()[:32]


def column(ds: Dataset, name: str) -> list[Any]:
    """One column as a Python list (fast, unlike iterating `ds[name]`)."""
    return ds.select_columns([name]).to_dict()[name] if len(ds) else []


def token_lengths(ds: Dataset) -> list[int]:
    """The length of every row's `input_ids` (read from Arrow, without decoding the lists)."""
    import pyarrow.compute as pc

    arrow = ds.select_columns(["input_ids"]).with_format("arrow")
    return [
        n for t in arrow.iter(batch_size=10_000) for n in pc.list_value_length(t["input_ids"]).to_pylist()
    ]


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
    """datasets.map (batched) function: messages → input_ids, labels and counts (one tokenizer call).

    `n_tokens` is the full example's length, `n_trained` the trained tokens of what is kept; `status` is
    ok, truncated (cut to max_length with overlength=truncate), too_long (overlength=drop; ids left
    empty) or no_trained (no trained token left); `n_eot` counts trained end-of-turn tokens of what is kept.
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


def format_rows(src: Source, raw: Dataset | IterableDataset, on_bad_row: str) -> Dataset | IterableDataset:
    """Every raw row of a source → {messages, error, row} (`format_row`)."""
    kwargs = {}
    if isinstance(raw, Dataset):
        parts = (raw._fingerprint, "format", format_version(src.format), src.fields, src.name, on_bad_row)
        kwargs = {"desc": f"format {src.name}", "new_fingerprint": fingerprint(*parts)}
    return raw.map(
        format_row,
        with_indices=True,
        remove_columns=raw.column_names,
        fn_kwargs={
            "format": src.format,
            "fields": src.fields,
            "where": src.where,
            "skip_bad": on_bad_row == "skip",
            "path": src.path,
        },
        **kwargs,
    )


def curate_rows(formatted: Dataset | IterableDataset, filters: Sequence[Filter]) -> Dataset | IterableDataset:
    """Run the curate filters on well-formed rows (`curate_batch`: drop_at, events, sha, set keys)."""
    kwargs: dict[str, Any] = {"remove_columns": ["error"]}
    if isinstance(formatted, Dataset):
        fp = fingerprint(formatted._fingerprint, "curate", [f.fingerprint() for f in filters])
        kwargs |= {"new_fingerprint": fp, "desc": "curate"}
    return formatted.map(curate_batch, batched=True, batch_size=500, fn_kwargs={"filters": filters}, **kwargs)


def encode_rows(
    curated: Dataset | IterableDataset, template: Template, tokenizer: Any, max_length: int, overlength: str
) -> Dataset | IterableDataset:
    """Messages → tokens, labels and counts (`encode_batch`, one tokenizer call per batch of rows)."""
    kwargs = {}
    if isinstance(curated, Dataset):
        name, size = getattr(tokenizer, "name_or_path", ""), len(tokenizer)
        parts = (template.fingerprint, template.spec(), name, size, max_length, overlength)
        kwargs = {"desc": "tokenize", "new_fingerprint": fingerprint(curated._fingerprint, "encode", *parts)}
    return curated.map(
        encode_batch,
        batched=True,
        batch_size=ENCODE_BATCH,
        fn_kwargs={"template": template, "max_length": max_length, "overlength": overlength},
        **kwargs,
    )


def token_step(
    filters: Sequence[Filter], max_length: int, n_tokens: int, n_trained: int, status: str
) -> tuple[str | None, str, str]:
    """(step that drops/changes the row or None, action, detail) for the token-stage checks."""
    for f in filters:
        if f.stage == "tokens":
            action, detail = f.check(n_tokens, n_trained)
            if action == "drop":
                return f.name, "dropped", detail
    if status == "too_long":
        return "max_length", "dropped", f"tokens {n_tokens} > max_length {max_length}"
    if status == "no_trained":
        return "no_trained", "dropped", "no trained token (no assistant content left)"
    if status == "truncated":
        return "max_length", "truncated", f"tokens {n_tokens} cut to max_length {max_length}"
    return None, "", ""
