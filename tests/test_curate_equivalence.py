"""The fast curation paths give the results of the straightforward ones.

- MinHash: `NearDedup.keys` (numpy, a batch at once) against datasketch's `MinHash` fed one row at a time
  (the implementation it replaced), on varied text: unicode, empty strings, rows shorter than a shingle,
  repeated shingles, rows longer than one array chunk.
- PII: `redact_pii` (pre-checks skip patterns a text cannot match) against every pattern run on every text
  with the validators as they were (no early exit), on generated look-alikes and on the real sets.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import xxhash

from itune.data.curate import NearDedup
from itune.data.curate import dedup as dedup_module
from itune.data.curate import pii_patterns as pp
from tests.conftest import SHARED_DATA

TEXTS = [
    "",
    "   ",
    "!!! ... ???",
    "one",
    "two words",
    "four words in row",  # shorter than a 5-word shingle: one shingle of itself
    "exactly five words in here",
    "Héllo wörld, ça va? Straße STRASSE ﬁne ①②③ x² Ǆ",  # NFKC and case folding
    "日本語のテキスト と 中文 文本 和 한국어 텍스트 and مرحبا بالعالم",
    "emoji 😀 🎉 only between words 👍 here and there 🚀",
    "repeat " * 40,  # every shingle the same
    "a b a b a b a b a b a b",
    "numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "tabs\tand\nnewlines\r\nmixed   spacing\u00a0nbsp\u2003em",
    "\ud800 lone surrogate? no: it is not a word character",
]


def chat(user: str, answer: str = "") -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def reference_keys(f: NearDedup, conversations: list[list[dict]]) -> list[list[int]]:
    """The replaced implementation: datasketch MinHash per row over the distinct shingles."""
    from datasketch import MinHash

    out = []
    for messages in conversations:
        m = MinHash(num_perm=f.num_perm, seed=f.seed, hashfunc=xxhash.xxh32_intdigest, scheme="affine32")
        m.update_batch(f.shingles(messages) or [b""])
        out.append(m.hashvalues.astype(np.int64).tolist())
    return out


def varied_rows(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    words = [w for t in TEXTS for w in t.split()] + [f"w{i}" for i in range(50)]
    rows = [chat(t, rng.choice(TEXTS)) for t in TEXTS]
    for _ in range(n):
        user = " ".join(rng.choices(words, k=rng.randint(0, 40)))
        rows.append(chat(user, " ".join(rng.choices(words, k=rng.randint(0, 12)))))
    return rows


@pytest.mark.parametrize(
    ("num_perm", "shingle", "seed", "scope"),
    [(128, 5, 1, "conversation"), (64, 3, 7, "prompt"), (16, 1, 0, "conversation"), (256, 13, 42, "prompt")],
)
def test_minhash_signatures_match_datasketch(num_perm, shingle, seed, scope):
    f = NearDedup(num_perm=num_perm, shingle=shingle, seed=seed, scope=scope)
    rows = varied_rows(200, seed)
    assert f.keys(rows) == reference_keys(f, rows)
    assert f.keys(rows[:1]) == reference_keys(f, rows[:1]) and f.keys([]) == []


def test_minhash_rows_longer_than_a_chunk(monkeypatch):
    monkeypatch.setattr(dedup_module, "_CHUNK", 16)  # chunks of a few rows; long rows alone
    f = NearDedup(shingle=2)
    long = " ".join(f"token{i}" for i in range(100))
    rows = [chat("short"), chat(long), chat(""), chat(long + " end"), *varied_rows(30)]
    assert f.keys(rows) == reference_keys(f, rows)


def test_minhash_needs_a_shingle_per_row():
    with pytest.raises(ValueError, match="at least one shingle"):
        dedup_module.minhash_signatures([[b"a"], []], 8, 1)


class ReferenceNearIndex:
    """The replaced index: datasketch MinHashLSH of LeanMinHash, candidates in its (set) order."""

    def __init__(self, f: NearDedup) -> None:
        from datasketch import MinHashLSH

        self.f, self.lsh, self.sigs, self.where = (
            f,
            MinHashLSH(threshold=f.threshold, num_perm=f.num_perm),
            {},
            {},
        )

    def check_add(self, key, where):
        from datasketch import LeanMinHash

        sig = np.asarray(key, dtype=np.uint32)
        m, name = LeanMinHash(seed=self.f.seed, hashvalues=sig, scheme="affine32"), f"{where[0]}:{where[1]}"
        if name in self.where:
            return None
        hits = [c for c in self.lsh.query(m) if float(np.mean(self.sigs[c] == sig)) >= self.f.threshold]
        if hits:
            return {self.where[c] for c in hits}  # any of them (set order)
        self.lsh.insert(name, m)
        self.sigs[name], self.where[name] = sig, where
        return None


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.85, 0.95])
def test_near_index_flags_the_rows_datasketch_lsh_flags(threshold):
    rng = random.Random(3)
    base = [" ".join(f"w{rng.randint(0, 60)}" for _ in range(rng.randint(3, 40))) for _ in range(60)]
    texts = []
    for t in base:  # each text, and a few edits of it: some near, some far
        texts.append(t)
        for _ in range(rng.randint(0, 3)):
            ws = t.split()
            ws[rng.randrange(len(ws))] = f"edit{rng.randint(0, 9)}"
            texts.append(" ".join(ws))
    rng.shuffle(texts)
    f = NearDedup(threshold=threshold, shingle=2)
    keys = f.keys([chat(t) for t in texts])
    new, ref = f.index(), ReferenceNearIndex(f)
    flagged = 0
    for i, k in enumerate(keys):
        got, want = new.check_add(k, ("s", i)), ref.check_add(k, ("s", i))
        assert (got is None) == (want is None)
        assert got is None or got in want  # one of the rows datasketch would name: the earliest
        flagged += got is not None
    assert flagged > 0 and new.check_add(keys[0], ("s", 0)) is None  # the same row again: not a duplicate


# ------------------------------------------------------------------------------------------------- PII
def reference_phone_ok(m: re.Match[str]) -> bool:
    """`phone_ok` without its early exit on few digits (as before the speed-up)."""
    text = m.group(0)
    n = len(pp._digits(text))
    if pp._YEAR_RANGE.search(text):
        return False
    if text.startswith("+"):
        return 8 <= n <= 15
    if text.startswith("("):
        return 10 <= n <= 15 and not re.match(r"\((?:1[89]|20)\d\d\)", text)
    if pp._PHONE_WORDS.search(pp._before(m)):
        return 9 <= n <= 15
    return pp._phone_grouped(text)


def reference_redact(text: str, kinds=pp.PII_KINDS) -> tuple[str, dict[str, int]]:
    """Every pattern on every text, kind by kind, with its validator."""
    counts: dict[str, int] = {}
    for kind in pp.PII_KINDS:
        if kind not in kinds:
            continue
        pattern, valid = pp.PII_PATTERNS[kind]
        valid = reference_phone_ok if kind == "phone" else valid
        hits = []

        def sub(m, kind=kind, valid=valid, hits=hits):
            if valid is not None and not valid(m):
                return m.group(0)
            hits.append(1)
            return pp.PLACEHOLDERS[kind]

        text = pattern.sub(sub, text)
        if hits:
            counts[kind] = len(hits)
    return text, counts


PII_PIECES = (  # noqa: SIM905 (" | "-separated; "" at the end: an empty piece)
    "call | tel: | phone | Fax | host | server | IP | version | v | release | see | the | "
    "Ünïcode | 日本 | +1 | +44 | (555) | (2019) | 555-123-4567 | 1-800-273-8255 | "
    "020 7946 0958 | 0410787999 | 4111 1111 1111 1111 | 4111111111111111 | 378282246310005 | "
    "5555-5555-5555-4444 | GB82 WEST 1234 5698 7654 32 | DE89370400440532013000 | "
    "123-45-6789 | 000-12-3456 | 10.0.0.1 | 1.2.3.4 | 192.168.1.20 | ::1 | a[::2] | "
    "2001:db8::8a2e:370:7334 | 1:2:3:4:5:6:7:8 | a@b.io | ann.lee+x@mail.example.co.uk | "
    "@handle | 2020-2021 | 86 | 3.14159 | 12:30:45 | ٠١٢٣٤٥٦٧٨٩ | １２３４５６７８９０ | ०१२३४५६७८९ | "
    "[EMAIL] | [PHONE] | "
).split(" | ")


def pii_texts(n: int, seed: int = 0) -> list[str]:
    """Generated look-alikes: pieces, random digit runs and separators, glued in random ways."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.3:
                parts.append("".join(rng.choice("0123456789 -.") for _ in range(rng.randint(1, 20))))
            else:
                parts.append(rng.choice(PII_PIECES))
        out.append("".join(p + rng.choice([" ", "", "-", ".", ", ", "\n", ":", "/"]) for p in parts))
    return out


