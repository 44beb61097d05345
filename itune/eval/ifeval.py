"""IFEval (Google's verifiable instruction-following prompts), scored offline by lm-evaluation-harness."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.generation import generate

METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


def read_ifeval(path: str, limit: int | None) -> list[dict[str, Any]]:
    """IFEval rows (key, prompt, instruction_id_list, kwargs), checking their shape."""
    rows = []
    for n, row in read_jsonl(path, "IFEval prompts file"):
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if (
            "prompt" not in row
            or not isinstance(ids, list)
            or not isinstance(kwargs, list)
            or len(ids) != len(kwargs)
        ):
            raise ValueError(f"{path}, line {n}: expected prompt, instruction_id_list and matching kwargs")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def score_ifeval(
    rows: list[dict[str, Any]], responses: list[str], nltk_data: str | None = None
) -> dict[str, float]:
    """Prompt- and instruction-level accuracy (strict and loose) with lm-eval's IFEval checker."""
    if nltk_data:  # the checkers need NLTK's punkt_tab; never let them download it
        os.environ["NLTK_DATA"] = str(nltk_data)
        import nltk

        if str(nltk_data) not in nltk.data.path:
            nltk.data.path.insert(0, str(nltk_data))
    from lm_eval.tasks.ifeval.utils import process_results

    prompt = {"prompt_level_strict_acc": 0, "prompt_level_loose_acc": 0}
    inst = {"inst_level_strict_acc": [], "inst_level_loose_acc": []}
    for row, response in zip(rows, responses, strict=True):
        result = process_results(row, [response])
        for k in prompt:
            prompt[k] += bool(result[k])
        for k in inst:
            inst[k] += [bool(x) for x in result[k]]
    out = {k: v / len(rows) for k, v in prompt.items()}
    return out | {k: sum(v) / max(1, len(v)) for k, v in inst.items()}


class IFEvalSuite:
    """Greedy answers to IFEval prompts with the run's template, checked by the public IFEval code.

    Args:
        path: IFEval `input_data.jsonl`.
        limit: prompts used (the first ones).
        max_new_tokens: generation budget per answer.
        batch_size: prompts generated together.
        nltk_data: folder with NLTK's punkt_tab (no download happens); default $NLTK_DATA.
        kind: `general` or `domain`, for the forgetting report.
    """

    def __init__(
        self,
        path: str,
        limit: int | None = 50,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        nltk_data: str | None = None,
        kind: str = "general",
    ) -> None:
        self.rows = read_ifeval(path, limit)
        self.nltk_data = nltk_data or os.environ.get("NLTK_DATA")
        if self.nltk_data and not (Path(self.nltk_data) / "tokenizers" / "punkt_tab").is_dir():
            raise FileNotFoundError(f"nltk_data={self.nltk_data} has no tokenizers/punkt_tab folder")
        self.max_new_tokens, self.batch_size, self.kind = max_new_tokens, batch_size, kind

    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        conversations = [[{"role": "user", "content": r["prompt"]}] for r in self.rows]
        answers = generate(model, tokenizer, template, conversations, self.max_new_tokens, self.batch_size)
        samples = [{"prompt": r["prompt"], "answer": a} for r, a in zip(self.rows, answers, strict=True)]
        return score_ifeval(self.rows, answers, self.nltk_data), samples
