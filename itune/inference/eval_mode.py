"""A model in eval mode for the length of a block, its previous mode restored after (also on an error)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` inside the block; `model.train(<mode before>)` after it, even when the block raises.

    >>> layer = nn.Dropout().train()
    >>> with eval_mode(layer):
    ...     layer.training
    False
    >>> layer.training
    True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
