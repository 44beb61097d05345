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
    normalise,
)
from itune.data.pii import iban_ok, luhn_ok, redact_pii


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
        # real shapes from Alpaca, Dolly and HellaSwag
        ("phone: 555-555-1234\n", "phone: [PHONE]\n", {"phone": 1}),
        ("Poison Control: 1-800-222-1222", "Poison Control: [PHONE]", {"phone": 1}),
        (
            "contact me on 0410787999 or",
            "contact me on [PHONE] or",
            {"phone": 1},
        ),  # a phone word, no grouping
        ("mobile phone number: 0410787999", "mobile phone number: [PHONE]", {"phone": 1}),
        ("Tel. 030 1234567", "Tel. [PHONE]", {"phone": 1}),
        ("our office 020 7946 0958", "our office [PHONE]", {"phone": 1}),  # national trunk 0
        ("Dial (1) 877-1213-2580.", "Dial [PHONE].", {"phone": 1}),
        (
            "mail ann@example.com or call +1 (555) 010-2345",
            "mail [EMAIL] or call [PHONE]",
            {"email": 1, "phone": 1},
        ),
        ("the server at 1.2.3.4 is down", "the server at [IP_ADDRESS] is down", {"ip": 1}),  # version-shaped
        ("ping 8.8.8.8 first", "ping [IP_ADDRESS] first", {"ip": 1}),
        ("navigate to 192.168.1.1 or", "navigate to [IP_ADDRESS] or", {"ip": 1}),
        ("10.0.0.1", "[IP_ADDRESS]", {"ip": 1}),
        ("bind to localhost ::1", "bind to localhost [IP_ADDRESS]", {"ip": 1}),
        ("mastercard 5555-5555-5555-4444", "mastercard [CREDIT_CARD]", {"credit_card": 1}),
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
        # false positives of the old patterns on real data (Dolly, Alpaca, T0, MMLU, HellaSwag)
        "2021-2022: AC Milan, 86 2020-2021: Inter, 91 2019-2020: Juventus",  # seasons and points
        "years is 2003 -- 2006 2006 2007 -- 2010 2010 2011",
        "Heat (2019) 2020 2021",
        "35\n100\n350\n500",  # answer choices, one per line
        "upgrade to version 1.2.3.4 today",
        "introduced in version 9.27.0.0, released march 2016",
        "release 10.2.0.1 of the server",  # a version word wins over a network word
        "see section 2.3.1.4 below",  # version-shaped, no network word
        "print(b[::2]) outputs",  # a slice, not IPv6
        "binary: 01010100 01110011 00100000 01110011",  # Luhn-valid, but no card starts with 0
        "documents.ri-prod/9780205741588/Chapter_7",  # an ISBN, Luhn-valid
        "call 2020-2021 a good season",  # a phone word does not make a span of years a number
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


@pytest.mark.parametrize(
    "module",
    [
        "itune.data.curate",  # the filter classes (named by this public path)
        "itune.data.curate.base",
        "itune.data.curate.dedup",
        "itune.data.curate.pii",
        "itune.data.curate.pii_patterns",
        "itune.data.curate.toxicity",
        "itune.data.audit",
        "itune.data.mix",
    ],
)
def test_docstring_examples(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(module)).failed == 0


def test_old_import_paths_still_work():
    """`itune.data.pii` and `itune.data.toxicity` re-export what moved into the curate package."""
    from itune.data import curate, pii, toxicity
    from itune.data.curate import pii_patterns
    from itune.data.curate import toxicity as tox_module

    assert pii.redact_pii is pii_patterns.redact_pii and pii.PII_PATTERNS is pii_patterns.PII_PATTERNS
    assert toxicity.Toxicity is tox_module.Toxicity is curate.Toxicity
    for name in curate.__all__:
        assert getattr(curate, name) is not None
    # the audit names a filter by its `_target_` path, as before the split
    assert f"{curate.NearDedup.__module__}.{curate.NearDedup.__qualname__}" == "itune.data.curate.NearDedup"


