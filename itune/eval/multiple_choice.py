"""Multiple-choice benchmarks (HellaSwag, ARC, MMLU) scored by the log-likelihood of each choice.

The question is the user turn, rendered with the run's template up to the assistant header; each choice
is scored as the assistant's reply. `acc` picks the choice with the highest summed log-probability,
`acc_norm` the highest per character (length-normalised, as lm-evaluation-harness does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.eval.scoring import continuation_logprobs

Item = tuple[str, list[str], int]  # question, choices, index of the answer


class BenchmarkError(ValueError):
    """A benchmark row does not have the expected shape."""


def _hellaswag_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace(" [title]", ". ")).strip()


def hellaswag(row: Mapping[str, Any]) -> Item:
    """HellaSwag: activity_label, ctx, endings[4], label.

    >>> hellaswag({"activity_label": "Cook", "ctx": "He cracks", "endings": ["eggs.", "x"], "label": 0})
    ('Cook: He cracks', ['eggs.', 'x'], 0)
    """
    question = f"{row['activity_label']}: {_hellaswag_text(row['ctx'])}"
    return question, [_hellaswag_text(e) for e in row["endings"]], int(row["label"])


def arc(row: Mapping[str, Any]) -> Item:
    """ARC (HF schema): question, choices {text, label}, answerKey (A-E or 1-4).

    >>> arc({"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"})
    ('Q?', ['a', 'b'], 1)
    """
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise BenchmarkError(f"answerKey {row['answerKey']!r} is not one of the choice labels {labels}")
    return row["question"], list(row["choices"]["text"]), labels.index(row["answerKey"])


def mmlu(row: Mapping[str, Any]) -> Item:
    """MMLU: question, choices[4], answer (0-3).

    >>> mmlu({"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1})
    ('2+2?', ['3', '4', '5', '6'], 1)
    """
    return row["question"], list(row["choices"]), int(row["answer"])


SHAPES: dict[str, Callable[[Mapping[str, Any]], Item]] = {"hellaswag": hellaswag, "arc": arc, "mmlu": mmlu}


def read_items(path: str, shape: str, limit: int | None) -> list[Item]:
    """Rows of a benchmark JSONL file as (question, choices, answer), checking every row's shape."""
    if shape not in SHAPES:
        raise ValueError(f"unknown benchmark shape {shape!r}; valid: {', '.join(SHAPES)}")
    items: list[Item] = []
    for n, row in read_jsonl(path, "benchmark file"):
        try:
            question, choices, answer = SHAPES[shape](row)
        except (KeyError, TypeError, ValueError) as e:
            raise BenchmarkError(f"{path}, line {n}: not a {shape} row ({type(e).__name__}: {e})") from e
        if not 0 <= answer < len(choices) or len(choices) < 2:
            raise BenchmarkError(f"{path}, line {n}: answer {answer} is outside the {len(choices)} choices")
        items.append((question, choices, answer))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise BenchmarkError(f"benchmark file {path} has no rows")
    return items


class MultipleChoiceSuite:
    """Accuracy of log-likelihood choice scoring on a benchmark file.

    Args:
        path: JSONL file in the benchmark's usual shape.
        shape: `hellaswag`, `arc` or `mmlu`.
        limit: score at most this many questions (the first ones).
        batch_size: sequences scored per forward pass.
        kind: `general` or `domain`, for the forgetting report.
    """

    def __init__(
        self, path: str, shape: str, limit: int | None = 100, batch_size: int = 16, kind: str = "general"
    ) -> None:
        self.items = read_items(path, shape, limit)
        self.batch_size, self.kind = batch_size, kind

    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """`acc` and `acc_norm`, and per-question choices for inspection."""
        pairs = []
        for question, choices, _ in self.items:
            context = template.encode_prompt([{"role": "user", "content": question}])
            pairs += [(context, tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices]
        scores = continuation_logprobs(model, pairs, tokenizer.pad_token_id, self.batch_size)
        correct = correct_norm = 0
        samples = []
        k = 0
        for question, choices, answer in self.items:
            logp = [scores[k + j][0] for j in range(len(choices))]
            norm = [lp / max(1, len(c)) for lp, c in zip(logp, choices, strict=True)]
            k += len(choices)
            pick, pick_norm = logp.index(max(logp)), norm.index(max(norm))
            correct += pick == answer
            correct_norm += pick_norm == answer
            samples.append({"prompt": question, "answer": choices[pick_norm], "reference": choices[answer]})
        n = len(self.items)
        return {"acc": correct / n, "acc_norm": correct_norm / n}, samples
