"""A data format is an extension point: a class (or function) in the user's own module, named by its dotted
path in a source's `format:`, prepares a source with nothing in itune edited."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from itune.config_schema import check_config
from itune.data.formats import RowError, to_messages
from itune.data.messages import IGNORE_INDEX
from tests.conftest import write_jsonl
from tests.test_templates import build


class Ticket:
    """A support-ticket export: {subject, body, reply} → the customer's turn and the agent's reply."""

    fields = ["subject", "body", "reply"]

    def __call__(self, row: dict) -> list[dict[str, str]]:
        if not row.get("reply"):
            raise RowError("field 'reply' is empty")
        return [
            {"role": "user", "content": f"{row['subject']}\n\n{row['body']}"},
            {"role": "assistant", "content": row["reply"]},
        ]


def shout(row: dict) -> list[dict[str, str]]:
    """A format as a plain function: the answer in capitals."""
    return [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"].upper()}]


def not_messages(row: dict) -> list[dict[str, str]]:
    return [{"role": "bot", "content": "?"}]


TICKET, SHOUT = f"{__name__}.Ticket", f"{__name__}.shout"
TICKETS = [
    {"subject": f"Card {i} blocked", "body": "Please help.", "reply": f"Card {i} is unblocked."}
    for i in range(6)
]


def test_a_format_class_named_in_the_config_prepares_a_source(tmp_path, tokenizer, compose_train):
    path = write_jsonl(tmp_path / "tickets.jsonl", TICKETS)
    cfg = compose_train(
        "data=alpaca",
        "data.sources.alpaca.path=" + str(path),
        "data.sources.alpaca.format=" + TICKET,
        "data.val_fraction=0",
    )
    check_config(cfg)  # the dotted path is a valid config value
    template = build("chatml", tokenizer)
    dm = instantiate(cfg.data, tokenizer=tokenizer, template=template)
    dm.setup("fit")
    assert len(dm.train_set) == 6 and dm.audit["sources"]["alpaca"]["format"] == TICKET
    (train, _val) = dm.prepared.parts[0]
    assert train[0]["messages"] == Ticket()(TICKETS[train[0]["row"]])
    for row in dm.train_set:
        expected = template.encode(Ticket()(TICKETS[row["row"]]))
        assert row["input_ids"] == expected["input_ids"] and row["labels"] == expected["labels"]
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX]
        assert tokenizer.decode(trained) == TICKETS[row["row"]]["reply"] + "<|im_end|>"


def test_a_format_function_and_its_bad_rows(tmp_path, tokenizer):
    from itune.data.datamodule import InstructDataModule

    rows = [{"q": f"q{i}?", "a": f"yes {i}"} for i in range(4)] + [{"q": "no answer"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    sources = {"qa": {"path": str(path), "format": SHOUT}}
    dm = InstructDataModule(sources, tokenizer, build("chatml", tokenizer), val_fraction=0, on_bad_row="skip")
    dm.setup("fit")
    assert dm.stats["data/qa/rows_malformed_skipped"] == 1 and len(dm.train_set) == 4
    assert dm.prepared.parts[0][0][0]["messages"][1]["content"] == "YES 0"
    with pytest.raises(
        RowError, match=r"row 4 .*missing field 'a'; format 'tests\.test_format_extension\.shout'"
    ):
        InstructDataModule(sources, tokenizer, build("chatml", tokenizer)).setup("fit")


def test_a_format_that_returns_bad_messages_is_a_row_error():
    with pytest.raises(RowError, match="returned bad messages: message 0 has role 'bot'"):
        to_messages({}, f"{__name__}.not_messages")
    with pytest.raises(RowError, match=r"field 'reply' is empty; format .* expects fields \['subject'"):
        to_messages({"subject": "s", "body": "b", "reply": ""}, TICKET)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("tests.test_format_extension.Tiket", "cannot be imported (AttributeError"),
        ("nowhere.formats.Chat", "cannot be imported (ModuleNotFoundError"),
        ("tests.test_format_extension.TICKETS", "is a list, not callable"),
        ("sharegpt", "unknown format 'sharegpt'"),
    ],
)
def test_a_bad_format_names_the_key_and_what_is_valid(tmp_path, tokenizer, fmt, message):
    from itune.data.datamodule import InstructDataModule

    path = write_jsonl(tmp_path / "t.jsonl", TICKETS)
    with pytest.raises(ValueError) as e:
        InstructDataModule(
            {"mine": {"path": str(path), "format": fmt}}, tokenizer, build("chatml", tokenizer)
        )
    text = str(e.value)
    assert "\n" not in text and text.startswith("data.sources.mine.format: ") and message in text
    assert "valid formats: alpaca, dolly, flan, messages, or the dotted path" in text
