"""Prompt templates: messages → token ids + labels, with the loss mask built by construction.

A template renders a conversation as a list of segments, each marked trained or not, and tokenizes the
segments one by one. Training, evaluation and inference all call the same `encode`/`encode_prompt`, so the
model sees exactly the same tokens everywhere. Mask policy: the content of every assistant turn and the
end-of-turn token that closes it are trained; everything else (system, user, role headers, separators,
padding) is not.

Example:
    >>> t = RoleTemplate(tokenizer, **CHATML)            # doctest: +SKIP
    >>> t.encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    {'input_ids': [...], 'labels': [-100, ..., <Hello ids>, <|im_end|> id, -100]}
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

# the message seam lives in itune.data.messages; these names stay importable from here
from itune.data.messages import IGNORE_INDEX as IGNORE_INDEX
from itune.data.messages import ROLES as ROLES
from itune.data.messages import Message as Message
from itune.data.messages import check_messages as check_messages

MASK_POLICY = "assistant content + the end-of-turn token after each assistant turn; all else masked"
_PROBE = [
    {"role": "system", "content": "Probe system."},
    {"role": "user", "content": "Probe question?"},
    {"role": "assistant", "content": "Probe answer."},
]


class TemplateError(ValueError):
    """A template cannot render a conversation with the given tokenizer."""


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text and whether its tokens are trained."""

    text: str
    trained: bool
    role: str = ""  # the turn the text belongs to; "" for template markup (headers, separators, BOS)


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring segments with the same `trained` flag and drop empty ones."""
    merged: list[Segment] = []
    for s in segments:
        if not s.text:
            continue
        if merged and merged[-1].trained == s.trained:
            merged[-1] = Segment(merged[-1].text + s.text, s.trained)
        else:
            merged.append(s)
    return merged


class Template:
    """Base class: subclasses implement `segments` and `spec`; this class tokenizes and fingerprints."""

    name: str
    tokenizer: PreTrainedTokenizerBase
    system_prompt: str | None

    def segments(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The template's defining text and settings (saved with every run)."""
        raise NotImplementedError

    @property
    def end_of_turn(self) -> str:
        """The text that closes an assistant turn (trained, and the stop string at inference)."""
        raise NotImplementedError

    def _with_system(self, messages: list[Message]) -> list[Message]:
        check_messages(messages)
        if self.system_prompt is not None and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, messages: list[Message]) -> dict[str, list[int]]:
        """Token ids and labels (IGNORE_INDEX where not trained) for a whole conversation."""
        input_ids: list[int] = []
        labels: list[int] = []
        for seg in _merge(self.segments(messages)):
            ids = self._ids(seg.text)
            input_ids += ids
            labels += ids if seg.trained else [IGNORE_INDEX] * len(ids)
        return {"input_ids": input_ids, "labels": labels}

    def encode_batch(self, conversations: list[list[Message]]) -> list[dict[str, list[int]]]:
        """`encode` of many conversations with one batched tokenizer call (the same ids and labels)."""
        merged = [_merge(self.segments(m)) for m in conversations]
        texts = [seg.text for segs in merged for seg in segs]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        out, k = [], 0
        for segs in merged:
            input_ids: list[int] = []
            labels: list[int] = []
            for seg in segs:
                input_ids += ids[k]
                labels += ids[k] if seg.trained else [IGNORE_INDEX] * len(ids[k])
                k += 1
            out.append({"input_ids": input_ids, "labels": labels})
        return out

    def role_token_counts(self, messages: list[Message]) -> dict[str, list[int]]:
        """{role: [tokens, trained tokens]} of a conversation; template markup counts as `markup`.

        A token belongs to the turn its first character is in (by the tokenizer's offsets); tokenizers
        without offsets attribute each tokenized piece to the turn of its first character.
        """
        segs = self.segments(messages)
        starts, roles, pos = [], [], 0
        for s in segs:
            starts.append(pos)
            roles.append(s.role or "markup")
            pos += len(s.text)
        counts: dict[str, list[int]] = {}
        pos = 0
        for seg in _merge(segs):
            try:
                offsets = self.tokenizer(seg.text, add_special_tokens=False, return_offsets_mapping=True)[
                    "offset_mapping"
                ]
            except (NotImplementedError, ValueError):
                offsets = [(0, 0)] * len(self._ids(seg.text))
            for a, _ in offsets:
                role = roles[bisect.bisect_right(starts, pos + a) - 1]
                c = counts.setdefault(role, [0, 0])
                c[0] += 1
                c[1] += int(seg.trained)
            pos += len(seg.text)
        return counts

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Token ids of a conversation followed by the assistant header, ready for generation."""
        ids: list[int] = []
        for seg in _merge(self.segments(messages, add_generation_prompt=True)):
            ids += self._ids(seg.text)
        return ids

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as text (for display and export checks)."""
        return "".join(s.text for s in self.segments(messages, add_generation_prompt))

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end generation: the end-of-turn token and the tokenizer's EOS."""
        ids = [self._ids(self.end_of_turn)[-1]]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @property
    def fingerprint(self) -> str:
        """sha256 of the spec and of the token ids of a probe conversation (so the tokenizer counts too)."""
        payload = {"spec": self.spec(), "probe": self.encode(_PROBE), "stop": self.stop_token_ids}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Everything saved to template.json in a run directory."""
        return {
            "name": self.name,
            "spec": self.spec(),
            "mask_policy": MASK_POLICY,
            "end_of_turn": self.end_of_turn,
            "stop_token_ids": self.stop_token_ids,
            "special_tokens": {
                k: getattr(self.tokenizer, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            },
            "example": self.render(_PROBE),
            "fingerprint": self.fingerprint,
        }


class RoleTemplate(Template):
    """A template written as text around each turn: chatml, alpaca, llama3 (see conf/template/).

    Args:
        tokenizer: tokenizer the template is bound to.
        name: template name, shown in errors and saved with the run.
        roles: for each role, the `prefix` before and the `suffix` after its content. The assistant suffix
            is the end-of-turn text and is trained. `{eos_token}` is replaced by the tokenizer's EOS.
        bos: text at the start of every conversation (not trained).
        separator: text after each assistant suffix (not trained), e.g. the newline after <|im_end|>.
        system_prompt: system turn used when a conversation has none; None for no system turn.
        special_tokens: marker strings that must be single tokens of the tokenizer.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        roles: dict[str, dict[str, str]],
        bos: str = "",
        separator: str = "",
        system_prompt: str | None = None,
        special_tokens: list[str] | None = None,
    ) -> None:
        self.tokenizer, self.name, self.system_prompt = tokenizer, name, system_prompt
        missing = set(ROLES) - set(roles)
        if missing:
            raise TemplateError(f"template {name!r} has no text for roles {sorted(missing)}")

        def fill(text: str) -> str:
            return text.replace("{eos_token}", tokenizer.eos_token or "")

        self.roles = {r: {k: fill(v) for k, v in parts.items()} for r, parts in roles.items()}
        self.bos, self.separator = fill(bos), fill(separator)
        self.special_tokens = list(special_tokens or [])
        if not self.roles["assistant"].get("suffix"):
            raise TemplateError(f"template {name!r}: the assistant suffix (end of turn) must not be empty")
        self._check_special_tokens()

    def _check_special_tokens(self) -> None:
        vocab = self.tokenizer.get_vocab()
        lacking = [t for t in self.special_tokens if t not in vocab or len(self._ids(t)) != 1]
        if lacking:
            raise TemplateError(
                f"template {self.name!r} needs special tokens {lacking} that the tokenizer "
                f"{self.tokenizer.name_or_path!r} does not have as single tokens. Pick a template that "
                f"matches the model (template=tokenizer uses the model's own chat template)."
            )

    @property
    def end_of_turn(self) -> str:
        return self.roles["assistant"]["suffix"]

    def segments(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        segs = [Segment(self.bos, False)]
        for m in self._with_system(messages):
            role = self.roles[m["role"]]
            trained = m["role"] == "assistant"
            segs += [
                Segment(role.get("prefix", ""), False),
                Segment(m["content"] + role.get("suffix", ""), trained, m["role"]),
            ]
            if trained:
                segs.append(Segment(self.separator, False))
        if add_generation_prompt:
            segs.append(Segment(self.roles["assistant"].get("prefix", ""), False))
        return segs

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "roles",
            "name": self.name,
            "bos": self.bos,
            "roles": self.roles,
            "separator": self.separator,
            "system_prompt": self.system_prompt,
        }


