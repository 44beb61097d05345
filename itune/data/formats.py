"""Row formats: one raw row (a plain dict) → messages `[{"role": ..., "content": ...}]`.

Each format names the fields it reads; a field map renames a dataset's own columns to them, e.g.
`fields: {instruction: question, output: answer}` reads `question`/`answer` as alpaca's instruction/output.

A source's `format` is a built-in name (alpaca, dolly, flan, messages) or the dotted path of a user's
function `row -> messages` or class (instantiated once without arguments; its instances convert rows),
e.g. `format: mypkg.formats.Ticket`. It gets the row without its null fields, raises RowError for a bad
row (a KeyError counts as a missing field) and may list the fields it reads in a `fields` attribute.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from itune.data.messages import Message, check_messages

RowFormat = Callable[[Mapping[str, Any]], list[Message]]


class RowError(ValueError):
    """A row does not have the fields or types its format needs."""


def _text(row: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value


def _turns(user: str, assistant: str) -> list[Message]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def alpaca(row: Mapping[str, Any]) -> list[Message]:
    """Alpaca: instruction, optional input, output.

    >>> alpaca({"instruction": "Add.", "input": "1+1", "output": "2"})[0]["content"]
    'Add.\\n\\n1+1'
    """
    instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _turns(user, _text(row, "output"))


def dolly(row: Mapping[str, Any]) -> list[Message]:
    """Dolly: instruction, optional context, response.

    >>> dolly({"instruction": "Who?", "context": "Ann wrote it.", "response": "Ann"})[0]["content"]
    'Ann wrote it.\\n\\nWho?'
    """
    instruction, context = _text(row, "instruction"), _text(row, "context", required=False)
    user = f"{context}\n\n{instruction}" if context.strip() else instruction
    return _turns(user, _text(row, "response"))


def flan(row: Mapping[str, Any]) -> list[Message]:
    """FLAN / P3: inputs, targets.

    >>> flan({"inputs": "Is the sky blue?", "targets": "yes"})[1]
    {'role': 'assistant', 'content': 'yes'}
    """
    return _turns(_text(row, "inputs"), _text(row, "targets"))


def messages(row: Mapping[str, Any]) -> list[Message]:
    """Chat: a `messages` list of role/content turns (optional leading system turn).

    >>> messages({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})[1]
    {'role': 'assistant', 'content': 'Yo'}
    """
    turns = row.get("messages")
    if turns is None:
        raise RowError("missing field 'messages'")
    try:
        check_messages(turns)
    except ValueError as e:
        raise RowError(str(e)) from e
    turns = [{"role": m["role"], "content": m["content"]} for m in turns]
    if not any(m["role"] == "assistant" and m["content"].strip() for m in turns):
        raise RowError("no assistant turn with content (nothing to train on)")
    return turns


FORMATS: dict[str, RowFormat] = {
    "alpaca": alpaca,
    "dolly": dolly,
    "flan": flan,
    "messages": messages,
}
FIELDS = {
    "alpaca": ["instruction", "input (optional)", "output"],
    "dolly": ["instruction", "context (optional)", "response"],
    "flan": ["inputs", "targets"],
    "messages": ["messages: [{role, content}, ...]"],
}
VALID = f"{', '.join(FORMATS)}, or the dotted path of a function or class (row -> messages)"


@functools.cache
def _import_format(path: str) -> RowFormat:
    module, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"format {path!r} cannot be imported ({type(e).__name__}: {e}); valid formats: {VALID}"
        ) from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as e:
            raise ValueError(f"format class {path!r} must take no arguments ({e})") from None
    if not callable(obj):
        raise ValueError(f"format {path!r} is a {type(obj).__name__}, not callable; valid formats: {VALID}")
    return obj


def get_format(name: str) -> RowFormat:
    """The row → messages function of a format name or dotted path; ValueError listing the valid ones.

    >>> get_format("sharegpt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown format 'sharegpt'; valid formats: alpaca, dolly, flan, messages, or the dotted ...
    """
    if not isinstance(name, str) or "." not in name.strip("."):
        if isinstance(name, str) and name in FORMATS:
            return FORMATS[name]
        raise ValueError(f"unknown format {name!r}; valid formats: {VALID}")
    return _import_format(name)


def format_version(name: str) -> str:
    """What identifies a format's code in cache keys: the name, plus a hash of a user format's source."""
    if name in FORMATS:
        return name
    fn = get_format(name)
    try:
        code = inspect.getsource(fn if inspect.isfunction(fn) else type(fn))
    except (OSError, TypeError):
        return name
    return f"{name}:{hashlib.sha256(code.encode()).hexdigest()[:16]}"


def _user_messages(fn: RowFormat, row: Mapping[str, Any]) -> list[Message]:
    """A user format's messages, checked: a KeyError is a missing field, bad turns are a RowError.

    Null fields are left out of the row (a JSONL row without a column reads it as null).
    """
    try:
        turns = fn({k: v for k, v in row.items() if v is not None})
    except KeyError as e:
        raise RowError(f"missing field {e.args[0]!r}") from None
    try:
        check_messages(turns)
    except ValueError as e:
        raise RowError(f"it returned bad messages: {e}") from None
    return turns


def to_messages(
    row: Mapping[str, Any], format: str, fields: Mapping[str, str] | None = None
) -> list[Message]:
    """Convert one row with a format and an optional field map {format field: column name}.

    >>> to_messages({"q": "Hi?", "a": "Hello."}, "alpaca", {"instruction": "q", "output": "a"})[1]["content"]
    'Hello.'
    """
    fn = get_format(format)
    if fields:
        absent = [have for have in fields.values() if have not in row]
        if absent:
            raise RowError(f"missing column(s) {absent} named in the field map {dict(fields)}")
        row = {**row, **{want: row[have] for want, have in fields.items()}}
    try:
        return fn(row) if format in FORMATS else _user_messages(fn, row)
    except RowError as e:
        expected = FIELDS.get(format) or getattr(fn, "fields", None)
        hint = f" expects fields {expected}" if expected else ""
        raise RowError(f"{e}; format {format!r}{hint}") from None


def to_conversation(row: dict[str, Any], system_prompt: str | None = None, where: str = "") -> list[Message]:
    """A prompt row → the conversation to answer (eval prompt files, itune-generate input).

    A row is `{"prompt": str}` (one user turn), `{"messages": [{role, content}, ...]}` (a system turn and
    earlier turns, ending with the user turn to answer) or Alpaca-style `{"instruction", "input"}`; a
    `system_prompt` is prepended when the row has no system turn.

    >>> to_conversation({"prompt": "Hi"}, "Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(row.get("messages"), list):
        try:
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: `messages` must be a list of {{role, content}} objects") from None
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    elif isinstance(row.get("instruction"), str):
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": text}]
    else:
        raise ValueError(f"{where}: expected a `prompt`, `messages` or `instruction` key, got {sorted(row)}")
    if system_prompt is not None and messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"{where}: a conversation to answer must end with a user turn")
    return messages
