"""Sources → mixture: counted drops, clear errors naming file and row, batches masked right."""

from __future__ import annotations

import json

import pytest
import torch

from itune.data.datamodule import InstructDataModule
from itune.data.formats import RowError
from itune.data.sources import SourceError
from itune.data.templates import IGNORE_INDEX, RoleTemplate
from tests.conftest import write_jsonl
from tests.test_templates import build


@pytest.fixture
def chatml(tokenizer) -> RoleTemplate:
    return build("chatml", tokenizer)


def rows(n: int, prefix: str = "q") -> list[dict]:
    return [{"instruction": f"{prefix} {i}?", "input": "", "output": f"answer {i}"} for i in range(n)]


def datamodule(tokenizer, template, sources, **kw) -> InstructDataModule:
    padded = {"packing": False, "group_by_length": False}  # the batches these tests check are padded
    dm = InstructDataModule(sources=sources, tokenizer=tokenizer, template=template, **(padded | kw))
    dm.setup("fit")
    return dm


def test_mix_shares_split_and_batches(tmp_path, tokenizer, chatml):
    a = write_jsonl(tmp_path / "a.jsonl", rows(40, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", rows(10, "b"))
    sources = {"a": {"path": str(a), "weight": 0.5}, "b": {"path": str(b), "weight": 0.5}}
    dm = datamodule(tokenizer, chatml, sources, num_samples=60, val_fraction=0.1, batch_size=4)
    assert dm.stats["data/a/rows_val"] == 4 and dm.stats["data/b/rows_val"] == 1
    assert dm.stats["data/a/rows_in_mix"] == 30 and dm.stats["data/b/rows_in_mix"] == 30  # b upsampled
    assert len(dm.train_set) == 60 and len(dm.val_set) == 5
    assert sorted(set(dm.train_set["source"])) == [0, 1]
    again = datamodule(tokenizer, chatml, sources, num_samples=60, val_fraction=0.1)
    assert again.train_set["input_ids"] == dm.train_set["input_ids"]  # same seed, same mixture

    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[1] % 8 == 0
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    # pad == eos here, yet every example's end-of-turn token is trained
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for labels in batch["labels"]:
        assert (labels == eot).any()


def test_bad_row_names_file_and_row(tmp_path, tokenizer, chatml):
    data = rows(5)
    data[3] = {"instruction": "q", "input": "", "answer": "oops"}
    path = write_jsonl(tmp_path / "bad.jsonl", data)
    with pytest.raises(RowError) as e:
        datamodule(tokenizer, chatml, {"mine": {"path": str(path)}})
    msg = str(e.value)
    assert "data.sources.mine" in msg and str(path) in msg and "row 3" in msg and "line 4" in msg
    assert "missing field 'output'" in msg and "expects fields" in msg


def test_skip_policy_counts_bad_rows(tmp_path, tokenizer, chatml):
    data = rows(6)
    data[2]["output"] = ""
    path = write_jsonl(tmp_path / "bad.jsonl", data)
    dm = datamodule(tokenizer, chatml, {"mine": {"path": str(path)}}, on_bad_row="skip", val_fraction=0)
    assert dm.stats["data/mine/rows_malformed_skipped"] == 1
    assert dm.stats["data/mine/rows_read"] == 6 and len(dm.train_set) == 5


def test_malformed_json_line_is_named(tmp_path, tokenizer, chatml):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(rows(1)[0]) + "\n" + '{"instruction": "x", "output": \n')
    with pytest.raises(SourceError, match=r"broken.jsonl: line 2: "):
        datamodule(tokenizer, chatml, {"mine": {"path": str(path)}})


def test_non_utf8_is_named(tmp_path, tokenizer, chatml):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(rows(1)[0]).encode() + b'\n{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(SourceError, match="line 2: bytes that are not UTF-8"):
        datamodule(tokenizer, chatml, {"mine": {"path": str(path)}})


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ({"path": "/nope/missing.jsonl"}, SourceError, "not found"),
        ({"path": "/tmp/x.txt"}, SourceError, "not found"),
        ({"path": "FILE", "format": "sharegpt"}, ValueError, "valid formats"),
        ({"path": "FILE", "wieght": 1}, ValueError, r"unknown key\(s\) \['wieght'\]"),
        ({"path": "FILE", "weight": -1}, ValueError, ">= 0"),
    ],
)
def test_bad_source_config(tmp_path, tokenizer, chatml, source, error, message):
    path = write_jsonl(tmp_path / "ok.jsonl", rows(3))
    source = {k: (str(path) if v == "FILE" else v) for k, v in source.items()}
    with pytest.raises(error, match=message):
        datamodule(tokenizer, chatml, {"mine": source})


