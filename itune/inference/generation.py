"""Batched generation through a template: left padding, KV cache, the template's stop tokens."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from itune.data.templates import Message, Template
from itune.inference.eval_mode import eval_mode


def generation_config(
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> GenerationConfig:
    """Explicit generation settings: greedy unless `do_sample`, stopping at the template's end of turn."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        eos_token_id=template.stop_token_ids,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    conversations: list[list[Message]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[str]:
    """Answer each conversation (greedy unless `do_sample`); returns the decoded replies in order.

    Prompts are encoded with `template.encode_prompt`, the same code path as training; generation stops
    at the template's end-of-turn token, which is cut from the reply.
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        prompts = [template.encode_prompt(c) for c in conversations]
        stop = template.stop_token_ids
        config = generation_config(template, tokenizer, max_new_tokens, do_sample, temperature, top_p)
        replies: list[str] = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths, less padding
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                input_ids[row, width - len(prompts[i]) :] = torch.as_tensor(prompts[i])
                attention_mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stop), len(new))
                replies[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    return replies
