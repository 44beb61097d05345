"""itune-generate: prompts from the command line or a JSONL file → a JSONL file of answers.

Each input line is `{"prompt": "..."}` (one user turn), `{"messages": [{role, content}, ...]}` (a
conversation to continue) or, in Alpaca style, `{"instruction": ..., "input": ...}`; other keys (ids,
references) are copied to the output line, which adds `answer`. Answers come from
`itune.inference.generation.generate`: batched, left-padded, stopped at the template's end-of-turn token.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from itune.data.formats import to_conversation
from itune.data.sources import read_jsonl
from itune.inference.generation import generate
from itune.inference.loading import load_model

log = logging.getLogger(__name__)


def read_prompts(prompts: list[str] | None, input_path: str | None) -> list[dict[str, Any]]:
    """Rows from `prompts` (strings) and/or a JSONL file (`-` reads stdin), one JSON object per line."""
    rows: list[dict[str, Any]] = [{"prompt": p} for p in prompts or []]
    if input_path:
        rows += [row for _, row in read_jsonl(input_path, "prompt file")]
    if not rows:
        raise ValueError("no prompts: give prompts='[\"Hello\", ...]' or input=<file.jsonl>")
    return rows


def run_generate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Load the model (`run` or `model` + `template`), answer every prompt, write `output` (JSONL).

    Returns:
        the output rows (input keys + `answer`).
    """
    from itune.config_schema import check_group_keys

    check_group_keys(cfg)  # a misspelt model/eval key fails before anything loads
    rows = read_prompts(list(cfg.get("prompts") or []), cfg.get("input"))
    conversations = [
        to_conversation(r, cfg.get("system_prompt"), f"{cfg.get('input') or 'prompts'}, item {i + 1}")
        for i, r in enumerate(rows)
    ]
    model, tokenizer, template = load_model(cfg, merged=cfg.get("merge", True))
    torch.manual_seed(cfg.get("seed", 0))  # reproducible sampling
    if cfg.get("device"):
        model.to(cfg.device)
    answers = generate(
        model,
        tokenizer,
        template,
        conversations,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    out_rows = [{**r, "answer": a} for r, a in zip(rows, answers, strict=True)]
    empty = sum(not a.strip() for a in answers)
    if empty:
        log.warning(
            "%d of %d answers are empty: the model stopped at once%s. Try another prompt or system_prompt, "
            "do_sample=true, or check that the run's template matches the model",
            empty,
            len(answers),
            " (greedy decoding picked the end-of-turn token first)" if not cfg.do_sample else "",
        )
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows)
    if cfg.get("output") in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text, encoding="utf-8")
        log.info("%d answers → %s", len(out_rows), cfg.output)
    return out_rows
