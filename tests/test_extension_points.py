"""Extension points, used from outside the package: a curation filter, an eval suite, a prompt template and
a loss term, each ONE class (tests/extensions/components.py) plus ONE YAML option (tests/extensions/conf/),
added with `hydra.searchpath` and picked like a built-in option; nothing in itune is edited.

One training run of the tiny model uses all four (`curate=drop_word template=tags regularizer=l1_adapter
eval=word_count`); a second, the same with `regularizer.weight=0`, is the reference for the loss term;
`itune-eval`'s `run_eval` then evaluates the first run with the user's suite.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module

from itune.config_schema import check_config
from itune.data.templates import IGNORE_INDEX
from itune.train import train
from tests.extensions import CONF_DIR
from tests.extensions.components import DropWord, L1Adapter, TagTemplate

pytestmark = pytest.mark.slow

SEARCHPATH = f"hydra.searchpath=[file://{CONF_DIR}]"
WORDS = ["red", "blue", "green", "gold", "pink", "gray"]
ROWS = [
    {"instruction": f"Name thing {i} that is {w}.", "input": "", "output": f"{w} thing {i}"}
    for i in range(4)
    for w in WORDS
] + [{"instruction": "Name a golden thing.", "input": "", "output": "golden hour"}]  # not the word `gold`
DROPPED = [r for r in ROWS if re.search(r"\bgold\b", r["instruction"] + r["output"], re.IGNORECASE)]
PROMPTS = ["one two", "one two three four", "a b c d e f"]  # conf/eval/word_count.yaml
L1_WEIGHT = 0.001  # conf/regularizer/l1_adapter.yaml


def compose_root(root: str, *overrides: str):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        return compose(root, overrides=[SEARCHPATH, *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """The run with every extension, and the same run with the loss term's weight at 0."""
    base = tmp_path_factory.mktemp("extensions")
    data = base / "alpaca.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    common = [
        "model=tiny",
        "template=tags",
        "curate=drop_word",
        "regularizer=l1_adapter",
        "logger=csv",
        "data=alpaca",
        f"data.sources.alpaca.path={data}",
        "data.val_fraction=0.25",
        "data.batch_size=4",
        "trainer=debug",
        "optimizer.lr=2e-2",
        "scheduler=constant",
        "scheduler.num_warmup_steps=0",
        "peft.lora_dropout=0",
    ]
    cfg = compose_root(
        "train", f"run_dir={base / 'run'}", *common, "eval=word_count", f"eval.cache_dir={base}/c"
    )
    check_config(cfg)  # what a sweep job checks first: the user's targets and keys pass itune's schema
    metrics, objects = train(cfg)
    zero_cfg = compose_root(
        "train", f"run_dir={base / 'zero'}", *common, "eval=none", "regularizer.weight=0", "save_model=false"
    )
    zero_metrics, zero_objects = train(zero_cfg)
    return SimpleNamespace(
        base=base,
        cfg=cfg,
        run_dir=Path(cfg.run_dir),
        metrics=metrics,
        objects=objects,
        zero_dir=Path(zero_cfg.run_dir),
        zero_metrics=zero_metrics,
        zero_objects=zero_objects,
    )


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def test_options_are_picked_from_the_searchpath(runs):
    cfg = runs.cfg
    assert cfg.curate.filters.drop_word._target_ == "tests.extensions.components.DropWord"
    assert cfg.eval.suites.words._target_ == "tests.extensions.components.WordCountSuite"
    assert cfg.template._target_ == "tests.extensions.components.TagTemplate"
    assert cfg.regularizer._target_ == "tests.extensions.components.L1Adapter"
    assert cfg.eval.on_base and cfg.eval.stats.n_boot == 2000  # _base_eval's keys, included from itune.conf
    dm = runs.objects["datamodule"]
    assert [type(f) for f in dm.filters][:1] == [DropWord]
    assert isinstance(runs.objects["template"], TagTemplate)
    assert isinstance(runs.objects["module"].regularizer, L1Adapter)


def test_filter_drops_exactly_the_rows_with_the_word_and_the_audit_counts_them(runs):
    assert len(DROPPED) == 4
    audit = json.loads((runs.run_dir / "audit.json").read_text())
    (step,) = [s for s in audit["steps"] if s["name"] == "drop_word"]
    assert step["kind"] == "row" and step["target"] == "tests.extensions.components.DropWord"
    assert step["settings"] == {"word": "gold", "roles": None}
    assert step["counts"]["alpaca"] == {
        "in": len(ROWS),
        "dropped": 4,
        "redacted": 0,
        "flagged": 0,
        "truncated": 0,
    }
    assert step["details"] == {"gold x2": 4}  # the filter's own detail, counted per value
    rows = [i for i, r in enumerate(ROWS) if r in DROPPED]
    assert {e["row"] for e in step["examples"]["dropped"]} <= set(rows)  # a few examples, each a gold row
    src = audit["sources"]["alpaca"]
    assert src["rows_read"] == len(ROWS) and src["rows_kept"] == len(ROWS) - len(DROPPED)
    assert "| drop_word | row | alpaca | 25 | 4 | 0 | 0 | 0 |" in (runs.run_dir / "audit.md").read_text()

    dm, tok = runs.objects["datamodule"], runs.objects["tokenizer"]
    texts = [tok.decode(r["input_ids"]) for part in (dm.train_set, dm.val_set) for r in part]
    assert len(set(texts)) == len(ROWS) - len(DROPPED)  # every kept row, train or val, once
    assert not any(re.search(r"\bgold\b", t) for t in texts)
    assert any("golden hour" in t for t in texts)  # a whole word only


