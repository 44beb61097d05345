"""Load one data source (local JSON/JSONL/CSV/Parquet file or a hub dataset id) with `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, load_dataset

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class SourceError(ValueError):
    """A data source cannot be read; the message names the file and line."""


def _json_problem(path: Path) -> str | None:
    """First syntax or encoding problem of a JSON/JSONL file as 'line N: ...', or None."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return f"line {line}: bytes that are not UTF-8 at offset {e.start} (save the file as UTF-8)"
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return f"line {e.lineno}: {e.msg}"
        return None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {n}: {e.msg} (column {e.colno})"
            if not isinstance(row, dict):
                return f"line {n}: expected a JSON object per line, got {type(row).__name__}"
    return None


def load_source(path: str, split: str = "train", subset: str | None = None) -> Dataset:
    """Load a local file by extension, or a hub dataset when `path` is not a local file.

    Args:
        path: a .json/.jsonl/.csv/.parquet file, or a hub dataset id such as `tatsu-lab/alpaca`.
        split: split of a hub dataset.
        subset: configuration name of a hub dataset.
    Raises:
        SourceError: missing file, unsupported extension, or a malformed line (named).
    """
    p = Path(path).expanduser()
    if p.suffix in BUILDERS or p.is_absolute() or path.startswith("."):
        if not p.is_file():
            raise SourceError(f"data file {p} not found")
        if p.suffix not in BUILDERS:
            raise SourceError(f"data file {p}: unsupported extension; valid: {', '.join(BUILDERS)}")
        try:
            return load_dataset(BUILDERS[p.suffix], data_files=str(p), split="train")
        except Exception as e:
            problem = _json_problem(p) if BUILDERS[p.suffix] == "json" else None
            raise SourceError(f"{p}: {problem or e}") from e
    return load_dataset(path, name=subset, split=split)
