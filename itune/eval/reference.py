"""Reference-based generation metrics (torchmetrics ROUGE-L and BLEU, exact match) on prompt/answer rows."""

from __future__ import annotations

import re
from typing import Any

from torchmetrics.text import BLEUScore, ROUGEScore
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.formats import to_messages
from itune.data.sources import load_source
from itune.data.templates import Template
from itune.generation import generate


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and collapse spaces (for exact match).

    >>> normalize("  The  Answer: 42! ")
    'the answer 42'
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class ReferenceSuite:
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

    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """`rougeL`, `bleu`, `exact_match` and the generated samples."""
        answers = generate(model, tokenizer, template, self.prompts, self.max_new_tokens, self.batch_size)
        rouge = ROUGEScore(rouge_keys="rougeL")(answers, self.references)["rougeL_fmeasure"]
        bleu = BLEUScore()(answers, [[r] for r in self.references])
        exact = sum(normalize(a) == normalize(r) for a, r in zip(answers, self.references, strict=True))
        samples = [
            {"prompt": p[-1]["content"], "answer": a, "reference": r}
            for p, a, r in zip(self.prompts, answers, self.references, strict=True)
        ]
        return {"rougeL": float(rouge), "bleu": float(bleu), "exact_match": exact / len(answers)}, samples