def test_source_without_usable_rows_is_an_error(tmp_path, tokenizer, chatml):
    path = write_jsonl(tmp_path / "long.jsonl", rows(3))
    with pytest.raises(ValueError, match=r"yields no usable rows: 3 read.*3 longer than max_length=8"):
        datamodule(tokenizer, chatml, {"mine": {"path": str(path)}}, max_length=8)


def test_overlength_drop_or_truncate_is_counted(tmp_path, tokenizer, chatml):
    data = rows(4) + [{"instruction": "long?", "input": "", "output": "x" * 200}]
    path = write_jsonl(tmp_path / "mixed.jsonl", data)
    dropped = datamodule(tokenizer, chatml, {"m": {"path": str(path)}}, max_length=80, val_fraction=0)
    assert dropped.stats["data/m/rows_too_long_dropped"] == 1 and len(dropped.train_set) == 4
    cut = datamodule(
        tokenizer, chatml, {"m": {"path": str(path)}}, max_length=80, val_fraction=0, overlength="truncate"
    )
    assert cut.stats["data/m/rows_truncated"] == 1 and len(cut.train_set) == 5
    assert max(len(x) for x in cut.train_set["input_ids"]) == 80


def test_csv_and_parquet_sources(tmp_path, tokenizer, chatml):
    import pandas as pd

    frame = pd.DataFrame(rows(6))
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        dm = datamodule(tokenizer, chatml, {"m": {"path": str(tmp_path / name)}}, val_fraction=0)
        assert len(dm.train_set) == 6
        assert torch.tensor(dm.train_set[0]["labels"]).ne(IGNORE_INDEX).any()


def test_streaming_interleaves_by_weight_and_filters_per_stream(tmp_path, tokenizer, chatml):
    from datasets import IterableDataset

    from itune.data.curate import PII, ExactDedup

    a_rows = rows(40, "a")
    a_rows[5] = dict(a_rows[4])  # a duplicate inside the stream
    a_rows[7]["output"] = "mail x@y.org"
    a = write_jsonl(tmp_path / "a.jsonl", a_rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows(10, "b"))
    sources = {"a": {"path": str(a), "weight": 0.5}, "b": {"path": str(b), "weight": 0.5}}
    curate = {"pii": PII(), "dedup": ExactDedup()}
    settings = {"curate": curate, "streaming": True, "streaming_audit_rows": 20, "num_samples": 30}
    dm = datamodule(tokenizer, chatml, sources, val_fraction=0.1, **settings)
    assert isinstance(dm.train_set, IterableDataset)
    assert dm.audit["mode"] == "streaming" and "first 20 rows" in dm.manifest["note"]
    assert dm.stats["data/a/rows_val"] == 2 and dm.stats["data/b/rows_val"] == 1  # the heads' first kept rows
    assert len(dm.val_set) == 3
    batches = list(dm.train_dataloader())
    seen = [
        tokenizer.decode(ids[lab != IGNORE_INDEX])
        for bt in batches
        for ids, lab in zip(bt["input_ids"], bt["labels"], strict=True)
    ]
    assert len(seen) == 30
    assert {int(s) for bt in batches for s in bt["source"]} == {0, 1}
    assert not any("x@y.org" in s for s in seen)
    assert all(s.endswith("<|im_end|>") for s in seen)
    again = [
        tokenizer.decode(ids)
        for bt in datamodule(tokenizer, chatml, sources, val_fraction=0.1, **settings).train_dataloader()
        for ids in bt["input_ids"]
    ]
    assert again == [tokenizer.decode(ids) for bt in batches for ids in bt["input_ids"]]  # same seed


def test_empty_and_wrong_typed_fields_are_named(tmp_path, tokenizer, chatml):
    for bad, message in [
        ({"output": ""}, "field 'output' is empty"),
        ({"output": 3}, "must be a string, got int"),
    ]:
        data = rows(3)
        data[1] |= bad
        path = write_jsonl(tmp_path / "bad.jsonl", data)
        with pytest.raises(RowError, match=f"row 1 .*{message}"):
            datamodule(tokenizer, chatml, {"mine": {"path": str(path)}})
