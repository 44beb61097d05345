"""Eval suites: numbers equal independent computations; bad benchmark files; cache; forgetting flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from itune.eval.forgetting import build_report, improvement, to_markdown, write_report
from itune.eval.ifeval import IFEvalSuite, ifeval_items, score_ifeval
from itune.eval.multiple_choice import BenchmarkError, MultipleChoiceSuite
from itune.eval.perplexity import PerplexitySuite
from itune.eval.reference import ReferenceSuite, normalize
from itune.eval.rules import RulesSuite
from itune.eval.runner import metric_kinds, run_suites, score_suites
from itune.eval.stats import estimate, estimator_columns, paired_arrays
from itune.inference.generation import generate
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
    suite = MultipleChoiceSuite(str(path), "mmlu", batch_size=5, format="chat")
    metrics, samples, items = suite.score(model, tokenizer, chatml)
    correct = correct_norm = 0
    for row, item in zip(MC_ROWS, items["rows"], strict=True):
        prompt = (
            row["question"]
            + "".join(f"\n{x}. {c}" for x, c in zip("ABCD", row["choices"], strict=True))
            + "\nAnswer:"
        )
        context = chatml.encode_prompt([{"role": "user", "content": prompt}])
        lps = [logprob(model, context, tokenizer(c, add_special_tokens=False)["input_ids"]) for c in "ABCD"]
        assert item["logprobs"] == pytest.approx(lps, abs=1e-4)
        correct += lps.index(max(lps)) == row["answer"]
        correct_norm += lps.index(max(lps)) == row["answer"]  # one-letter choices: acc_norm == acc
        assert item["acc"] == (lps.index(max(lps)) == row["answer"])
    assert metrics == {"acc": correct / 3, "acc_norm": correct_norm / 3}
    assert len(samples) == 3 and items["meta"] == {"format": "chat", "shape": "mmlu"}


ARC_ROWS = [
    {
        "question": "Which gas do plants take in?",
        "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {
        "question": "What melts ice?",
        "choices": {"text": ["heat", "cold"], "label": ["1", "2"]},
        "answerKey": "1",
    },
]
HELLASWAG_ROWS = [
    {
        "activity_label": "Baking cookies",
        "ctx": "A woman mixes flour in a bowl [title] Add sugar. she",
        "endings": ["pours in the milk.", "eats the [step] bowl."],
        "label": 0,
    }
]
PINNED_PROMPTS = {
    "arc": ["Question: Which gas do plants take in?\nAnswer:", "Question: What melts ice?\nAnswer:"],
    "hellaswag": ["Baking cookies: A woman mixes flour in a bowl. Add sugar. She"],
}
PINNED_CHOICES = {
    "arc": [["oxygen", "carbon dioxide", "helium"], ["heat", "cold"]],
    "hellaswag": [["pours in the milk.", "eats the bowl."]],
}


@pytest.mark.parametrize("shape", ["arc", "hellaswag"])
def test_plain_format_pins_lm_eval_prompts_and_loglikelihoods(tmp_path, model, tokenizer, chatml, shape):
    """lm-eval's wording, " choice" continuations, and log-likelihoods of an independent plain forward."""
    path = write_jsonl(tmp_path / f"{shape}.jsonl", ARC_ROWS if shape == "arc" else HELLASWAG_ROWS)
    suite = MultipleChoiceSuite(str(path), shape)  # format: plain is the default
    metrics, samples, items = suite.score(model, tokenizer, chatml)
    assert [s["prompt"] for s in samples] == PINNED_PROMPTS[shape]
    answers = [1, 0] if shape == "arc" else [0]
    for prompt, choices, answer, item in zip(
        PINNED_PROMPTS[shape], PINNED_CHOICES[shape], answers, items["rows"], strict=True
    ):
        context = tokenizer(prompt)["input_ids"]  # the byte tokenizer: " choice" is its own tokens
        lps = [
            logprob(model, context, tokenizer(prompt + " " + c)["input_ids"][len(context) :]) for c in choices
        ]
        assert item["logprobs"] == pytest.approx(lps, abs=1e-4)
        norm = [lp / len(c) for lp, c in zip(lps, choices, strict=True)]
        gold = norm.pop(answer)
        assert item["margin"] == pytest.approx(gold - max(norm), abs=1e-4)
    assert metrics["acc_norm"] == sum(r["acc_norm"] for r in items["rows"]) / len(items["rows"])
    assert items["meta"] == {"format": "plain", "shape": shape}