# ------------------------------------------------------------------------------------------- toxicity
TOXIC = "Shut up, you worthless piece of shit."
CLEAN = "The capital of France is Paris."


def test_toxicity_flags_or_drops_toxic_turns_and_passes_clean_ones():
    pytest.importorskip("profanity_check")
    from itune.data.toxicity import Toxicity, toxicity_probs

    p_toxic, p_clean = toxicity_probs([TOXIC, CLEAN])
    assert p_toxic >= 0.9 > 0.1 > p_clean
    flag = Toxicity(threshold=0.9).verdicts([chat("Tell me what you think.", TOXIC), chat(CLEAN)])
    assert [v.action for v in flag] == ["flag", "keep"]
    assert flag[0].detail == f"p={p_toxic:.2f} (assistant)"
    assert Toxicity(action="drop")(chat(TOXIC)).action == "drop"
    assert Toxicity(roles=["user"])(chat("Hi", TOXIC)).action == "keep"  # the assistant turn is not scored


def test_toxicity_threshold_is_respected():
    pytest.importorskip("profanity_check")
    from itune.data.toxicity import Toxicity, toxicity_probs

    text = "How do I kill a python process?"  # scores in between: ~0.2
    p = float(toxicity_probs([text])[0])
    assert 0.05 < p < 0.9
    assert Toxicity(threshold=p)(chat(text)).action == "flag"  # at the threshold counts
    assert Toxicity(threshold=min(1.0, p + 0.01))(chat(text)).action == "keep"
    with pytest.raises(ValueError, match=r"threshold=0 must be in \(0, 1\]"):
        Toxicity(threshold=0)
    with pytest.raises(ValueError, match="action='redact'; valid: drop, flag"):
        Toxicity(action="redact")


def test_toxicity_scores_a_batch_in_one_classifier_call(monkeypatch):
    pytest.importorskip("profanity_check")
    from itune.data.curate import toxicity

    calls = []
    real = toxicity._predict_prob()
    monkeypatch.setattr(toxicity, "_predict_prob", lambda: lambda texts: calls.append(texts) or real(texts))
    filters = build_filters({"pii": PII(), "tox": toxicity.Toxicity(action="drop"), "dedup": ExactDedup()})
    out = curate_batch({"messages": [chat(CLEAN), chat("Hey", TOXIC), chat("mail a@b.io")]}, filters)
    assert len(calls) == 1 and len(calls[0]) == 6  # every turn of the three rows, in one call
    assert calls[0][4] == "mail [EMAIL]"  # it sees the text PII left
    assert out["drop_at"] == [3, 1, 3] and out["key_dedup"][1] == ""
    assert json.loads(out["events"][1])[0][:2] == [1, "drop"]


def test_toxicity_without_the_package_names_the_install(monkeypatch):
    import importlib.util

    from itune.data import toxicity

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "profanity_check" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install alt-profanity-check"):
        toxicity.Toxicity()


def test_toxicity_counts_and_examples_reach_the_audit(tmp_path, tokenizer):
    pytest.importorskip("profanity_check")
    from itune.data.datamodule import InstructDataModule
    from itune.data.toxicity import Toxicity
    from tests.conftest import write_jsonl
    from tests.test_templates import build

    rows = [
        {"instruction": f"Question {i}: what is {i} + {i}?", "input": "", "output": str(2 * i)}
        for i in range(6)
    ]
    rows[2]["output"] = TOXIC
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    dm = InstructDataModule(
        {"mine": {"path": str(path)}},
        tokenizer,
        build("chatml", tokenizer),
        curate={"toxicity": Toxicity(action="drop")},
        val_fraction=0,
    )
    dm.setup("fit")
    tox = next(s for s in dm.audit["steps"] if s["name"] == "toxicity")
    assert tox["counts"]["mine"]["dropped"] == 1 and len(dm.train_set) == 5
    (example,) = tox["examples"]["dropped"]
    assert example["row"] == 2 and example["detail"].startswith("p=1.00") and "worthless" in example["text"]
