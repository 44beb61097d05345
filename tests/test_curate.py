"""Curation filters on plain strings and messages: PII, duplicates, terms, decontamination, length."""

from __future__ import annotations

import json

import pytest

from itune.data.curate import (
    PII,
    Decontaminate,
    ExactDedup,
    Length,
    NearDedup,
    Terms,
    build_filters,
    curate_batch,
    iban_ok,
    luhn_ok,
    normalise,
    redact_pii,
)


def chat(user: str, answer: str = "ok") -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# ------------------------------------------------------------------------------------------------- PII
@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        ("write to ann.lee+x@mail.example.co.uk now", "write to [EMAIL] now", {"email": 1}),
        ("call (555) 123-4567 today", "call [PHONE] today", {"phone": 1}),
        ("call +44 20 7946 0958", "call [PHONE]", {"phone": 1}),
        ("call 555-123-4567.", "call [PHONE].", {"phone": 1}),
        ("visa 4111 1111 1111 1111 ok", "visa [CREDIT_CARD] ok", {"credit_card": 1}),
        ("amex 378282246310005", "amex [CREDIT_CARD]", {"credit_card": 1}),
        ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]", {"iban": 1}),
        ("iban GB82WEST12345698765432", "iban [IBAN]", {"iban": 1}),
        ("ssn 123-45-6789", "ssn [SSN]", {"ssn": 1}),
        ("host 192.168.1.20 and 2001:db8::8a2e:370:7334", "host [IP_ADDRESS] and [IP_ADDRESS]", {"ip": 2}),
    ],
)
def test_pii_is_found_and_typed(text, expected, counts):
    assert redact_pii(text) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 failed",  # fails Luhn: not a card
        "iban DE89 3704 0044 0532 0130 01",  # fails mod-97
        "ssn 000-12-3456 is invalid",  # SSNs never start with 000
        "version 1.2.3 on 300.1.1.1",  # not an IPv4 address
        "in 2023-01-15 we sold 10 100 1000 items at 12:30:45",  # dates, counts, times
        "the ratio 3.14159 and 42",
        "circumference 50.265482457436694 cm",  # decimals are not card numbers (this one passes Luhn)
    ],
)
def test_pii_leaves_lookalikes(text):
    assert redact_pii(text) == (text, {})


def test_luhn_and_iban():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710") and not luhn_ok("12a4")
    assert iban_ok("FR14 2004 1010 0505 0001 3M02 606") and not iban_ok("FR14 2004")


def test_pii_filter_redact_or_drop_and_unknown_kind():
    msgs = chat("mail me at bob@example.com", "sure, bob@example.com")
    v = PII()(msgs)
    assert v.action == "redact" and v.detail == "email:2"
    assert [m["content"] for m in v.messages] == ["mail me at [EMAIL]", "sure, [EMAIL]"]
    assert msgs[0]["content"] == "mail me at bob@example.com"  # the input is not mutated
    assert PII(action="drop")(msgs).action == "drop"
    assert PII(roles=["assistant"])(msgs).messages[0]["content"] == "mail me at bob@example.com"
    assert PII(kinds=["phone"])(msgs).action == "keep"
    with pytest.raises(ValueError, match="unknown PII kind.*valid kinds: email"):
        PII(kinds=["passport"])
    with pytest.raises(ValueError, match="valid: redact, drop"):
        PII(action="flag")


# ------------------------------------------------------------------------------------------ duplicates
def test_normalise_and_exact_dedup_key():
    assert normalise("Hello,  World!") == normalise("hello world")
    f = ExactDedup()
    assert f.key(chat("Hello,  World!")) == f.key(chat("hello world"))
    assert f.key(chat("hello world", "a")) != f.key(chat("hello world", "b"))
    assert ExactDedup(scope="prompt").key(chat("hi", "a")) == ExactDedup(scope="prompt").key(chat("hi", "b"))
    index = f.index()
    assert index.check_add(f.key(chat("x")), ("a", 0)) is None
    assert index.check_add(f.key(chat("X!")), ("b", 5)) == ("a", 0)


def test_near_dedup_catches_small_edits_not_different_text():
    base = " ".join(f"word{i}" for i in range(60))
    near = base.replace("word30", "changed")  # one word of sixty
    other = " ".join(f"other{i}" for i in range(60))
    f = NearDedup(threshold=0.7)
    index = f.index()
    sig_base, sig_near, sig_other = f.keys([chat(base), chat(near), chat(other)])
    assert index.check_add(sig_base, ("a", 0)) is None
    assert index.check_add(sig_near, ("a", 1)) == ("a", 0)
    assert index.check_add(sig_other, ("a", 2)) is None
    assert f.key(chat(base)) == sig_base  # deterministic
    with pytest.raises(ValueError, match=r"threshold=1.5 must be in \(0, 1\]"):
        NearDedup(threshold=1.5)


