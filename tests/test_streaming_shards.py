"""A stream under several ranks: every rank reads its own shard, the shards are disjoint and together
they are the one-process stream; DataLoader workers split a rank's shard again."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import load_dataset

from itune.data import datamodule as dmod
from itune.data.curate import ExactDedup
from itune.data.datamodule import InstructDataModule
from itune.data.templates import IGNORE_INDEX
from tests.conftest import write_jsonl
from tests.test_templates import build


def rows(n: int, prefix: str) -> list[dict]:
    return [
        {"instruction": f"{prefix} q{i}?", "input": "", "output": f"{prefix} answer {i}"} for i in range(n)
    ]


def streaming(tokenizer, sources: dict, **kw) -> InstructDataModule:
    settings = {
        "streaming": True,
        "streaming_audit_rows": 8,
        "val_fraction": 0.25,
        "batch_size": 3,
        "packing": False,
    }
    dm = InstructDataModule(
        sources=sources, tokenizer=tokenizer, template=build("chatml", tokenizer), **settings | kw
    )
    dm.setup("fit")
    return dm


def answers(stream, tokenizer) -> list[str]:
    """The trained text of every example of a stream (or of a list of batches), in order."""
    if isinstance(stream, list):  # batches
        pairs = [(ids, lab) for b in stream for ids, lab in zip(b["input_ids"], b["labels"], strict=True)]
        return [tokenizer.decode(ids[lab != IGNORE_INDEX]) for ids, lab in pairs]
    trained = (
        [i for i, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != IGNORE_INDEX] for r in stream
    )
    return [tokenizer.decode(ids) for ids in trained]


def val_answers(dm: InstructDataModule, tokenizer) -> set[str]:
    return set(answers(dm.val_set, tokenizer))


def test_two_ranks_keep_alternate_examples_of_a_one_file_stream(tmp_path, tokenizer):
    """One file a source: every rank reads the stream and keeps 1 example out of 2; the two ranks'
    examples interleave back into the one-process stream (held-out rows in none)."""
    a_rows = rows(40, "a")
    a_rows[20] = a_rows[19]  # a duplicate, dropped on every pass (the dedup index restarts with each)
    a = write_jsonl(tmp_path / "a.jsonl", a_rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows(12, "b"))
    dm = streaming(
        tokenizer,
        {"a": {"path": str(a), "weight": 0.7}, "b": {"path": str(b), "weight": 0.3}},
        num_samples=31,
        curate={"dedup": ExactDedup()},
    )
    full = answers(dm.train_stream(), tokenizer)
    assert len(full) == 31 and {s[0] for s in full} == {"a", "b"}
    ranks = [answers(dm.train_stream(r, 2), tokenizer) for r in (0, 1)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]  # disjoint positions, union = the stream
    assert not val_answers(dm, tokenizer) & set(full)
    assert answers(dm.train_stream(), tokenizer) == full  # a second pass (epoch) is the same stream
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)  # the loader takes the rank from the trainer
    assert answers(list(dm.train_dataloader()), tokenizer) == ranks[1]
    with pytest.raises(ValueError, match="rank=2"):
        dm.train_stream(2, 2)


@pytest.fixture
def four_files(tmp_path, monkeypatch) -> str:
    """A source of 4 JSONL files (4 shards): `path` is their glob."""
    for f in range(4):
        write_jsonl(tmp_path / f"part{f}.jsonl", rows(9, f"f{f}"))

    def load_source(path: str, split: str = "train", subset: str | None = None, streaming: bool = False):
        return load_dataset(
            "json",
            data_files=sorted(map(str, Path(path).parent.glob("part*.jsonl"))),
            split="train",
            streaming=streaming,
        )

    monkeypatch.setattr(dmod, "load_source", load_source)
    return str(tmp_path / "part*.jsonl")


def files_of(answers_: list[str]) -> set[int]:
    return {int(re.match(r"f(\d)", s).group(1)) for s in answers_}


def test_two_ranks_read_only_their_own_files(tokenizer, four_files):
    """4 files, 2 ranks: each rank reads 2 of the files; together they are the one-process stream,
    without the held-out rows (taken from the head of the first file)."""
    dm = streaming(tokenizer, {"a": {"path": four_files}})
    full = answers(dm.train_stream(), tokenizer)
    held_out = val_answers(dm, tokenizer)
    assert len(full) == 4 * 9 - len(held_out) and held_out and not held_out & set(full)
    ranks = [answers(dm.train_stream(r, 2), tokenizer) for r in (0, 1)]
    assert Counter(ranks[0]) + Counter(ranks[1]) == Counter(full)
    assert not set(ranks[0]) & set(ranks[1])
    assert [len(files_of(r)) for r in ranks] == [2, 2] and not files_of(ranks[0]) & files_of(ranks[1])


def test_dataloader_workers_split_a_rank_s_shard(tokenizer, four_files):
    """2 workers on rank 0's 2 files: each worker reads one; the loader yields the rank's stream once."""
    dm = streaming(tokenizer, {"a": {"path": four_files}}, num_workers=2)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2)
    rank0 = answers(dm.train_stream(0, 2), tokenizer)
    batches = list(dm.train_dataloader())
    assert Counter(answers(batches, tokenizer)) == Counter(rank0)
    per_batch = [files_of(answers([b], tokenizer)) for b in batches]
    assert all(len(files) == 1 for files in per_batch)  # a worker's batches come from its own file
    assert len(set().union(*per_batch)) == 2
