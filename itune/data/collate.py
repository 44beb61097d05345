"""Batch tokenized examples: right padding, labels masked on padding."""

from __future__ import annotations

from typing import Any

import torch

from itune.data.templates import IGNORE_INDEX


class PadCollator:
    """Pad `input_ids`/`labels` to the longest example (rounded up to `pad_to_multiple_of`).

    Padding positions get attention 0 and label IGNORE_INDEX; the pad id never decides what is trained,
    so a tokenizer whose pad token equals its EOS still trains the EOS. Other integer fields (such as
    `source`) are stacked as they are.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = max(1, pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        width = -(-longest // self.multiple) * self.multiple
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[i, :k] = torch.as_tensor(e["input_ids"])
            labels[i, :k] = torch.as_tensor(e["labels"])
            attention_mask[i, :k] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if "source" in examples[0]:
            batch["source"] = torch.as_tensor([e["source"] for e in examples], dtype=torch.long)
        return batch
