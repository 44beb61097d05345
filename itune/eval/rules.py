"""Domain-behaviour rules checked on greedy answers to a prompt set; reports each rule's pass rate."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.formats import to_conversation
from itune.data.sources import read_jsonl
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores, means
from itune.eval.runner import ScoredSuite
from itune.inference.generation import generate


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


@dataclasses.dataclass(frozen=True)
class PromptRow:
    """One prompt of a rules suite: the conversation to answer and the rules of this row alone."""

    messages: list[dict[str, str]]
    rules: tuple[Rule, ...] = ()


def read_prompts(path: str, field: str, limit: int | None) -> list[PromptRow]:
    """Prompt rows from a JSONL file: `{field: str}` or `{"messages": [...]}` (a system turn and earlier
    turns, ending with the user turn to answer), each with optional `expect: {rule name: rule}`."""
    rows = []
    for n, row in read_jsonl(path, "prompt file"):
        where = f"{path}, line {n}"
        if isinstance(row.get(field), str):
            row = {**row, "prompt": row[field]}
        elif not isinstance(row.get("messages"), list):
            raise ValueError(f"{where}: expected a string field {field!r} or a `messages` list")
        expect = row.get("expect") or {}
        if not isinstance(expect, dict):
            raise ValueError(
                f'{where}: `expect` must map rule names to rules, e.g. {{"fr": {{"regex": ...}}}}'
            )
        try:
            rules = tuple(make_rule(name, dict(spec)) for name, spec in expect.items())
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        rows.append(PromptRow(to_conversation(row, where=where), rules))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"prompt file {path} has no prompts")
    return rows


def row_rules(suite_rules: list[Rule], row: PromptRow) -> list[Rule]:
    """The suite's rules with the row's own added; a row rule replaces a suite rule of the same name."""
    own = {r.name for r in row.rules}
    return [r for r in suite_rules if r.name not in own] + list(row.rules)


class RulesSuite(ScoredSuite):
    """Generate greedy answers to a prompt set with the run's template and score them with rules.

    A prompt row is a single `prompt` or a whole conversation (`messages`, with a system prompt and
    earlier turns, rendered by the template as in training), and may carry rules of its own (`expect`),
    so one suite can check conditional behaviour: rows in French `expect` a French reply, the others
    expect none. A rule's pass rate counts the rows it applies to.

    Args:
        prompts: JSONL file of prompts.
        rules: {rule name: {ends_with, starts_with, regex, not_regex, max_words, valid_json}} for every row.
        prompt_field: key of the prompt in each JSONL row.
        limit: use at most this many prompts.
        max_new_tokens: generation budget per answer.
        batch_size: prompts generated together.
        kind: `domain` or `general`, for the forgetting report.
    """

    def __init__(
        self,
        prompts: str,
        rules: dict[str, dict[str, Any]] | None = None,
        prompt_field: str = "prompt",
        limit: int | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        kind: str = "domain",
    ) -> None:
        self.rules = [make_rule(name, dict(spec)) for name, spec in (rules or {}).items()]
        self.prompts = read_prompts(prompts, prompt_field, limit)
        if not self.rules and not any(p.rules for p in self.prompts):
            raise ValueError(
                f"a rules suite needs a rule: give `rules`, or `expect` in the rows of {prompts}"
            )
        self.max_new_tokens, self.batch_size, self.kind = max_new_tokens, batch_size, kind

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, str]], ItemScores]:
        """Pass rate per rule, the (prompt, answer) samples and each rule's pass (0/1) per prompt."""
        conversations = [p.messages for p in self.prompts]
        answers = generate(model, tokenizer, template, conversations, self.max_new_tokens, self.batch_size)
        keys = [json.dumps(c, ensure_ascii=False) if len(c) > 1 else c[0]["content"] for c in conversations]
        rows = [
            {"id": i, **{r.name: int(r.check(a)) for r in row_rules(self.rules, p)}}
            for i, p, a in zip(item_ids(keys), self.prompts, answers, strict=True)
        ]
        names = list(dict.fromkeys(name for row in rows for name in row if name != "id"))
        rates = {
            name: sum(r[name] for r in rows if name in r) / sum(name in r for r in rows) for name in names
        }
        samples = [
            {"prompt": p.messages[-1]["content"], "answer": a}
            for p, a in zip(self.prompts, answers, strict=True)
        ]
        return rates, samples, item_scores(means(names), rows)
