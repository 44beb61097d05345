"""Format adapters on plain dicts, malformed rows included."""

from __future__ import annotations

import pytest

from itune.data.formats import RowError, to_messages


def turns(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        ("alpaca", {"instruction": "Add.", "input": "", "output": "2"}, turns("Add.", "2")),
        ("alpaca", {"instruction": "Add.", "input": "1+1", "output": "2"}, turns("Add.\n\n1+1", "2")),
        ("alpaca", {"instruction": "Add.", "output": "2"}, turns("Add.", "2")),
        ("dolly", {"instruction": "Who?", "context": "", "response": "Ann"}, turns("Who?", "Ann")),
        (
            "dolly",
            {"instruction": "Who?", "context": "Ann wrote.", "response": "Ann"},
            turns("Ann wrote.\n\nWho?", "Ann"),
        ),
        ("flan", {"inputs": "Sky blue?", "targets": "yes"}, turns("Sky blue?", "yes")),
        (
            "messages",
            {"messages": [{"role": "system", "content": "S"}, *turns("U", "A"), *turns("U2", "A2")]},
            [{"role": "system", "content": "S"}, *turns("U", "A"), *turns("U2", "A2")],
        ),
    ],
)
def test_formats(fmt, row, expected):
    assert to_messages(row, fmt) == expected


def test_field_map_renames_columns():
    row = {"question": "Q?", "answer": "A."}
    assert to_messages(row, "alpaca", {"instruction": "question", "output": "answer"}) == turns("Q?", "A.")


@pytest.mark.parametrize(
    ("fmt", "row", "message"),
    [
        ("alpaca", {"instruction": "x"}, "missing field 'output'"),
        ("alpaca", {"instruction": "x", "output": 3}, "'output' must be a string, got int"),
        ("alpaca", {"instruction": "  ", "output": "y"}, "'instruction' is empty"),
        ("dolly", {"instruction": "x", "output": "y"}, "missing field 'response'"),
        ("flan", {"inputs": "x"}, "missing field 'targets'"),
        ("messages", {"text": "x"}, "missing field 'messages'"),
        ("messages", {"messages": [{"role": "bot", "content": "x"}]}, "valid roles"),
        ("messages", {"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        (
            "messages",
            {"messages": [*turns("U", "A"), {"role": "system", "content": "S"}]},
            "may only come first",
        ),
        ("messages", {"messages": "hello"}, "non-empty list"),
    ],
)
def test_malformed_rows(fmt, row, message):
    with pytest.raises(RowError) as e:
        to_messages(row, fmt)
    assert message in str(e.value)
    assert "expects fields" in str(e.value)


def test_field_map_names_missing_column():
    with pytest.raises(RowError, match="missing column"):
        to_messages({"q": "x"}, "alpaca", {"instruction": "q", "output": "a"})


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="valid formats: alpaca, dolly, flan, messages"):
        to_messages({}, "sharegpt")
