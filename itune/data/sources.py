"""A data source: its spec (`Source`, a node under `data.sources`) and loading it (local JSON/JSONL/CSV/
Parquet file or a hub dataset id) with `datasets`."""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset, load_dataset

from itune.data.formats import get_format

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# datasets logs its own JSON parse error before raising; load_source re-raises it naming file and line.
logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A data source cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One named data source of a mix (a node under `data.sources`)."""

    name: str
    path: str
    format: str = "alpaca"  # a built-in format name or the dotted path of a row -> messages callable
    weight: float = 1.0
    fields: dict[str, str] | None = None  # {format field: column name} for other column names
    split: str = "train"  # hub datasets only
    subset: str | None = None  # hub datasets only

    @property
    def where(self) -> str:
        """How messages name the source: its config key and path."""
        return f"data.sources.{self.name} ({self.path})"


def make_source(name: str, node: dict[str, Any]) -> Source:
    """Build a Source from its config node, naming the key that is wrong."""
    valid = [f.name for f in dataclasses.fields(Source) if f.name != "name"]
    unknown = sorted(set(node) - set(valid))
    if unknown:
        raise ValueError(f"data.sources.{name}: unknown key(s) {unknown}; valid keys: {valid}")
    if not node.get("path"):
        raise ValueError(f"data.sources.{name}.path is not set (a local file or a hub dataset id)")
    try:
        get_format(node.get("format", "alpaca"))
    except ValueError as e:
        raise ValueError(f"data.sources.{name}.format: {e}") from None
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


def _utf8_problem(path: Path, chunk: int = 1 << 24) -> str | None:
    """'line N: ...' at the first byte that is not UTF-8, or None (streams the file)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, offset = 1, 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                lines += block[: e.start].count(b"\n")
                return f"line {lines}: bytes that are not UTF-8 at offset {bad} (save the file as UTF-8)"
            lines += block.count(b"\n")
            offset += len(block)
    return None


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, object, None) for each non-empty line, or (line number, None, problem) when the line
    is not a JSON object."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n"))  # so the column counts on this line
        except json.JSONDecodeError as e:
            yield n, None, f"line {n}: {e.msg} (column {e.colno})"
            continue
        if isinstance(row, dict):
            yield n, row, None
        else:
            yield n, None, f"line {n}: expected a JSON object per line, got {type(row).__name__}"


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """`json_lines` of a UTF-8 file."""
    with path.open(encoding="utf-8") as f:
        yield from json_lines(f)


def read_jsonl(path: str | Path, what: str = "data file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per line of a JSONL file; FileNotFoundError / SourceError naming file and line.

    Args:
        path: the JSONL file; `-` reads standard input.
        what: what the file is, for messages ("prompt file", "benchmark file").
    """
    if str(path) == "-":
        p, rows = Path("-"), json_lines(sys.stdin)
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} not found")
        if problem := _utf8_problem(p):
            raise SourceError(f"{p}: {problem}")
        rows = jsonl_rows(p)
    for n, row, problem in rows:
        if problem:
            raise SourceError(f"{p}, {problem}")
        yield n, row


def _json_problem(path: Path) -> str | None:
    """First syntax problem of a JSON/JSONL file as 'line N: ...', or None."""
    if path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return f"line {e.lineno}: {e.msg}"
        return None
    return next((problem for _, _, problem in jsonl_rows(path) if problem), None)


def load_source(
    path: str, split: str = "train", subset: str | None = None, streaming: bool = False
) -> Dataset | IterableDataset:
    """Load a local file by extension, or a hub dataset when `path` is not a local file.

    Args:
        path: a .json/.jsonl/.csv/.parquet file, or a hub dataset id such as `tatsu-lab/alpaca`.
        split: split of a hub dataset.
        subset: configuration name of a hub dataset.
        streaming: return an IterableDataset that reads rows lazily (for data larger than memory).
    Raises:
        SourceError: missing file, unsupported extension, or a malformed line (named).
    """
    p = Path(path).expanduser()
    if p.suffix in BUILDERS or p.is_absolute() or path.startswith("."):
        if not p.is_file():
            raise SourceError(f"data file {p} not found")
        if p.suffix not in BUILDERS:
            raise SourceError(f"data file {p}: unsupported extension; valid: {', '.join(BUILDERS)}")
        if p.stat().st_size == 0 or not p.read_bytes()[:4096].strip():
            raise SourceError(f"data file {p} is empty; give a file with at least one row")
        if BUILDERS[p.suffix] in ("json", "csv") and (problem := _utf8_problem(p)):
            raise SourceError(f"{p}: {problem}")
        try:
            return load_dataset(BUILDERS[p.suffix], data_files=str(p), split="train", streaming=streaming)
        except Exception as e:
            problem = _json_problem(p) if BUILDERS[p.suffix] == "json" else None
            raise SourceError(f"{p}: {problem or e}") from e
    return load_dataset(path, name=subset, split=split, streaming=streaming)


def load_jsonl_skipping(path: str) -> tuple[Dataset, list[str]]:
    """A JSONL file without its malformed lines, and 'line N: problem' for each line left out.

    For `data.on_bad_row=skip`: the rows keep their order; non-UTF-8 bytes are still an error.
    """
    p = Path(path).expanduser()
    if problem := _utf8_problem(p):
        raise SourceError(f"{p}: {problem}")
    rows, bad = [], []
    for _, row, problem in jsonl_rows(p):
        if problem:
            bad.append(problem)
        else:
            rows.append(row)
    return Dataset.from_list(rows), bad


def load_rows(src: Source, on_bad_row: str) -> tuple[Dataset, list[str]]:
    """A source's rows, and the malformed JSON lines left out (on_bad_row=skip, JSONL files only)."""
    try:
        return load_source(src.path, split=src.split, subset=src.subset), []
    except SourceError:
        if on_bad_row != "skip" or not src.path.endswith(".jsonl"):
            raise
        raw, bad = load_jsonl_skipping(src.path)
        if not bad:  # not a malformed line (an empty file, say): nothing to skip
            raise
        log.warning("%s: skipped %d malformed JSON line(s), first: %s", src.where, len(bad), bad[0])
        return raw, bad
