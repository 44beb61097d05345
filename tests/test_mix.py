"""Mix semantics: weights are shares of the mixture's examples; same seed, same draw."""

from __future__ import annotations

import numpy as np
import pytest

from itune.data.mix import draw_indices, mix_counts


@pytest.mark.parametrize(
    ("weights", "total", "expected"),
    [
        ({"a": 0.7, "b": 0.3}, 100, {"a": 70, "b": 30}),
        ({"a": 7, "b": 3}, 100, {"a": 70, "b": 30}),  # normalised
        ({"a": 1, "b": 1, "c": 1}, 10, {"a": 4, "b": 3, "c": 3}),  # counts add up to the total
        ({"a": 1, "b": 0}, 5, {"a": 5, "b": 0}),
    ],
)
def test_mix_counts(weights, total, expected):
    assert mix_counts(weights, total) == expected


@pytest.mark.parametrize(("weights", "message"), [({"a": -1, "b": 1}, ">= 0"), ({"a": 0, "b": 0}, "> 0")])
def test_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        mix_counts(weights, 10)


def test_subsample_is_without_replacement_and_seeded():
    a = draw_indices(10, 4, np.random.default_rng(3))
    assert len(set(a.tolist())) == 4
    assert a.tolist() == draw_indices(10, 4, np.random.default_rng(3)).tolist()


def test_upsample_repeats_whole_passes_first():
    idx = draw_indices(4, 10, np.random.default_rng(0)).tolist()
    assert sorted(idx[:8]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(idx[8:])) == 2
