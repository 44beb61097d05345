"""Reference-based generation metrics (torchmetrics ROUGE-L and BLEU, exact match) on prompt/answer rows."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from torchmetrics.functional.text import rouge_score
from torchmetrics.text import BLEUScore, ROUGEScore
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.formats import to_messages
from itune.data.sources import load_source
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.eval.stats import BLEU_PREFIX
from itune.inference.generation import generate

N_GRAM = 4  # BLEU order, as torchmetrics' BLEUScore default
ESTIMATORS = means(["rougeL", "exact_match"]) | {"bleu": {"stat": "bleu", "n_gram": N_GRAM}}


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and collapse spaces (for exact match).

    >>> normalize("  The  Answer: 42! ")
    'the answer 42'
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def bleu_counts(answer: str, reference: str, n_gram: int = N_GRAM) -> dict[str, int]:
    """One answer's BLEU statistics (clipped n-gram matches, n-gram totals, lengths), as torchmetrics counts
    them (whitespace words); summed over answers they give the corpus BLEU.

    >>> list(bleu_counts("a b", "a c", 2).values())  # match_1, match_2, total_1, total_2, hyp_len, ref_len
    [1, 0, 2, 1, 2, 2]
    """
    hyp, ref = answer.split(), reference.split()

    def grams(words: list[str], n: int) -> Counter:
        return Counter(tuple(words[j : j + n]) for j in range(len(words) - n + 1))

    counts = {
        f"{BLEU_PREFIX}match_{n}": sum((grams(hyp, n) & grams(ref, n)).values()) for n in range(1, n_gram + 1)
    }
    counts |= {f"{BLEU_PREFIX}total_{n}": max(0, len(hyp) - n + 1) for n in range(1, n_gram + 1)}
    return counts | {f"{BLEU_PREFIX}hyp_len": len(hyp), f"{BLEU_PREFIX}ref_len": len(ref)}


def reference_items(prompts: list[Any], answers: list[str], references: list[str]) -> list[dict[str, Any]]:
    """Per example: ROUGE-L F1, exact match (0/1) and BLEU counts; ids from prompt and reference."""
    ids = item_ids(json.dumps([p, r], sort_keys=True) for p, r in zip(prompts, references, strict=True))
    return [
        {
            "id": i,
            "rougeL": float(rouge_score(a, r, rouge_keys="rougeL")["rougeL_fmeasure"]),
            "exact_match": int(normalize(a) == normalize(r)),
            **bleu_counts(a, r),
        }
        for i, a, r in zip(ids, answers, references, strict=True)
    ]


class ReferenceSuite(ScoredSuite):
    """Greedy answers to the prompts of a data file compared with its reference answers.

    Each row is read with an itune data format; the last assistant turn is the reference and the turns
    before it are the prompt.

    Args:
        path: data file (or hub id) with prompts and reference answers.
        format: itune data format of the rows (`alpaca`, `dolly`, `flan`, `messages`).
        fields: field map for other column names.
        limit: rows used (the first ones).
        max_new_tokens: generation budget per answer.
        batch_size: prompts generated together.
        kind: `general` or `domain`, for the forgetting report.
    """

    def __init__(
        self,
        path: str,
        format: str = "alpaca",
        fields: dict[str, str] | None = None,
        limit: int | None = 50,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        kind: str = "general",
    ) -> None:
        rows = load_source(path)
        n = len(rows) if limit is None else min(limit, len(rows))
        conversations = [to_messages(rows[i], format, fields) for i in range(n)]
        self.prompts = [c[:-1] for c in conversations]
        self.references = [c[-1]["content"] for c in conversations]
        self.max_new_tokens, self.batch_size, self.kind = max_new_tokens, batch_size, kind

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]], ItemScores]:
        """`rougeL`, `bleu`, `exact_match`, the generated samples and the per-example scores."""
        answers = generate(model, tokenizer, template, self.prompts, self.max_new_tokens, self.batch_size)
        rouge = ROUGEScore(rouge_keys="rougeL")(answers, self.references)["rougeL_fmeasure"]
        bleu = BLEUScore()(answers, [[r] for r in self.references])
        exact = sum(normalize(a) == normalize(r) for a, r in zip(answers, self.references, strict=True))
        samples = [
            {"prompt": p[-1]["content"], "answer": a, "reference": r}
            for p, a, r in zip(self.prompts, answers, self.references, strict=True)
        ]
        metrics = {"rougeL": float(rouge), "bleu": float(bleu), "exact_match": exact / len(answers)}
        items = reference_items(self.prompts, answers, self.references)
        return metrics, samples, item_scores(ESTIMATORS, items)
