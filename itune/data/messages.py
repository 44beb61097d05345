"""The one message type between data stages: `[{"role": ..., "content": ...}]`, and the label to ignore.

Formats produce messages, curate filters rewrite them, templates turn them into tokens; nothing here
imports transformers, so the pure stages stay light.
"""

from __future__ import annotations

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value the loss skips


def check_messages(messages: list[Message]) -> None:
    """Raise ValueError unless `messages` is a list of {role, content} turns with a known role.

    A system turn may only come first.

    >>> check_messages([{"role": "user", "content": "Hi"}])
    >>> check_messages([{"role": "bot", "content": "Hi"}])
    Traceback (most recent call last):
    ...
    ValueError: message 0 has role 'bot'; valid roles: system, user, assistant
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{role, content}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must have exactly the keys role and content, got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; valid roles: {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i} is a system turn; a system turn may only come first")
