"""IFEval (Google's verifiable instruction-following prompts), scored offline by lm-evaluation-harness."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.inference.generation import generate

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


def _use_nltk_data(nltk_data: str | None) -> None:
    """Point NLTK at `nltk_data` (the checkers need punkt_tab; they must never download it)."""
    if nltk_data:
        os.environ["NLTK_DATA"] = str(nltk_data)
        import nltk

        if str(nltk_data) not in nltk.data.path:
            nltk.data.path.insert(0, str(nltk_data))


def ifeval_items(
    rows: list[dict[str, Any]], responses: list[str], nltk_data: str | None = None
) -> list[dict[str, Any]]:
    """Per prompt: prompt-level strict/loose pass (0/1), instructions passed (strict, loose) and in total,
    and each instruction's strict/loose pass, checked by lm-eval's IFEval code."""
    _use_nltk_data(nltk_data)
    from lm_eval.tasks.ifeval.utils import process_results

    items = []
    ids = item_ids(r["prompt"] for r in rows)
    for item_id, row, response in zip(ids, rows, responses, strict=True):
        result = process_results(row, [response])
        strict, loose = [bool(x) for x in result["inst_level_strict_acc"]], result["inst_level_loose_acc"]
        items.append(
            {
                "id": item_id,
                "prompt_level_strict_acc": int(bool(result["prompt_level_strict_acc"])),
                "prompt_level_loose_acc": int(bool(result["prompt_level_loose_acc"])),
                "inst_strict": sum(strict),
                "inst_loose": sum(bool(x) for x in loose),
                "inst_total": len(strict),
                "instructions": [
                    {"id": i, "strict": int(s), "loose": int(bool(lo))}
                    for i, s, lo in zip(row["instruction_id_list"], strict, loose, strict=True)
                ],
            }
        )
    return items


def score_ifeval(
    rows: list[dict[str, Any]], responses: list[str], nltk_data: str | None = None
) -> dict[str, float]:
    """Prompt- and instruction-level accuracy (strict and loose) with lm-eval's IFEval checker."""
    return aggregate(ifeval_items(rows, responses, nltk_data))


def aggregate(items: list[dict[str, Any]]) -> dict[str, float]:
    """The four IFEval metrics from per-prompt items (instruction level: passed / all instructions)."""
    total = max(1, sum(i["inst_total"] for i in items))
    return {
        "prompt_level_strict_acc": sum(i["prompt_level_strict_acc"] for i in items) / len(items),
        "inst_level_strict_acc": sum(i["inst_strict"] for i in items) / total,
        "prompt_level_loose_acc": sum(i["prompt_level_loose_acc"] for i in items) / len(items),
        "inst_level_loose_acc": sum(i["inst_loose"] for i in items) / total,
    }


# Instruction-level accuracies are ratios over prompts (instructions of one prompt are not independent).
ESTIMATORS = means(["prompt_level_strict_acc", "prompt_level_loose_acc"]) | {
    "inst_level_strict_acc": {"stat": "ratio", "num": "inst_strict", "den": "inst_total"},
    "inst_level_loose_acc": {"stat": "ratio", "num": "inst_loose", "den": "inst_total"},
}


class IFEvalSuite(ScoredSuite):
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

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]], ItemScores]:
        """The four accuracies, the (prompt, answer) samples and the per-prompt/instruction items."""
        conversations = [[{"role": "user", "content": r["prompt"]}] for r in self.rows]
        answers = generate(model, tokenizer, template, conversations, self.max_new_tokens, self.batch_size)
        samples = [{"prompt": r["prompt"], "answer": a} for r, a in zip(self.rows, answers, strict=True)]
        items = ifeval_items(self.rows, answers, self.nltk_data)
        return aggregate(items), samples, item_scores(ESTIMATORS, items)
