"""Duplicate filters: exact (normalised text) and near (MinHash of word shingles, LSH index).

A set filter computes a key per row (`key`/`keys`); the datamodule feeds the keys, in mixture order, to the
filter's `index()`, which says for each row whether an earlier row (first occurrence wins) had the same key
(`ExactIndex`) or a close one (`NearIndex`).

MinHash signatures are datasketch's "affine32" scheme computed with numpy for a whole batch of rows at
once: every shingle is hashed (xxh32 of its UTF-8 bytes), pre-mixed with the MurmurHash3 finalizer, and
permuted by every `a * h + b mod 2**32`; a row's signature is the column-wise minimum over its shingles.
The values are those of `datasketch.MinHash` with the same seed and num_perm (tests check it).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal

import numpy as np
import xxhash

from itune.data.curate.base import Filter, conversation_text, normalise, word_ngrams, words
from itune.data.messages import Message

MINHASH_SCHEME = "affine32"  # datasketch's 32-bit scheme; signatures are stored as int64 lists
_CHUNK = 1 << 11  # shingles per array operation (× num_perm uint32 values: 1 MiB at 128 permutations)
_PROMPT_ROLES = ("system", "user")


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
        roles = None if self.scope == "conversation" else _PROMPT_ROLES
        text = " \x1f ".join(normalise(m["content"]) for m in messages if roles is None or m["role"] in roles)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def index(self) -> ExactIndex:
        return ExactIndex()


class NearDedup(Filter):
    """Drop rows whose word-shingle MinHash is close to an earlier row's (MinHash LSH).

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
        if num_perm < 1 or shingle < 1:
            raise ValueError(
                f"curate NearDedup needs num_perm >= 1 and shingle >= 1, got {num_perm}, {shingle}"
            )
        self.threshold, self.num_perm, self.shingle, self.scope, self.seed = (
            threshold,
            num_perm,
            shingle,
            scope,
            seed,
        )

    def shingles(self, messages: list[Message]) -> list[bytes]:
        """The distinct word shingles of the scoped turns, UTF-8 encoded (none for a text without words)."""
        return list(set(self._shingles(messages)))

    def _shingles(self, messages: list[Message]) -> list[bytes]:
        """The word shingles, repeats included (a minimum does not mind them; a set costs more)."""
        roles = None if self.scope == "conversation" else _PROMPT_ROLES
        return list(map(str.encode, word_ngrams(words(conversation_text(messages, roles)), self.shingle)))

    def keys(self, conversations: Sequence[list[Message]]) -> list[list[int]]:
        """MinHash signatures of many conversations at once."""
        sets = [self._shingles(m) or [b""] for m in conversations]
        return minhash_signatures(sets, self.num_perm, self.seed).astype(np.int64).tolist()

    def key(self, messages: list[Message]) -> list[int]:
        return self.keys([messages])[0]

    def index(self) -> NearIndex:
        return NearIndex(self)


# ------------------------------------------------------------------------------------------------ MinHash
@functools.cache
def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations `h → a * h + b mod 2**32` (odd `a`), both uint32, read-only."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer (a bijection) on a uint32 array, wrapping as uint32.

    >>> fmix32(np.array([0, 1], dtype=np.uint32)).tolist()
    [0, 1364076727]
    """
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_signatures(shingle_sets: Sequence[Sequence[bytes]], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (rows × num_perm, uint32) of many non-empty shingle sets, in array operations.

    >>> from datasketch import MinHash
    >>> m = MinHash(num_perm=4, seed=1, hashfunc=xxhash.xxh32_intdigest, scheme="affine32")
    >>> m.update_batch([b"a b", b"b c"])
    >>> minhash_signatures([[b"a b", b"b c"]], 4, 1)[0].tolist() == m.hashvalues.tolist()
    True
    """
    lengths = np.fromiter(map(len, shingle_sets), dtype=np.int64, count=len(shingle_sets))
    if lengths.size and lengths.min() == 0:
        raise ValueError("minhash_signatures: every row needs at least one shingle")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = chain.from_iterable(shingle_sets)
    hv = fmix32(np.fromiter(map(xxhash.xxh32_intdigest, flat), dtype=np.uint32, count=int(offsets[-1])))
    a, b = minhash_permutations(num_perm, seed)
    out = np.empty((len(shingle_sets), num_perm), dtype=np.uint32)
    r0 = 0
    while r0 < len(shingle_sets):  # rows in chunks of about _CHUNK shingles (one long row: alone)
        r1 = max(r0 + 1, int(np.searchsorted(offsets, offsets[r0] + _CHUNK, side="right")) - 1)
        lo, hi = offsets[r0], offsets[r1]
        permuted = np.multiply(hv[lo:hi, None], a)  # (shingles, num_perm), wrapping mod 2**32
        permuted += b
        np.minimum.reduceat(permuted, offsets[r0:r1] - lo, axis=0, out=out[r0:r1])
        r0 = r1
    return out


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
    """MinHash LSH over the rows kept so far; a candidate at or above the threshold is a duplicate.

    A row's candidates are the kept rows that share one band of its signature, with datasketch
    `MinHashLSH`'s bands for the threshold and num_perm; they are checked earliest first.
    """

    def __init__(self, f: NearDedup) -> None:
        self.threshold = f.threshold
        self.bands = lsh_bands(f.threshold, f.num_perm)
        self.tables: list[dict[bytes, list[int]]] = [{} for _ in self.bands]  # band → kept rows
        self.sigs: list[np.ndarray] = []
        self.where: list[tuple[str, int]] = []
        self.seen: set[tuple[str, int]] = set()

    def check_add(self, key: list[int], where: tuple[str, int]) -> tuple[str, int] | None:
        """The earlier (source, row) of a near duplicate, or None after recording `where` as kept.

        Seeing the same (source, row) again (a stream read twice) is not a duplicate.
        """
        if tuple(where) in self.seen:
            return None
        sig = np.asarray(key, dtype=np.uint32)
        bands = [sig[start:end].tobytes() for start, end in self.bands]
        for i in sorted(
            {i for table, band in zip(self.tables, bands, strict=True) for i in table.get(band, ())}
        ):
            if float(np.mean(self.sigs[i] == sig)) >= self.threshold:
                return self.where[i]
        for table, band in zip(self.tables, bands, strict=True):
            table.setdefault(band, []).append(len(self.sigs))
        self.sigs.append(sig)
        self.where.append(where)
        self.seen.add(tuple(where))
        return None


@functools.cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """The (start, end) signature slices of datasketch MinHashLSH's bands (its optimal b × r)."""
    from datasketch import MinHashLSH

    return tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)
