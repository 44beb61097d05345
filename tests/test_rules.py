"""Rules suite: rule checks, errors, pass rates equal to an independent computation."""

from __future__ import annotations

import json

import pytest

from itune.eval.rules import Rule, RulesSuite, make_rule
from itune.generation import generate
from itune.model import tiny_llama
from tests.test_templates import build


@pytest.mark.parametrize(
    ("spec", "answer", "ok"),
    [
        ({"ends_with": "advice."}, "Buy low.\n\nThis is not financial advice.  ", True),
        ({"ends_with": "advice."}, "Buy low.", False),
        ({"starts_with": "Sure"}, "Sure, here.", True),
        ({"regex": r"\d+"}, "It is 42.", True),
        ({"not_regex": "(?i)financial advice"}, "Not Financial Advice", False),
        ({"max_words": 3}, "one two three four", False),
        ({"valid_json": True}, '{"a": 1}', True),
        ({"valid_json": True}, "{a: 1}", False),
    ],
)
def test_rule_checks(spec, answer, ok):
    assert make_rule("r", spec).check(answer) is ok


def test_invalid_regex_names_the_rule():
    with pytest.raises(ValueError, match="rule 'price': invalid regex"):
        Rule(name="price", regex="([0-9")


def test_unknown_rule_key_is_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['endswith'\]"):
        make_rule("x", {"endswith": "."})


def test_prompt_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file"):
        RulesSuite(str(tmp_path / "none.jsonl"), {"r": {"max_words": 5}})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        RulesSuite(str(bad), {"r": {"max_words": 5}})


def test_pass_rates_match_independent_scoring(tmp_path, tokenizer):
    prompts = ["Hello", "What is 2+2?", "Name a fruit", "Say hi"]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    model, template = tiny_llama(), build("chatml", tokenizer)
    suite = RulesSuite(
        str(path), {"short": {"max_words": 2}, "has_a": {"regex": "a"}}, max_new_tokens=6, batch_size=3
    )
    rates, samples = suite.run(model, tokenizer, template)
    one_by_one = [
        generate(model, tokenizer, template, [[{"role": "user", "content": p}]], max_new_tokens=6)[0]
        for p in prompts
    ]
    assert [s["answer"] for s in samples] == one_by_one  # batched (left-padded) == one at a time
    assert rates["short"] == sum(len(a.split()) <= 2 for a in one_by_one) / 4
    assert rates["has_a"] == sum("a" in a for a in one_by_one) / 4