def test_redact_pii_matches_the_reference_on_look_alikes():
    rng = random.Random(1)
    for text in pii_texts(4000):
        kinds = pp.PII_KINDS if rng.random() < 0.7 else rng.sample(pp.PII_KINDS, rng.randint(1, 5))
        assert pp.redact_pii(text, kinds) == reference_redact(text, kinds), text


@pytest.mark.parametrize("text", ["", "no digits at all", "٣٤ and 12", "１２３", "x²³ ½", "\ud800 7"])
def test_n_digits_counts_what_backslash_d_matches(text):
    assert pp.n_digits(text) == len(re.findall(r"\d", text))


@pytest.mark.integration
@pytest.mark.skipif(not (SHARED_DATA / "alpaca_5000.json").exists(), reason="shared data absent")
def test_redact_pii_matches_the_reference_on_real_data():
    rows = json.loads((SHARED_DATA / "alpaca_5000.json").read_text(encoding="utf-8"))
    texts = [r[k] for r in rows for k in ("instruction", "input", "output") if r.get(k)]
    found = 0
    for text in texts:
        new = pp.redact_pii(text)
        assert new == reference_redact(text), text
        found += bool(new[1])
    assert found > 0  # the comparison saw real hits


# ----------------------------------------------------------------------------------------------- terms
@pytest.mark.parametrize(
    "terms", [["confidential", "trade secret", "do not distribute"], ["secret", "ſecret", "straße"], ["k"]]
)
def test_terms_prefilter_matches_the_regex_alone(terms):
    from itune.data.curate import Terms

    f = Terms(terms=terms)
    texts = [*TEXTS, "CONFIDENTIAL!", "xconfidential", "trade  secret", "a Trade Secret.", "CONFİDENTIAL"]
    texts += ["ſecret", "SECRET", "Straße STRASSE", "K \u212a k", "do not distribute-", "_secret_"]
    for text in texts:
        want = sorted({m.lower() for m in f._pattern.findall(text)})
        v = f(chat(text))
        assert (v.action, v.detail) == (("flag", ",".join(want)) if want else ("keep", "")), text
