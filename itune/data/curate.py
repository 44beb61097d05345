"""Curation filters: PII, duplicates, sensitive terms, decontamination, length; each counted in the audit.

A `curate` config group lists filter nodes by name (`conf/curate/default.yaml`); they run in the order
given, on each row's messages after its format has been applied. Three kinds of filter:

- row filters (`PII`, `Terms`, `Decontaminate`) look at one row and keep, redact, flag or drop it;
- set filters (`ExactDedup`, `NearDedup`) compute a key per row; a row whose key was already seen in the
  mixture (earlier source, earlier row: first occurrence wins) is dropped;
- token filters (`Length`) run after templating, on the token counts (always after the others).

The text helpers below are pure functions on strings and messages; the filter classes bind their
settings and give them a name, and the datamodule records what each did to each row.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import xxhash

from itune.data.pii import PII_KINDS, PII_PATTERNS_VERSION, check_kinds, redact_pii
from itune.data.templates import Message

Action = Literal["keep", "drop", "redact", "flag"]
MINHASH_SCHEME = "affine32"  # datasketch's 32-bit scheme; signatures are stored as int64 lists


@dataclass
class Verdict:
    """What a row filter did to one row: the action, the (maybe redacted) messages, a short detail."""

    action: Action
    messages: list[Message]
    detail: str = ""


# --------------------------------------------------------------------------------------------- text helpers
def normalise(text: str) -> str:
    """Lower-case words of letters and digits joined by single spaces (NFKC first).

    >>> normalise("  Hello,   WORLD! It's 2024. ")
    'hello world it s 2024'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.findall(r"\w+", text))


def conversation_text(messages: Sequence[Message], roles: Iterable[str] | None = None) -> str:
    """The contents of the turns (all, or those of `roles`) joined by newlines.

    >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    >>> conversation_text(chat, ["user"])
    'Hi'
    """
    keep = set(roles) if roles is not None else None
    return "\n".join(m["content"] for m in messages if keep is None or m["role"] in keep)