def test_suite_metric_is_reported_with_its_value(runs):
    template, m = runs.objects["template"], runs.metrics
    tokens = [len(template.encode_prompt([{"role": "user", "content": p}])) for p in PROMPTS]
    expected = {
        "eval/words/words": 4.0,  # (2 + 4 + 6) / 3
        "eval/words/prompt_tokens": sum(tokens) / 3,
        "eval/words/vocab_size": 320.0,
    }
    assert tokens[0] == len("[[USER]]\none two\n[[BOT]]\n")  # one byte, one token
    for key, value in expected.items():
        assert m[key] == pytest.approx(value) and m[f"base/{key}"] == pytest.approx(value)
    saved = json.loads((runs.run_dir / "metrics.json").read_text())
    assert saved["eval/words/words"] == 4.0

    report = json.loads((runs.run_dir / "forgetting.json").read_text())
    text = json.dumps(report)
    assert "eval/words/words" in text and "eval/words/prompt_tokens" in text
    assert "eval/words/words" in (runs.run_dir / "forgetting.md").read_text()
    items = [json.loads(line) for line in (runs.run_dir / "items_tuned.jsonl").read_text().splitlines()]
    assert sorted(r["words"] for r in items if r["suite"] == "words") == [2, 4, 6]
    assert list((runs.base / "c").glob("*.json"))  # the base results were cached


def test_suite_runs_under_itune_eval_on_the_run(runs):
    from itune.eval.evaluate import run_eval

    out = runs.base / "eval"
    cfg = compose_root(
        "eval", f"run={runs.run_dir}", "eval=word_count", f"run_dir={out}", f"eval.cache_dir={runs.base}/c"
    )
    metrics = run_eval(cfg)
    assert metrics["eval/words/words"] == 4.0
    assert metrics["eval/words/prompt_tokens"] == runs.metrics["eval/words/prompt_tokens"]
    assert json.loads((out / "eval_metrics.json").read_text())["eval/words/words"] == 4.0
    assert "eval/words/words" in (out / "forgetting.md").read_text()


def test_template_markers_are_in_the_training_tokens_and_only_the_answer_is_trained(runs):
    template, tok = runs.objects["template"], runs.objects["tokenizer"]
    eos = tok.eos_token
    one = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    enc = template.encode(one)
    assert tok.decode(enc["input_ids"]) == f"[[USER]]\nHi?\n[[BOT]]\nHello.{eos}\n"
    trained = [i for i, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != IGNORE_INDEX]
    assert tok.decode(trained) == f"Hello.{eos}"
    saved = json.loads((runs.run_dir / "template.json").read_text())
    assert saved["name"] == "tags" and saved["spec"]["kind"] == "tags"
    assert saved["fingerprint"] == template.fingerprint

    answers = {r["output"] + eos for r in ROWS}
    batches = 0
    for batch in runs.objects["datamodule"].train_dataloader():
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            text = tok.decode(ids)
            spans, span = [], []
            for i, label in zip(ids, labels, strict=True):
                if label != IGNORE_INDEX:
                    assert label == i  # trained tokens are labelled with themselves
                    span.append(i)
                elif span:
                    spans, span = [*spans, tok.decode(span)], []
            spans += [tok.decode(span)] if span else []
            assert "[[USER]]\n" in text and "[[BOT]]\n" in text
            assert spans and all(s in answers for s in spans), spans  # exactly assistant content + EOS
            assert len(spans) == text.count("[[BOT]]\n")  # one trained span per example, none elsewhere
        batches += 1
    assert batches > 0


def test_loss_term_is_logged_and_changes_training(runs):
    rows, zero = csv_rows(runs.run_dir), csv_rows(runs.zero_dir)
    assert len(rows) == len(zero) == 3
    for r in rows:
        value = float(r["train/l1_adapter"])
        assert value > 0
        assert float(r["train/loss"]) == pytest.approx(float(r["train/ce"]) + L1_WEIGHT * value, rel=1e-5)
    for r in zero:  # weight 0: logged, but the loss is the cross-entropy
        assert float(r["train/l1_adapter"]) > 0 and float(r["train/loss"]) == pytest.approx(
            float(r["train/ce"])
        )
    assert float(rows[0]["train/ce"]) == pytest.approx(float(zero[0]["train/ce"]), rel=1e-6)  # same start
    assert float(rows[0]["train/loss"]) > float(zero[0]["train/loss"])
    assert float(rows[-1]["train/ce"]) != float(zero[-1]["train/ce"])  # the term changed the updates
    assert "train/l1_adapter" in runs.metrics

    tuned, ref = runs.objects["module"].model, runs.zero_objects["module"].model
    lora = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert any(not torch.equal(tuned.get_parameter(n), ref.get_parameter(n)) for n in lora)
