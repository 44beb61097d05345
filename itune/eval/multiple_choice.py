"""Multiple-choice benchmarks (HellaSwag, ARC, MMLU) scored by the log-likelihood of each choice.

Questions and choices are worded as lm-evaluation-harness's default tasks (`arc_easy`, `hellaswag`,
`mmlu`). `format: plain` scores the prompt as bare text followed by `" " + choice`, tokenized as lm-eval
does (the whole string, split after the context's tokens): the numbers are comparable with model cards.
`format: chat` puts the prompt in a user turn rendered by the run's template and scores each choice as the
assistant's reply (as lm-eval's `--apply_chat_template`, without the space). `acc` picks the choice with the
highest summed log-probability, `acc_norm` the highest per character (lm-eval's length normalisation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.eval.scoring import continuation_logprobs

Item = tuple[str, list[str], int]  # prompt (lm-eval wording), choices, index of the answer
FORMATS = ("plain", "chat")


class BenchmarkError(ValueError):
    """A benchmark row does not have the expected shape."""


def lm_eval_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, ` [title]` → `. `, drop `[...]`, collapse double spaces.

    >>> lm_eval_preprocess(" Cook [title] Boil  water [step] now ")
    'Cook. Boil water now'
    """
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _split_ctx(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) of a HellaSwag ctx given whole: ctx_b is the lower-case fragment after the last
    sentence end (where HellaSwag puts it), else empty."""
    match = re.match(r"^(.*[.!?])\s+([a-z][^.!?]*)$", ctx.strip())
    return (match[1], match[2]) if match else (ctx.strip(), "")


def hellaswag(row: Mapping[str, Any]) -> Item:
    """HellaSwag: activity_label, ctx (or ctx_a, ctx_b), endings[4], label; lm-eval's `query` and choices.

    >>> hellaswag({"activity_label": "Cook", "ctx": "He boils. the man", "endings": ["eats."], "label": 0})
    ('Cook: He boils. The man', ['eats.'], 0)
    """
    ctx_a, ctx_b = (row["ctx_a"], row["ctx_b"]) if "ctx_a" in row else _split_ctx(row["ctx"])
    query = lm_eval_preprocess(f"{row['activity_label']}: {ctx_a} {ctx_b.capitalize()}")
    return query, [lm_eval_preprocess(e) for e in row["endings"]], int(row["label"])


def arc(row: Mapping[str, Any]) -> Item:
    """ARC (HF schema): question, choices {text, label}, answerKey (A-E or 1-4).

    >>> arc({"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"})
    ('Question: Q?\\nAnswer:', ['a', 'b'], 1)
    """
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise BenchmarkError(f"answerKey {row['answerKey']!r} is not one of the choice labels {labels}")
    return (
        f"Question: {row['question']}\nAnswer:",
        list(row["choices"]["text"]),
        labels.index(row["answerKey"]),
    )


def mmlu(row: Mapping[str, Any]) -> Item:
    """MMLU: question, choices[4], answer (0-3), optional subject; lm-eval's zero-shot prompt, letter choices.

    >>> row = {"question": "2+2?", "choices": ["3", "4"], "answer": 1, "subject": "x"}
    >>> prompt, choices, answer = mmlu(row)
    >>> prompt
    'The following are multiple choice questions (with answers) about x.\\n\\n2+2?\\nA. 3\\nB. 4\\nAnswer:'
    >>> choices, answer
    (['A', 'B'], 1)
    """
    choices = list(row["choices"])
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    subject = str(row.get("subject") or "").replace("_", " ")
    description = (
        f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
    )
    options = "".join(f"\n{letter}. {c}" for letter, c in zip(letters, choices, strict=True))
    return f"{description}{row['question'].strip()}{options}\nAnswer:", letters, int(row["answer"])


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


def plain_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as lm-eval encodes them for causal models: trailing spaces of
    the context move to the continuation, and the whole text is tokenized and split after the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def choice_item(item_id: str, logp: list[float], choices: list[str], answer: int) -> dict[str, Any]:
    """One question's scores: `acc`, `acc_norm` (0/1), `margin` (the answer's per-character log-likelihood
    minus the best other choice's; positive = right by acc_norm) and every choice's log-likelihood."""
    norm = [lp / max(1, len(c)) for lp, c in zip(logp, choices, strict=True)]
    best_other = max(v for j, v in enumerate(norm) if j != answer)
    return {
        "id": item_id,
        "acc": int(logp.index(max(logp)) == answer),
        "acc_norm": int(norm.index(max(norm)) == answer),
        "margin": norm[answer] - best_other,
        "logprobs": logp,
    }


class MultipleChoiceSuite(ScoredSuite):
    """Accuracy of log-likelihood choice scoring on a benchmark file.

    Args:
        path: JSONL file in the benchmark's usual shape.
        shape: `hellaswag`, `arc` or `mmlu`.
        limit: score at most this many questions (the first ones).
        batch_size: sequences scored per forward pass.
        kind: `general` or `domain`, for the forgetting report.
        format: `plain` (lm-eval's default prompts, comparable with model cards) or `chat` (the prompt as a
            user turn of the run's template, each choice as the assistant's reply).
    """

    def __init__(
        self,
        path: str,
        shape: str,
        limit: int | None = 100,
        batch_size: int = 16,
        kind: str = "general",
        format: str = "plain",
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown multiple-choice format {format!r}; valid: {', '.join(FORMATS)}")
        self.items = read_items(path, shape, limit)
        self.shape, self.format = shape, format
        self.batch_size, self.kind = batch_size, kind

    def pairs(
        self, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) of every choice of every question, in order."""
        pairs = []
        for prompt, choices, _ in self.items:
            if self.format == "plain":
                pairs += [plain_pair(tokenizer, prompt, f" {c}") for c in choices]
            else:
                context = template.encode_prompt([{"role": "user", "content": prompt}])
                pairs += [(context, tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices]
        return pairs

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]], ItemScores]:
        """`acc` and `acc_norm`, per-question choices for inspection and per-question scores."""
        scores = continuation_logprobs(
            model, self.pairs(tokenizer, template), tokenizer.pad_token_id, self.batch_size
        )
        ids = item_ids(json.dumps([prompt, choices]) for prompt, choices, _ in self.items)
        rows, samples, k = [], [], 0
        for item_id, (prompt, choices, answer) in zip(ids, self.items, strict=True):
            row = choice_item(item_id, [lp for lp, _ in scores[k : k + len(choices)]], choices, answer)
            k += len(choices)
            rows.append(row)
            pick = max(range(len(choices)), key=lambda j: row["logprobs"][j] / max(1, len(choices[j])))
            samples.append({"prompt": prompt, "answer": choices[pick], "reference": choices[answer]})
        n = len(rows)
        metrics = {"acc": sum(r["acc"] for r in rows) / n, "acc_norm": sum(r["acc_norm"] for r in rows) / n}
        meta = {"format": self.format, "shape": self.shape}
        return metrics, samples, item_scores(means(["acc", "acc_norm"]), rows, **meta)
