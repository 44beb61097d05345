"""Domain-behaviour rules checked on greedy answers to a prompt set; reports each rule's pass rate."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.generation import generate


@dataclasses.dataclass(frozen=True)
class Rule:
    """One check on an answer; every condition that is set must hold.

    Args:
        name: metric name, reported as `eval/<suite>/<name>`.
        ends_with / starts_with: required end / start of the stripped answer.
        regex / not_regex: a pattern that must / must not be found (re.search).
        max_words: most words allowed.
        valid_json: the answer must parse as JSON.
    """

    name: str
    ends_with: str | None = None
    starts_with: str | None = None
    regex: str | None = None
    not_regex: str | None = None
    max_words: int | None = None
    valid_json: bool = False

    def __post_init__(self) -> None:
        for key in ("regex", "not_regex"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"rule {self.name!r}: invalid {key} {pattern!r}: {e}") from e

    def check(self, answer: str) -> bool:
        """True when the answer satisfies every condition of the rule."""
        text = answer.strip()
        if self.ends_with is not None and not text.endswith(self.ends_with):
            return False
        if self.starts_with is not None and not text.startswith(self.starts_with):
            return False
        if self.regex is not None and not re.search(self.regex, text):
            return False
        if self.not_regex is not None and re.search(self.not_regex, text):
            return False
        if self.max_words is not None and len(text.split()) > self.max_words:
            return False
        if self.valid_json:
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return False
        return True


def make_rule(name: str, spec: dict[str, Any]) -> Rule:
    """Build a Rule from a config node, naming an unknown key."""
    valid = [f.name for f in dataclasses.fields(Rule) if f.name != "name"]
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ValueError(f"rule {name!r}: unknown key(s) {unknown}; valid keys: {valid}")
    if name in ("id", "suite"):  # the item files' own keys
        raise ValueError(f"rule name {name!r} is reserved; rename the rule")
    return Rule(name=name, **spec)


def read_prompts(path: str, field: str, limit: int | None) -> list[str]:
    """Prompts from a JSONL file, one object per line with the prompt under `field`."""
    prompts = []
    for n, row in read_jsonl(path, "prompt file"):
        if not isinstance(row.get(field), str):
            raise ValueError(f"{path}, line {n}: expected an object with a string field {field!r}")
        prompts.append(row[field])
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


class RulesSuite(ScoredSuite):
    """Generate greedy answers to a prompt set with the run's template and score them with rules.

    Args:
        prompts: JSONL file of prompts.
        rules: {rule name: {ends_with, starts_with, regex, not_regex, max_words, valid_json}}.
        prompt_field: key of the prompt in each JSONL row.
        limit: use at most this many prompts.
        max_new_tokens: generation budget per answer.
        batch_size: prompts generated together.
        kind: `domain` or `general`, for the forgetting report.
    """

    def __init__(
        self,
        prompts: str,
        rules: dict[str, dict[str, Any]],
        prompt_field: str = "prompt",
        limit: int | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        kind: str = "domain",
    ) -> None:
        if not rules:
            raise ValueError(f"a rules suite needs at least one rule (prompts: {prompts})")
        self.rules = [make_rule(name, dict(spec)) for name, spec in rules.items()]
        self.prompts = read_prompts(prompts, prompt_field, limit)
        self.max_new_tokens, self.batch_size, self.kind = max_new_tokens, batch_size, kind

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, str]], ItemScores]:
        """Pass rate per rule, the (prompt, answer) samples and each rule's pass (0/1) per prompt."""
        conversations = [[{"role": "user", "content": p}] for p in self.prompts]
        answers = generate(model, tokenizer, template, conversations, self.max_new_tokens, self.batch_size)
        rows = [
            {"id": i, **{r.name: int(r.check(a)) for r in self.rules}}
            for i, a in zip(item_ids(self.prompts), answers, strict=True)
        ]
        rates = {r.name: sum(row[r.name] for row in rows) / len(rows) for r in self.rules}
        samples = [{"prompt": p, "answer": a} for p, a in zip(self.prompts, answers, strict=True)]
        return rates, samples, item_scores(means([r.name for r in self.rules]), rows)
