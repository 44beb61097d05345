"""User-side classes for itune's extension points; nothing in itune is edited to use them.

- `DropWord`: a curation filter (`curate` group) dropping rows that contain a word;
- `WordCountSuite`: an eval suite (`eval` group) with deterministic per-item scores;
- `TagTemplate`: a prompt template (`template` group) with its own markers;
- `L1Adapter`: a training-loss term (`regularizer` group), the L1 norm of the adapter weights.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.curate import Filter, Verdict, conversation_text
from itune.data.templates import Message, Segment, Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.regularizers import Regularizer


class DropWord(Filter):
    """Drop every row whose turns contain `word` (whole word, any case); the audit counts the drops.

    Args:
        word: the word to look for.
        roles: turns to scan (None: all).
    """

    def __init__(self, word: str, roles: list[str] | None = None) -> None:
        if not word.strip():
            raise ValueError("curate DropWord needs a non-empty word")
        self.word, self.roles = word, roles
        self._pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)

    def __call__(self, messages: list[Message]) -> Verdict:
        found = self._pattern.findall(conversation_text(messages, self.roles))
        return Verdict("drop", messages, f"{self.word} x{len(found)}") if found else Verdict("keep", messages)


class WordCountSuite(ScoredSuite):
    """Per prompt: its words and the tokens of its prompt in the run's template; means as metrics.

    Deterministic (it reads the model's config, never its weights), so base and tuned score the same.

    Args:
        prompts: the prompts.
        kind: `domain` or `general`, for the forgetting report.
    """

    def __init__(self, prompts: list[str], kind: str = "domain") -> None:
        if not prompts:
            raise ValueError("WordCountSuite needs prompts")
        self.prompts, self.kind = list(prompts), kind

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]], ItemScores]:
        rows = [
            {
                "id": i,
                "words": len(p.split()),
                "prompt_tokens": len(template.encode_prompt([{"role": "user", "content": p}])),
            }
            for i, p in zip(item_ids(self.prompts), self.prompts, strict=True)
        ]
        metrics = {c: sum(r[c] for r in rows) / len(rows) for c in ("words", "prompt_tokens")}
        metrics["vocab_size"] = float(model.config.vocab_size)
        samples = [{"prompt": p, "answer": str(r["words"])} for p, r in zip(self.prompts, rows, strict=True)]
        return metrics, samples, item_scores(means(["words", "prompt_tokens"]), rows)


class TagTemplate(Template):
    """Turns introduced by tags on their own line: `[[USER]]\\n…\\n[[BOT]]\\n…<eos>\\n`.

    Trained: the assistant's content and the end-of-turn text after it; tags and newlines are not.

    Args:
        tokenizer: the tokenizer (injected by itune).
        name: template name saved with the run.
        tags: the tag of each role (system, user, assistant).
        end_of_turn: text closing an assistant turn (default: the tokenizer's EOS token).
        system_prompt: system turn used when a conversation has none.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "tags",
        tags: dict[str, str] | None = None,
        end_of_turn: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer, self.name, self.system_prompt = tokenizer, name, system_prompt
        self.tags = {"system": "[[SYSTEM]]", "user": "[[USER]]", "assistant": "[[BOT]]"} | dict(tags or {})
        self._end = end_of_turn or tokenizer.eos_token

    @property
    def end_of_turn(self) -> str:
        return self._end

    def segments(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        segs: list[Segment] = []
        for m in self._with_system(messages):
            segs.append(Segment(self.tags[m["role"]] + "\n", False))
            if m["role"] == "assistant":
                segs += [Segment(m["content"] + self._end, True, "assistant"), Segment("\n", False)]
            else:
                segs.append(Segment(m["content"] + "\n", False, m["role"]))
        if add_generation_prompt:
            segs.append(Segment(self.tags["assistant"] + "\n", False))
        return segs

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "tags",
            "name": self.name,
            "tags": self.tags,
            "end_of_turn": self._end,
            "system_prompt": self.system_prompt,
        }


class L1Adapter(Regularizer):
    """weight * Σ |θ| over the trainable adapter weights (`lora_` parameters); logged as `train/l1_adapter`.

    Args:
        weight: the term's factor in the loss.
    """

    name = "l1_adapter"

    def __init__(self, weight: float = 1e-3) -> None:
        super().__init__(weight)
        self.names: list[str] = []

    def setup(self, model: nn.Module) -> None:
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        if not self.names:
            raise ValueError("regularizer=l1_adapter needs an adapter (peft=lora) with trainable weights")

    def forward(self, model: nn.Module, kl_to_base: torch.Tensor | None) -> torch.Tensor:
        params = dict(model.named_parameters())
        return torch.stack([params[n].float().abs().sum() for n in self.names]).sum()