# --------------------------------------------------------------------------------------------- terms
def test_terms_flag_or_drop_on_word_boundaries(tmp_path):
    terms_file = tmp_path / "terms.txt"
    terms_file.write_text("# legal markers\nTrade Secret\n\n", encoding="utf-8")
    f = Terms(terms=["confidential"], files=[str(terms_file)], action="flag")
    v = f(chat("This is CONFIDENTIAL and a trade  secret?", "no"))
    assert v.action == "flag" and v.detail == "confidential"  # "trade  secret" has two spaces: no match
    assert f(chat("a trade secret")).detail == "trade secret"
    assert f(chat("nonconfidential stuff")).action == "keep"  # word boundaries
    assert Terms(terms=["confidential"], action="drop")(chat("confidential")).action == "drop"
    assert Terms(terms=["x"], roles=["assistant"])(chat("x", "y")).action == "keep"
    assert Terms()(chat("anything")).action == "keep"
    with pytest.raises(FileNotFoundError, match="term list .*missing.txt not found"):
        Terms(files=[str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="valid: drop, flag"):
        Terms(action="redact")


# ------------------------------------------------------------------------------------- decontamination
EVAL_PROMPT = (
    "Write a 300+ word summary of the wikipedia page about the history of the printing press, "
    "do not use any commas and highlight at least 3 sections"
)


def test_decontaminate_drops_rows_sharing_long_ngrams(tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [
        {"key": 1, "prompt": EVAL_PROMPT, "instruction_id_list": ["punctuation:no_comma"]},
        {"key": 2, "prompt": "Say hi.", "instruction_id_list": []},  # too short to count
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    f = Decontaminate(files=[str(path)], n=13)
    assert f.eval_texts == 1
    planted = chat("Please help. " + EVAL_PROMPT.upper().replace(",", " ;"), "Sure.")  # case, punctuation
    v = f(planted)
    assert v.action == "drop" and v.detail.startswith("eval.jsonl: 'write a 300 word summary")
    assert f(chat("Write a summary of the printing press.")).action == "keep"
    assert f(chat("Say hi.")).action == "keep"
    short = Decontaminate(files=[str(path)], n=50, min_words=8)  # eval text shorter than n: matched whole
    assert short(planted).action == "drop" and short(chat(EVAL_PROMPT[:60])).action == "keep"
    assert Decontaminate(files=[str(path)], fields=["prompt"]).eval_texts == 1
    with pytest.raises(ValueError, match=r"no column\(s\) \['question'\]"):
        Decontaminate(files=[str(path)], fields=["question"])
    assert Decontaminate()(planted).action == "keep"  # no eval files: nothing to check


# -------------------------------------------------------------------------------------------- length
@pytest.mark.parametrize(
    ("kwargs", "n_tokens", "n_trained", "action"),
    [
        ({"min_tokens": 5}, 4, 2, "drop"),
        ({"min_tokens": 5}, 5, 2, "keep"),
        ({"max_tokens": 10}, 11, 2, "drop"),
        ({"min_trained_tokens": 1}, 11, 0, "drop"),
    ],
)
def test_length(kwargs, n_tokens, n_trained, action):
    assert Length(**kwargs).check(n_tokens, n_trained)[0] == action


def test_length_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="max_tokens=2 < min_tokens=5"):
        Length(min_tokens=5, max_tokens=2)


# ------------------------------------------------------------------------------------------ pipeline
def test_curate_batch_runs_filters_in_order():
    filters = build_filters(
        {
            "pii": PII(),
            "dedup": ExactDedup(),
            "off": None,  # switched off with curate.filters.off=null
            "terms": Terms(terms=["secret"], action="drop"),
            "near": NearDedup(),
        }
    )
    assert [f.name for f in filters] == ["pii", "dedup", "terms", "near"]
    batch = {"messages": [chat("mail a@b.io"), chat("a secret"), chat("fine")], "row": [0, 1, 2]}
    out = curate_batch(batch, filters)
    assert out["drop_at"] == [4, 2, 4]
    assert out["messages"][0][0]["content"] == "mail [EMAIL]"
    assert json.loads(out["events"][0]) == [[0, "redact", "email:1"]]
    assert json.loads(out["events"][1]) == [[2, "drop", "secret"]]
    assert out["key_dedup"][0] == ExactDedup().key(chat("mail [EMAIL]"))  # keys see the redacted text
    assert out["key_near"][1] == []  # dropped before the near-dup filter: no key
    assert len(out["key_near"][0]) == 128 and len(out["sha"][0]) == 16


def test_build_filters_rejects_non_filters():
    with pytest.raises(TypeError, match=r"curate.filters.pii is a dict, not a filter; give it a `_target_`"):
        build_filters({"pii": {"action": "redact"}})


@pytest.mark.parametrize("module", ["itune.data.curate", "itune.data.audit", "itune.data.mix"])
def test_docstring_examples(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(module)).failed == 0
