"""Eval suites: numbers equal independent computations; bad benchmark files; cache; forgetting flags."""

from __future__ import annotations

import json
import math

import pytest
import torch

from itune.eval.forgetting import build_report, improvement, to_markdown, write_report
from itune.eval.ifeval import IFEvalSuite, score_ifeval
from itune.eval.multiple_choice import BenchmarkError, MultipleChoiceSuite
from itune.eval.perplexity import PerplexitySuite
from itune.eval.reference import ReferenceSuite, normalize
from itune.eval.runner import metric_kinds, run_suites
from itune.generation import generate
from itune.model import tiny_llama
from tests.conftest import SHARED_DATA, write_jsonl
from tests.test_templates import build

MC_ROWS = [
    {"question": "Sky colour?", "choices": ["blue", "green", "red", "a very long wrong answer"], "answer": 0},
    {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Cats say?", "choices": ["woof", "moo", "meow", "quack"], "answer": 2},
]


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture
def chatml(tokenizer):
    return build("chatml", tokenizer)


def logprob(model, context: list[int], continuation: list[int]) -> float:
    """Independent scoring: one unpadded forward per choice."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(continuation))


def test_multiple_choice_matches_hand_computed_loglikelihoods(tmp_path, model, tokenizer, chatml):
    path = write_jsonl(tmp_path / "mmlu.jsonl", MC_ROWS)
    metrics, samples = MultipleChoiceSuite(str(path), "mmlu", batch_size=5).run(model, tokenizer, chatml)
    correct = correct_norm = 0
    for row in MC_ROWS:
        context = chatml.encode_prompt([{"role": "user", "content": row["question"]}])
        lps = [
            logprob(model, context, tokenizer(c, add_special_tokens=False)["input_ids"])
            for c in row["choices"]
        ]
        norm = [lp / len(c) for lp, c in zip(lps, row["choices"], strict=True)]
        correct += lps.index(max(lps)) == row["answer"]
        correct_norm += norm.index(max(norm)) == row["answer"]
    assert metrics == {"acc": correct / 3, "acc_norm": correct_norm / 3}
    assert len(samples) == 3


@pytest.mark.parametrize(
    ("shape", "row", "message"),
    [
        (
            "arc",
            {"question": "Q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
            "answerKey",
        ),
        ("mmlu", {"question": "Q", "choices": ["a", "b"], "answer": 5}, "outside the 2 choices"),
        ("hellaswag", {"ctx": "c", "endings": ["a", "b"], "label": 0}, "not a hellaswag row"),
    ],
)
def test_bad_benchmark_rows_name_file_and_line(tmp_path, shape, row, message):
    good = {"question": "Q", "choices": ["a", "b"], "answer": 0}
    rows = [good, row] if shape == "mmlu" else [row]
    path = write_jsonl(tmp_path / "bench.jsonl", rows)
    with pytest.raises(BenchmarkError, match=message) as e:
        MultipleChoiceSuite(str(path), shape)
    assert "bench.jsonl, line" in str(e.value)


def test_missing_benchmark_file_and_unknown_shape(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark file"):
        MultipleChoiceSuite(str(tmp_path / "none.jsonl"), "arc")
    with pytest.raises(ValueError, match="valid: hellaswag, arc, mmlu"):
        MultipleChoiceSuite(str(tmp_path / "none.jsonl"), "piqa")


def test_perplexity_matches_transformers_loss(tmp_path, model, tokenizer, chatml):
    rows = [{"instruction": "Say hi", "output": "hi there"}, {"instruction": "Count", "output": "1 2 3 4"}]
    path = write_jsonl(tmp_path / "ref.jsonl", rows)
    metrics, _ = PerplexitySuite({"ref": {"path": str(path), "format": "alpaca"}}).run(
        model, tokenizer, chatml
    )
    total = tokens = 0
    for row in rows:
        enc = chatml.encode(
            [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        )
        labels = torch.tensor([enc["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=labels).loss.item()
        total, tokens = total + loss * n, tokens + n
    assert metrics["ref_loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert metrics["ref_ppl"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


def test_reference_metrics(tmp_path, model, tokenizer, chatml):
    rows = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say yo", "output": "yo"}]
    path = write_jsonl(tmp_path / "ref.jsonl", rows)
    metrics, samples = ReferenceSuite(str(path), max_new_tokens=4).run(model, tokenizer, chatml)
    answers = generate(
        model, tokenizer, chatml, [[{"role": "user", "content": r["instruction"]}] for r in rows], 4
    )
    assert [s["answer"] for s in samples] == answers
    assert (
        metrics["exact_match"]
        == sum(normalize(a) == normalize(r["output"]) for a, r in zip(answers, rows, strict=True)) / 2
    )
    assert set(metrics) == {"rougeL", "bleu", "exact_match"}


@pytest.fixture
def nltk_data():
    path = SHARED_DATA / "nltk_data"
    if not path.is_dir():
        pytest.skip("NLTK punkt_tab data (../shared/data/nltk_data) absent")
    return str(path)


def test_ifeval_checker_on_known_responses(nltk_data):
    rows = [
        {
            "key": 1,
            "prompt": "Answer in lowercase without commas.",
            "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
            "kwargs": [{}, {}],
        },
        {
            "key": 2,
            "prompt": "Answer in JSON.",
            "instruction_id_list": ["detectable_format:json_format"],
            "kwargs": [{}],
        },
    ]
    good = score_ifeval(rows, ["all lowercase and no commas here", '{"answer": 42}'], nltk_data)
    assert good == {k: 1.0 for k in good}
    bad = score_ifeval(rows, ["Has Capitals, and commas", "not json"], nltk_data)
    assert bad == {k: 0.0 for k in bad}
    half = score_ifeval(rows, ["Capitals but no commas", '{"a": 1}'], nltk_data)
    assert half["prompt_level_strict_acc"] == 0.5 and half["inst_level_strict_acc"] == pytest.approx(2 / 3)


def test_ifeval_file_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="IFEval prompts file"):
        IFEvalSuite(str(tmp_path / "none.jsonl"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "instruction_id_list": ["a"], "kwargs": []}])
    with pytest.raises(ValueError, match="bad.jsonl, line 1"):
        IFEvalSuite(str(bad))


class CountingSuite:
    """A suite double that counts how often it really runs."""

    kind = "general"

    def __init__(self) -> None:
        self.calls = 0

    def run(self, model, tokenizer, template):
        self.calls += 1
        return {"score": 0.5}, [{"prompt": "p", "answer": "a"}]


def test_base_results_are_cached(tmp_path, model, tokenizer, chatml):
    suite = CountingSuite()
    args = ({"s": suite}, model, tokenizer, chatml, tmp_path, {"s": "key1"})
    first = run_suites(*args)
    second = run_suites(*args)
    assert suite.calls == 1 and first == second == (
        {"eval/s/score": 0.5},
        {"s": [{"prompt": "p", "answer": "a"}]},
    )
    run_suites({"s": suite}, model, tokenizer, chatml, tmp_path, {"s": "key2"})  # other config → recompute
    assert suite.calls == 2


def test_forgetting_report_flags_a_damaged_model(tmp_path, tokenizer, chatml):
    rows = [{"instruction": f"Say {w}", "output": f"{w} {w} {w}"} for w in ("hi", "yo", "ok", "no")]
    path = write_jsonl(tmp_path / "ref.jsonl", rows)
    mc = write_jsonl(tmp_path / "mmlu.jsonl", MC_ROWS)
    suites = {
        "ppl": PerplexitySuite({"general": {"path": str(path)}}),
        "mmlu": MultipleChoiceSuite(str(mc), "mmlu"),
    }
    healthy = tiny_llama()
    base, _ = run_suites(suites, healthy, tokenizer, chatml)
    damaged = tiny_llama()
    with torch.no_grad():
        for p in damaged.parameters():
            p.mul_(8.0)  # wreck the weights
    tuned, _ = run_suites(suites, damaged, tokenizer, chatml)
    report = build_report(base, tuned, metric_kinds(suites, tuned), threshold=0.02)
    flagged = {r["metric"] for r in report["rows"] if r["regression"]}
    assert "eval/ppl/general_loss" in flagged and "eval/ppl/general_ppl" in flagged
    loss_row = next(r for r in report["rows"] if r["metric"] == "eval/ppl/general_loss")
    assert loss_row["improvement"] == pytest.approx(
        improvement("x_loss", base["eval/ppl/general_loss"], tuned["eval/ppl/general_loss"])
    )
    assert report["summary"]["forgetting/general_delta"] < 0
    assert report["summary"]["forgetting/regressions"] == len(flagged)

    write_report(tmp_path, report)
    saved = json.loads((tmp_path / "forgetting.json").read_text())
    assert saved["summary"] == report["summary"]
    markdown = (tmp_path / "forgetting.md").read_text()
    assert f"{tuned['eval/ppl/general_loss']:.4f}" in markdown and "**yes**" in markdown
    assert (tmp_path / "forgetting.png").stat().st_size > 1000
    assert to_markdown(report) == markdown


def test_improvement_direction():
    assert improvement("eval/x/acc", 0.4, 0.5) == pytest.approx(0.1)
    assert improvement("eval/x/general_ppl", 10.0, 12.0) == pytest.approx(-0.2)
    report = build_report({"eval/d/acc": 0.2}, {"eval/d/acc": 0.9}, {"eval/d/acc": "domain"})
    assert report["summary"]["gain/domain_delta"] == pytest.approx(0.7)
    assert report["summary"]["forgetting/regressions"] == 0
