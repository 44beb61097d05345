"""itune-chat: an interactive terminal chat with a run (or a base model), through its training template.

Type a message and press Enter; the reply streams token by token. `/reset` clears the history (the
system prompt stays), `/system <text>` sets a new system prompt and clears the history, `/exit` (or
Ctrl-D) quits. Prompts are encoded with `template.encode_prompt`, exactly as in training and evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TextIO

import torch
from omegaconf import DictConfig
from rich.console import Console
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextIteratorStreamer

from itune.data.templates import Message, Template
from itune.inference.generation import generation_config
from itune.inference.loading import load_model

HELP = "commands: /reset (clear history), /system <text> (new system prompt), /exit (quit)"


def stream_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    messages: list[Message],
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    """Yield the reply to `messages` in pieces as it is generated (stops at the template's end of turn)."""
    device = next(model.parameters()).device
    ids = torch.tensor([template.encode_prompt(messages)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = generation_config(template, tokenizer, max_new_tokens, do_sample, temperature, top_p)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "generation_config": config}
    worker = threading.Thread(
        target=lambda: model.generate(**kwargs, streamer=streamer), daemon=True, name="itune-chat-generate"
    )
    with torch.no_grad():
        worker.start()
        yield from streamer
        worker.join()


class ChatSession:
    """Conversation state: the system prompt and the turns so far."""

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt
        self.turns: list[Message] = []

    def reset(self) -> None:
        self.turns = []

    def messages(self) -> list[Message]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.turns


def chat_loop(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    session: ChatSession,
    console: Console,
    stdin: TextIO,
    max_new_tokens: int = 256,
    **sampling: float | bool,
) -> int:
    """Read lines from `stdin` until /exit or end of input; returns the number of replies."""
    replies = 0
    console.print(f"[dim]itune-chat · template {template.name} · {HELP}[/]")
    while True:
        console.print("[bold green]you>[/] ", end="")
        line = stdin.readline()
        if not line:  # Ctrl-D / end of input
            console.print()
            return replies
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return replies
        if text == "/reset":
            session.reset()
            console.print("[dim](history cleared)[/]")
            continue
        if text.startswith("/system"):
            session.system_prompt = text[len("/system") :].strip() or None
            session.reset()
            console.print("[dim](system prompt set, history cleared)[/]")
            continue
        if text.startswith("/"):
            console.print(f"[dim]unknown command {text.split()[0]}; {HELP}[/]")
            continue
        session.turns.append({"role": "user", "content": text})
        console.print("[bold cyan]assistant>[/] ", end="")
        pieces = []
        for piece in stream_reply(model, tokenizer, template, session.messages(), max_new_tokens, **sampling):
            pieces.append(piece)
            console.out(piece, end="", highlight=False)
            console.file.flush()
        console.print()
        session.turns.append({"role": "assistant", "content": "".join(pieces).strip()})
        replies += 1


def run_chat(cfg: DictConfig, stdin: TextIO | None = None, console: Console | None = None) -> int:
    """itune-chat: load `run` (or `model` + `template`) and chat on the terminal; returns the reply count."""
    from itune.config_schema import check_group_keys

    check_group_keys(cfg)  # a misspelt model/eval key fails before anything loads
    import sys

    model, tokenizer, template = load_model(cfg, merged=cfg.get("merge", True))
    if cfg.get("device"):
        model.to(cfg.device)
    torch.manual_seed(cfg.get("seed", 0))
    return chat_loop(
        model,
        tokenizer,
        template,
        ChatSession(cfg.get("system_prompt")),
        console or Console(highlight=False),
        stdin or sys.stdin,
        cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