class TokenizerTemplate(Template):
    """The model's own Jinja chat template, with the mask built from renderings of growing prefixes.

    Each turn's text is the difference between rendering the conversation up to and including that turn
    and rendering it up to the turn before (with the generation prompt for assistant turns), so a template
    that rewrites earlier turns (and so cannot be trained turn by turn) is refused.

    Args:
        tokenizer: tokenizer whose `chat_template` is used (or `chat_template` if given).
        name: template name for errors and the run record.
        system_prompt: system turn used when a conversation has none (None keeps the template's default).
        chat_template: a Jinja template to use instead of the tokenizer's.
        end_of_turn: text that closes an assistant turn; defaults to the tokenizer's EOS token.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "tokenizer",
        system_prompt: str | None = None,
        chat_template: str | None = None,
        end_of_turn: str | None = None,
    ) -> None:
        self.tokenizer, self.name, self.system_prompt = tokenizer, name, system_prompt
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise TemplateError(
                f"template {name!r}: tokenizer {tokenizer.name_or_path!r} has no chat_template; "
                "pick template=chatml, alpaca or llama3, or set template.chat_template"
            )
        self._end = end_of_turn or tokenizer.eos_token
        if not self._end:
            raise TemplateError(f"template {name!r}: set template.end_of_turn (the tokenizer has no EOS)")
        self.segments(_PROBE)  # fail now, naming the template, if it cannot render

    @property
    def end_of_turn(self) -> str:
        return self._end

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as e:  # jinja errors, raise_exception() inside templates
            raise TemplateError(f"template {self.name!r} cannot render {messages!r}: {e}") from e

    def _tail(self, before: str, after: str) -> str:
        if not after.startswith(before):
            raise TemplateError(
                f"template {self.name!r} rewrites earlier turns when a turn is added, so its loss mask "
                f"cannot be built turn by turn; pick template=chatml, alpaca or llama3"
            )
        return after[len(before) :]

    def segments(self, messages: list[Message], add_generation_prompt: bool = False) -> list[Segment]:
        msgs = self._with_system(messages)
        segs: list[Segment] = []
        done = ""
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                head = self._render(msgs[:i], add_generation_prompt=True) if i else ""
                segs.append(Segment(self._tail(done, head), False))
                full = self._render(msgs[: i + 1], add_generation_prompt=False)
                body = self._tail(head, full)
                cut = body.rfind(self._end)
                if cut < 0:
                    raise TemplateError(
                        f"template {self.name!r} does not close assistant turns with {self._end!r}; "
                        "set template.end_of_turn to the text that does"
                    )
                cut += len(self._end)
                segs += [Segment(body[:cut], True, "assistant"), Segment(body[cut:], False)]
            else:
                full = self._render(msgs[: i + 1], add_generation_prompt=False)
                segs.append(Segment(self._tail(done, full), False, m["role"]))
            done = full
        if add_generation_prompt:
            segs.append(Segment(self._tail(done, self._render(msgs, add_generation_prompt=True)), False))
        return segs

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "tokenizer",
            "name": self.name,
            "chat_template": self.chat_template,
            "end_of_turn": self._end,
            "system_prompt": self.system_prompt,
        }