def test_plain_format_agrees_with_lm_eval_harness(tmp_path, model, tokenizer, chatml):
    """Our plain scores equal lm-evaluation-harness's own loglikelihood on the same model and requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    path = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    _, _, items = MultipleChoiceSuite(str(path), "arc").score(model, tokenizer, chatml)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    requests = [
        Instance("loglikelihood", doc={}, arguments=(prompt, f" {c}"), idx=j)
        for prompt, choices in zip(PINNED_PROMPTS["arc"], PINNED_CHOICES["arc"], strict=True)
        for j, c in enumerate(choices)
    ]
    theirs = [lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    ours = [lp for row in items["rows"] for lp in row["logprobs"]]
    assert ours == pytest.approx(theirs, abs=2e-3)


def test_hellaswag_wording_matches_lm_eval_process_docs():
    from datasets import Dataset
    from lm_eval.tasks.hellaswag.utils import process_docs

    from itune.eval.multiple_choice import hellaswag

    rows = [
        {
            "activity_label": "Roof",
            "ctx_a": "A man is on a roof.",
            "ctx_b": "he",
            "endings": ["a [x] b", "c"],
            "label": 1,
        },
        {
            "activity_label": "Hair",
            "ctx_a": "How to dye hair [title] Buy dye.",
            "ctx_b": "",
            "endings": ["d", "e"],
            "label": 0,
        },
    ]
    for doc in process_docs(Dataset.from_list(rows)):
        row = {k: doc[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label")}
        assert hellaswag(row) == (doc["query"], doc["choices"], doc["gold"])
        whole = {k: v for k, v in row.items() if k not in ("ctx_a", "ctx_b")} | {
            "ctx": f"{row['ctx_a']} {row['ctx_b']}"
        }
        assert hellaswag(whole) == (doc["query"], doc["choices"], doc["gold"])  # ctx only: split back


def test_multiple_choice_rejects_an_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "mmlu.jsonl", MC_ROWS)
    with pytest.raises(ValueError, match="valid: plain, chat"):
        MultipleChoiceSuite(str(path), "mmlu", format="fewshot")


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
    metrics, _, items = PerplexitySuite({"ref": {"path": str(path), "format": "alpaca"}}).score(
        model, tokenizer, chatml
    )
    total = tokens = 0
    for row, item in zip(rows, items["rows"], strict=True):
        enc = chatml.encode(
            [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        )
        labels = torch.tensor([enc["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=labels).loss.item()
        total, tokens = total + loss * n, tokens + n
        assert item["ref_tokens"] == n and item["ref_loss_sum"] == pytest.approx(loss * n, rel=1e-5)
    assert metrics["ref_loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert metrics["ref_ppl"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


def test_reference_metrics(tmp_path, model, tokenizer, chatml):
    rows = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say yo", "output": "yo"}]
    path = write_jsonl(tmp_path / "ref.jsonl", rows)
    metrics, samples, items = ReferenceSuite(str(path), max_new_tokens=4).score(model, tokenizer, chatml)
    answers = generate(
        model, tokenizer, chatml, [[{"role": "user", "content": r["instruction"]}] for r in rows], 4
    )
    assert [s["answer"] for s in samples] == answers
    assert (
        metrics["exact_match"]
        == sum(normalize(a) == normalize(r["output"]) for a, r in zip(answers, rows, strict=True)) / 2
    )
    assert set(metrics) == {"rougeL", "bleu", "exact_match"} == set(items["estimators"])
    assert [r["exact_match"] for r in items["rows"]] == [
        int(normalize(a) == normalize(r["output"])) for a, r in zip(answers, rows, strict=True)
    ]


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
    items = ifeval_items(rows, ["Capitals but no commas", '{"a": 1}'], nltk_data)
    assert [(i["prompt_level_strict_acc"], i["inst_strict"], i["inst_total"]) for i in items] == [
        (0, 1, 2),
        (1, 1, 1),
    ]
    assert items[0]["instructions"] == [
        {"id": "change_case:english_lowercase", "strict": 0, "loose": 0},
        {"id": "punctuation:no_comma", "strict": 1, "loose": 1},
    ]


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
    suite = CountingSuite()  # returns no item scores (a suite without items still works)
    args = ({"s": suite}, model, tokenizer, chatml, tmp_path, {"s": "key1"})
    first = run_suites(*args)
    second = run_suites(*args)
    assert suite.calls == 1 and first == second == (
        {"eval/s/score": 0.5},
        {"s": [{"prompt": "p", "answer": "a"}]},
    )
    run_suites({"s": suite}, model, tokenizer, chatml, tmp_path, {"s": "key2"})  # other config → recompute
    assert suite.calls == 2
    assert score_suites(*args).items == {"s": None}


def test_item_scores_are_cached_with_the_base_results(tmp_path, model, tokenizer, chatml):
    path = write_jsonl(tmp_path / "mmlu.jsonl", MC_ROWS)
    suites = {"mmlu": MultipleChoiceSuite(str(path), "mmlu")}
    fresh = score_suites(suites, model, tokenizer, chatml, tmp_path / "cache", {"mmlu": "k"})
    cached = score_suites(
        suites, None, tokenizer, chatml, tmp_path / "cache", {"mmlu": "k"}
    )  # no model needed
    assert cached == fresh and len(fresh.items["mmlu"]["rows"]) == 3


def suites_with_items(tmp_path, n_ppl: int = 16) -> dict:
    """A perplexity suite (n_ppl examples) and a 3-question MMLU suite."""
    rows = [
        {"instruction": f"Say {w} {i}", "output": f"{w} {w} {w}"}
        for i in range(n_ppl // 4)
        for w in ("hi", "yo", "ok", "no")
    ]
    path = write_jsonl(tmp_path / "ref.jsonl", rows)
    mc = write_jsonl(tmp_path / "mmlu.jsonl", MC_ROWS)
    return {
        "ppl": PerplexitySuite({"general": {"path": str(path)}}, limit=None),
        "mmlu": MultipleChoiceSuite(str(mc), "mmlu"),
    }


def test_forgetting_report_flags_a_damaged_model(tmp_path, tokenizer, chatml):
    suites = suites_with_items(tmp_path)
    healthy = tiny_llama()
    base = score_suites(suites, healthy, tokenizer, chatml)
    damaged = tiny_llama()
    with torch.no_grad():
        for p in damaged.parameters():
            p.mul_(8.0)  # wreck the weights
    tuned = score_suites(suites, damaged, tokenizer, chatml)
    items = {"base": base.items, "tuned": tuned.items}
    report = build_report(base.metrics, tuned.metrics, metric_kinds(suites, tuned.metrics), 0.02, items=items)
    rows = {r["metric"]: r for r in report["rows"]}
    flagged = {m for m, r in rows.items() if r["regression"]}
    assert "eval/ppl/general_loss" in flagged and "eval/ppl/general_ppl" in flagged
    loss_row = rows["eval/ppl/general_loss"]
    assert loss_row["improvement"] == pytest.approx(
        improvement("x_loss", base.metrics["eval/ppl/general_loss"], tuned.metrics["eval/ppl/general_loss"])
    )
    assert loss_row["n"] == 16 and loss_row["p_adj"] < 0.05 and loss_row["ci_hi"] < -0.02
    assert loss_row["test"] == "permutation" and rows["eval/mmlu/acc"]["test"] == "mcnemar"
    assert not rows["eval/mmlu/acc"]["regression"]  # 3 questions can never be significant
    assert rows["eval/mmlu/acc"]["mde"] > 1  # and the report says so
    assert report["summary"]["forgetting/general_delta"] < 0
    assert report["summary"]["forgetting/general_delta_hi"] < 0
    assert report["summary"]["forgetting/regressions"] == len(flagged)
    assert report["summary"]["forgetting/significant_regressions"] >= 2

    write_report(report, tmp_path, items)
    saved = json.loads((tmp_path / "forgetting.json").read_text())
    assert saved["summary"] == report["summary"]
    markdown = (tmp_path / "forgetting.md").read_text()
    assert f"{tuned.metrics['eval/ppl/general_loss']:.4f}" in markdown and "**regression**" in markdown
    assert "Too few items to detect a threshold-sized change: eval/mmlu/acc" in markdown
    assert (tmp_path / "forgetting.png").stat().st_size > 1000
    assert to_markdown(report) == markdown
    assert len((tmp_path / "items_tuned.jsonl").read_text().splitlines()) == 16 + 3


def test_identical_models_give_zero_deltas_and_no_flags(tmp_path, model, tokenizer, chatml):
    suites = suites_with_items(tmp_path, n_ppl=8)
    base, tuned = (score_suites(suites, model, tokenizer, chatml) for _ in range(2))
    items = {"base": base.items, "tuned": tuned.items}
    report = build_report(base.metrics, tuned.metrics, metric_kinds(suites, tuned.metrics), items=items)
    assert len(report["rows"]) == 4
    for row in report["rows"]:
        assert row["delta"] == 0 and row["p"] == 1.0 and not row["significant"] and not row["regression"]
        assert row["ci_lo"] == 0 == row["ci_hi"]


def test_item_scores_reproduce_every_suite_aggregate(tmp_path, model, tokenizer, chatml):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}, {"prompt": "Yo"}, {"prompt": "Hi"}])
    refs = write_jsonl(tmp_path / "ref.jsonl", [{"instruction": "Say hi", "output": "hi"}] * 3)
    suites = suites_with_items(tmp_path, n_ppl=8) | {
        "rules": RulesSuite(
            str(prompts), {"short": {"max_words": 3}, "any": {"regex": "."}}, max_new_tokens=4
        ),
        "ref": ReferenceSuite(str(refs), max_new_tokens=4),
    }
    scores = score_suites(suites, model, tokenizer, chatml)
    for name, suite_items in scores.items.items():
        for metric, spec in suite_items["estimators"].items():
            _, xb, _ = paired_arrays(suite_items["rows"], suite_items["rows"], estimator_columns(spec))
            value = float(estimate(spec, xb.sum(0), len(xb)))
            assert value == pytest.approx(scores.metrics[f"eval/{name}/{metric}"], rel=1e-5, abs=1e-6)
    assert len({r["id"] for r in scores.items["rules"]["rows"]}) == 3  # a repeated prompt gets its own id


@pytest.mark.parametrize(
    ("answers", "references"),
    [
        (["the cat sat on the mat", "a b c d e"], ["the cat sat on a mat", "a b c d e f g"]),
        (["one two three four five six", "x"], ["one two three four five", "x y"]),
        (["no overlap here at all"], ["completely different words entirely"]),
    ],
)
def test_bleu_counts_give_torchmetrics_corpus_bleu(answers, references):
    from torchmetrics.text import BLEUScore

    from itune.eval.reference import ESTIMATORS, bleu_counts

    spec = ESTIMATORS["bleu"]
    sums = np.array(
        [
            sum(bleu_counts(a, r)[c] for a, r in zip(answers, references, strict=True))
            for c in estimator_columns(spec)
        ]
    )
    expected = float(BLEUScore()(answers, [[r] for r in references]))
    assert float(estimate(spec, sums, len(answers))) == pytest.approx(expected, abs=1e-6)


def test_improvement_direction():
    assert improvement("eval/x/acc", 0.4, 0.5) == pytest.approx(0.1)
    assert improvement("eval/x/general_ppl", 10.0, 12.0) == pytest.approx(-0.2)
    report = build_report({"eval/d/acc": 0.2}, {"eval/d/acc": 0.9}, {"eval/d/acc": "domain"})
    assert report["summary"]["gain/domain_delta"] == pytest.approx(0.7)
    assert report["summary"]["forgetting/regressions"] == 0
