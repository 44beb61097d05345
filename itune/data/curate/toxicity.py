"""Toxicity filter: an offensive-language classifier (`alt-profanity-check`) scores each turn.

The classifier (a TF-IDF vectoriser and a calibrated linear SVM, both shipped inside the PyPI package) runs
offline on CPU. It is scored on a whole batch of turns at once (`Toxicity.verdicts`); a row whose highest
turn probability reaches the threshold is flagged or dropped, and counted in the audit like any row filter.

It knows insults, profanity and slurs, not hateful ideas in polite words; short texts that mention a
profane-looking word ("Moby Dick", "pig", "poop") can score high, so `flag` and review before `drop`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any, Literal

import numpy as np

from itune.data.curate.base import Filter, Verdict
from itune.data.messages import Message

PACKAGE = "alt-profanity-check"  # on PyPI; imported as `profanity_check`
INSTALL_HINT = f"pip install {PACKAGE}"


def require_classifier() -> None:
    """Raise a clear ImportError when the classifier package is not installed."""
    if importlib.util.find_spec("profanity_check") is None:
        raise ImportError(
            f"curate toxicity filter needs the {PACKAGE} package: `{INSTALL_HINT}` "
            "(or switch the filter off with curate.filters.toxicity=null)"
        )


@functools.cache
def _predict_prob() -> Callable[[list[str]], np.ndarray]:
    """The package's vectorised `predict_prob` (loads its bundled model once per process, ~1 s)."""
    require_classifier()
    from profanity_check import predict_prob

    return predict_prob


def toxicity_probs(texts: Sequence[str]) -> np.ndarray:
    """Probability that each text is offensive, from one vectorised classifier call.

    >>> [round(float(p), 1) for p in toxicity_probs(["Shut up, you worthless piece of shit.", "Hello!"])]
    [1.0, 0.0]
    """
    if not texts:
        return np.zeros(0)
    return np.asarray(_predict_prob()(list(texts)), dtype=float)


class Toxicity(Filter):
    """Flag or drop rows whose most offensive turn scores at or above `threshold`.

    Args:
        threshold: probability (0-1] from the classifier at or above which a row is toxic.
        action: `flag` (kept, counted and listed in the audit) or `drop`.
        roles: which turns to score (default: all).
    """

    def __init__(
        self,
        threshold: float = 0.9,
        action: Literal["drop", "flag"] = "flag",
        roles: list[str] | None = None,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"curate Toxicity threshold={threshold} must be in (0, 1]")
        if action not in ("drop", "flag"):
            raise ValueError(f"curate Toxicity action={action!r}; valid: drop, flag")
        require_classifier()
        self.threshold, self.action, self.roles = threshold, action, roles

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"model": f"{PACKAGE} {version(PACKAGE)}"}  # in the cache key

    def verdicts(self, conversations: Sequence[list[Message]]) -> list[Verdict]:
        """Verdicts for many rows from one classifier call over all their scored turns."""
        owner, texts = [], []
        for r, messages in enumerate(conversations):
            for m in messages:
                if (self.roles is None or m["role"] in self.roles) and m["content"].strip():
                    owner.append((r, m["role"]))
                    texts.append(m["content"])
        best: dict[int, tuple[float, str]] = {}
        for (r, role), p in zip(owner, toxicity_probs(texts), strict=True):
            if p > best.get(r, (-1.0, ""))[0]:
                best[r] = (float(p), role)
        out = []
        for r, messages in enumerate(conversations):
            p, role = best.get(r, (0.0, ""))
            hit = p >= self.threshold
            out.append(
                Verdict(self.action, messages, f"p={p:.2f} ({role})") if hit else Verdict("keep", messages)
            )
        return out

    def __call__(self, messages: list[Message]) -> Verdict:
        return self.verdicts([messages])[0]