def content_hash(messages: Sequence[Message]) -> str:
    """A short sha256 of the exact messages (the manifest's content hash).

    >>> content_hash([{"role": "user", "content": "Hi"}])
    'd7760b4ba3077c46'
    """
    payload = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def word_ngrams(words: Sequence[str], n: int) -> list[str]:
    """Space-joined n-grams of a word list; a list shorter than n gives itself as one n-gram.

    >>> word_ngrams("a b c d".split(), 3)
    ['a b c', 'b c d']
    """
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _h64(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


def _h32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def snippet(messages: Sequence[Message], limit: int = 240) -> str:
    """A one-line, PII-redacted preview of a conversation for reports.

    >>> snippet([{"role": "user", "content": "Mail me: a@b.io"}])
    'user: Mail me: [EMAIL]'
    """
    text = " | ".join(f"{m['role']}: {m['content']}" for m in messages)
    text = redact_pii(" ".join(text.split()))[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_lines(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"term list {p} not found (one term per line, # for comments)")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _file_digest(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------- filters
class Filter:
    """Base of all filters. `name` is the filter's key in the curate config (set by the datamodule)."""

    stage: ClassVar[str] = "row"  # row | set | tokens
    name: str = ""

    def settings(self) -> dict[str, Any]:
        """The filter's settings, for the audit and the cache fingerprint."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "name"}

    def fingerprint(self) -> str:
        payload = json.dumps([type(self).__qualname__, self.settings()], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def verdicts(self, conversations: Sequence[list[Message]]) -> list[Verdict]:
        """Row filters: the verdicts for many rows (one call per row here; batched filters override)."""
        return [self(m) for m in conversations]


class PII(Filter):
    """Redact (typed placeholder) or drop rows with e-mails, phones, card numbers, IBANs, SSNs, IPs.

    The patterns and the checks that keep look-alikes out are in `itune.data.pii`.

    Args:
        action: `redact` replaces each match by `[EMAIL]`, `[PHONE]`, ... ; `drop` drops the row.
        kinds: which kinds to look for (default: all of email, iban, credit_card, ssn, ip, phone).
        roles: which turns to scan (default: all).
    """

    def __init__(
        self,
        action: Literal["redact", "drop"] = "redact",
        kinds: list[str] | None = None,
        roles: list[str] | None = None,
    ) -> None:
        if action not in ("redact", "drop"):
            raise ValueError(f"curate PII action={action!r}; valid: redact, drop")
        self.action, self.kinds, self.roles = action, list(kinds or PII_KINDS), roles
        check_kinds(self.kinds)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"patterns_version": PII_PATTERNS_VERSION}  # in the cache key

    def __call__(self, messages: list[Message]) -> Verdict:
        out, found = [], {}
        for m in messages:
            if self.roles is not None and m["role"] not in self.roles:
                out.append(m)
                continue
            text, counts = redact_pii(m["content"], self.kinds)
            for k, v in counts.items():
                found[k] = found.get(k, 0) + v
            out.append({"role": m["role"], "content": text})
        if not found:
            return Verdict("keep", messages)
        detail = ",".join(f"{k}:{v}" for k, v in found.items())
        return Verdict("drop", messages, detail) if self.action == "drop" else Verdict("redact", out, detail)


class Terms(Filter):
    """Drop or flag rows containing listed terms (toxicity, legally sensitive markers); no network.

    Args:
        terms: words or phrases, matched case-insensitively on word boundaries.
        files: text files with one term per line (`#` starts a comment).
        action: `drop` the row or `flag` it (kept, counted and listed in the audit).
        roles: which turns to scan (default: all).
    """

    def __init__(
        self,
        terms: list[str] | None = None,
        files: list[str] | None = None,
        action: Literal["drop", "flag"] = "flag",
        roles: list[str] | None = None,
    ) -> None:
        if action not in ("drop", "flag"):
            raise ValueError(f"curate Terms action={action!r}; valid: drop, flag")
        self.terms, self.files, self.action, self.roles = list(terms or []), list(files or []), action, roles
        self._digests = [_file_digest(f, "term list") for f in self.files]
        every = self.terms + [t for f in self.files for t in _read_lines(f)]
        words = sorted({t.strip().lower() for t in every if t.strip()}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
            if words
            else None
        )

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"file_digests": self._digests}

    def __call__(self, messages: list[Message]) -> Verdict:
        if self._pattern is None:
            return Verdict("keep", messages)
        hits = sorted({m.lower() for m in self._pattern.findall(conversation_text(messages, self.roles))})
        if not hits:
            return Verdict("keep", messages)
        return Verdict(self.action, messages, ",".join(hits))


class Decontaminate(Filter):
    """Drop training rows that share a long word n-gram with an evaluation set.

    Every string value of every row of each eval file (or only the columns in `fields`) is normalised
    (`normalise`) and cut into word n-grams; a training turn that contains one of them is dropped. An eval
    text shorter than `n` words but at least `min_words` long counts as a whole.

    Args:
        files: evaluation files (.json/.jsonl/.csv/.parquet) of the suites the run is judged on.
        n: n-gram length in words (13 as in GPT-3's contamination study).
        min_words: eval texts shorter than this (and shorter than n) are ignored.
        fields: eval columns to read (default: every string value, nested lists/dicts included).
    """

    def __init__(
        self, files: list[str] | None = None, n: int = 13, min_words: int = 8, fields: list[str] | None = None
    ) -> None:
        if n < 1 or min_words < 1:
            raise ValueError(f"curate Decontaminate needs n >= 1 and min_words >= 1, got {n}, {min_words}")
        self.files, self.n, self.min_words, self.fields = list(files or []), n, min_words, fields
        self._digests = [_file_digest(f, "decontamination file") for f in self.files]
        self._grams: dict[int, int] = {}  # n-gram hash → index of the eval file it came from
        self._lengths: set[int] = set()  # word lengths of the n-grams stored
        self.eval_texts = 0
        for i, path in enumerate(self.files):
            for text in _eval_texts(path, fields):
                words = normalise(text).split()
                if len(words) < min(n, min_words):
                    continue
                self.eval_texts += 1
                grams = word_ngrams(words, n)
                self._lengths.add(min(len(words), n))
                for g in grams:
                    self._grams.setdefault(_h64(g), i)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"file_digests": self._digests}

    def __call__(self, messages: list[Message]) -> Verdict:
        if not self._grams:
            return Verdict("keep", messages)
        for m in messages:
            words = normalise(m["content"]).split()
            for length in self._lengths:
                for g in word_ngrams(words, length) if len(words) >= length else []:
                    hit = self._grams.get(_h64(g))
                    if hit is not None:
                        return Verdict("drop", messages, f"{Path(self.files[hit]).name}: '{g}'")
        return Verdict("keep", messages)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _eval_texts(path: str, fields: list[str] | None) -> Iterable[str]:
    """Every string of an evaluation file (or of its `fields` columns), one at a time."""
    from itune.data.sources import load_source  # datasets import only when a file is given

    ds = load_source(str(Path(path).expanduser()))
    if fields:
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise ValueError(f"decontamination file {path}: no column(s) {missing}; has {ds.column_names}")
        ds = ds.select_columns(fields)
    for row in ds:
        yield from _strings(row)


class ExactDedup(Filter):
    """Drop rows whose normalised text (`normalise`) was already seen; the first occurrence is kept.

    Args:
        scope: `conversation` (all turns) or `prompt` (system and user turns only).
    """

    stage = "set"

    def __init__(self, scope: Literal["conversation", "prompt"] = "conversation") -> None:
        if scope not in ("conversation", "prompt"):
            raise ValueError(f"curate ExactDedup scope={scope!r}; valid: conversation, prompt")
        self.scope = scope

    def key(self, messages: list[Message]) -> str:
        roles = None if self.scope == "conversation" else ("system", "user")
        text = " \x1f ".join(normalise(m["content"]) for m in messages if roles is None or m["role"] in roles)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def index(self) -> ExactIndex:
        return ExactIndex()


class NearDedup(Filter):
    """Drop rows whose word-shingle MinHash is close to an earlier row's (datasketch MinHash LSH).

    Args:
        threshold: estimated Jaccard similarity of the word-shingle sets at or above which a row is a
            near duplicate (candidates from LSH are checked against this estimate).
        num_perm: MinHash permutations (more: better estimates, more memory).
        shingle: words per shingle.
        scope: `conversation` (all turns) or `prompt` (system and user turns only).
        seed: MinHash seed.
    """

    stage = "set"

    def __init__(
        self,
        threshold: float = 0.85,
        num_perm: int = 128,
        shingle: int = 5,
        scope: Literal["conversation", "prompt"] = "conversation",
        seed: int = 1,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"curate NearDedup threshold={threshold} must be in (0, 1]")
        if scope not in ("conversation", "prompt"):
            raise ValueError(f"curate NearDedup scope={scope!r}; valid: conversation, prompt")
        self.threshold, self.num_perm, self.shingle, self.scope, self.seed = (
            threshold,
            num_perm,
            shingle,
            scope,
            seed,
        )

    def shingles(self, messages: list[Message]) -> list[bytes]:
        roles = None if self.scope == "conversation" else ("system", "user")
        words = normalise(conversation_text(messages, roles)).split()
        return [s.encode() for s in set(word_ngrams(words, self.shingle))]

    def keys(self, conversations: list[list[Message]]) -> list[list[int]]:
        """MinHash signatures of many conversations at once."""
        from datasketch import MinHash

        sets = [self.shingles(m) or [b""] for m in conversations]
        hashes = MinHash.bulk(
            sets, num_perm=self.num_perm, seed=self.seed, hashfunc=_h32, scheme=MINHASH_SCHEME
        )
        return [h.hashvalues.astype(np.int64).tolist() for h in hashes]

    def key(self, messages: list[Message]) -> list[int]:
        return self.keys([messages])[0]

    def index(self) -> NearIndex:
        return NearIndex(self)


class Length(Filter):
    """Drop rows whose token count after templating is outside [min_tokens, max_tokens].

    Runs after templating, on the full (untruncated) length. `data.max_length` still applies afterwards:
    longer rows are dropped or truncated by `data.overlength`, and counted as the `max_length` step.

    Args:
        min_tokens: fewest tokens of the whole example.
        max_tokens: most tokens (None: only `data.max_length`).
        min_trained_tokens: fewest trained tokens (assistant content + end-of-turn).
    """

    stage = "tokens"

    def __init__(
        self, min_tokens: int = 0, max_tokens: int | None = None, min_trained_tokens: int = 1
    ) -> None:
        if max_tokens is not None and max_tokens < min_tokens:
            raise ValueError(f"curate Length: max_tokens={max_tokens} < min_tokens={min_tokens}")
        self.min_tokens, self.max_tokens, self.min_trained_tokens = min_tokens, max_tokens, min_trained_tokens

    def check(self, n_tokens: int, n_trained: int) -> tuple[Action, str]:
        """`drop` with the reason, or `keep`.

        >>> Length(min_tokens=5).check(3, 2)
        ('drop', 'tokens 3 < min_tokens 5')
        """
        if n_tokens < self.min_tokens:
            return "drop", f"tokens {n_tokens} < min_tokens {self.min_tokens}"
        if self.max_tokens is not None and n_tokens > self.max_tokens:
            return "drop", f"tokens {n_tokens} > max_tokens {self.max_tokens}"
        if n_trained < self.min_trained_tokens:
            return "drop", f"trained tokens {n_trained} < min_trained_tokens {self.min_trained_tokens}"
        return "keep", ""


# ------------------------------------------------------------------------------------- set-filter indexes
@dataclass
class ExactIndex:
    """Seen keys of ExactDedup → the (source, row) that first had them."""

    seen: dict[str, tuple[str, int]] = field(default_factory=dict)

    def check_add(self, key: str, where: tuple[str, int]) -> tuple[str, int] | None:
        """The earlier (source, row) with this key, or None after recording `where` as its first.

        Seeing the same (source, row) again (a stream read twice) is not a duplicate.
        """
        first = self.seen.setdefault(key, where)
        return None if first == where else first


class NearIndex:
    """MinHash LSH over the rows kept so far; a query hit at or above the threshold is a duplicate."""

    def __init__(self, f: NearDedup) -> None:
        from datasketch import MinHashLSH

        self.f = f
        self.lsh = MinHashLSH(threshold=f.threshold, num_perm=f.num_perm)
        self.sigs: dict[str, np.ndarray] = {}
        self.where: dict[str, tuple[str, int]] = {}

    def check_add(self, key: list[int], where: tuple[str, int]) -> tuple[str, int] | None:
        from datasketch import LeanMinHash  # no permutations to build: cheap from stored hash values

        sig = np.asarray(key, dtype=np.uint32)
        m = LeanMinHash(seed=self.f.seed, hashvalues=sig, scheme=MINHASH_SCHEME)
        name = f"{where[0]}:{where[1]}"
        if name in self.where:  # the same row again (a stream read twice)
            return None
        for cand in self.lsh.query(m):
            if float(np.mean(self.sigs[cand] == sig)) >= self.f.threshold:
                return self.where[cand]
        self.lsh.insert(name, m)
        self.sigs[name], self.where[name] = sig, where
        return None


# --------------------------------------------------------------------------------------------- the pipeline
def build_filters(filters: dict[str, Any] | None) -> list[Filter]:
    """The configured filters in order, each named by its config key; None entries are switched off."""
    out: list[Filter] = []
    for name, f in (filters or {}).items():
        if f is None:
            continue
        if not isinstance(f, Filter):
            raise TypeError(
                f"curate.filters.{name} is a {type(f).__name__}, not a filter; give it a `_target_` such as "
                "itune.data.curate.PII, Terms, Decontaminate, ExactDedup, NearDedup or Length"
            )
        f.name = name
        out.append(f)
    return out


def curate_batch(batch: dict[str, list[Any]], filters: list[Filter]) -> dict[str, list[Any]]:
    """datasets.map (batched) function: run the row and set filters in order on each row's messages.

    Each filter sees the batch's surviving rows at once (so a classifier or MinHash runs vectorised), in
    the configured order: a row dropped by one filter is not shown to the next ones.

    Adds `drop_at` (position of the first row filter that dropped the row; len(filters) when none),
    `events` (JSON list of [position, action, detail] of row filters that acted), `sha` (content hash of the
    final messages) and one `key_<name>` column per set filter (empty past the drop point).
    """
    n_rows = len(batch["messages"])
    msgs: list[list[Message]] = list(batch["messages"])
    drop_at, acted = [len(filters)] * n_rows, [[] for _ in range(n_rows)]
    # "" / [] for rows dropped before a set filter (a fixed column type for every batch)
    keys: dict[str, list[Any]] = {
        f.name: [[] if isinstance(f, NearDedup) else ""] * n_rows for f in filters if f.stage == "set"
    }
    alive = list(range(n_rows))
    for pos, f in enumerate(filters):
        convs = [msgs[r] for r in alive]
        if f.stage == "set":
            found = f.keys(convs) if isinstance(f, NearDedup) else [f.key(m) for m in convs]
            for r, k in zip(alive, found, strict=True):
                keys[f.name][r] = k
        elif f.stage == "row":
            for r, v in zip(alive, f.verdicts(convs), strict=True):
                if v.action != "keep":
                    acted[r].append([pos, v.action, v.detail])
                msgs[r] = v.messages
                if v.action == "drop":
                    drop_at[r] = pos
            alive = [r for r in alive if drop_at[r] == len(filters)]
    out = {
        "messages": msgs,
        "drop_at": drop_at,
        "events": [json.dumps(a) if a else "" for a in acted],
        "sha": [content_hash(m) for m in msgs],
    }
    return out | {f"key_{name}": v for name, v in keys.items()}
