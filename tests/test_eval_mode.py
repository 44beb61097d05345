"""eval_mode: a model in eval mode for a block, its previous mode restored after, also on an exception."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from itune.eval.scoring import continuation_logprobs
from itune.inference.eval_mode import eval_mode
from itune.inference.generation import generate


class Broken(nn.Module):
    """A model whose forward and generate fail, recording the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[bool] = []

    def forward(self, **_: object) -> None:
        self.seen.append(self.training)
        raise RuntimeError("boom")

    def generate(self, **_: object) -> None:
        self.seen.append(self.training)
        raise RuntimeError("boom")


@pytest.mark.parametrize("training", [True, False])
def test_restores_the_previous_mode(training):
    model = Broken().train(training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model.dropout.training
    assert model.training is training and model.dropout.training is training


@pytest.mark.parametrize("training", [True, False])
def test_restores_the_previous_mode_on_exception(training):
    model = Broken().train(training)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        model()
    assert model.seen == [False]
    assert model.training is training and model.dropout.training is training


def _generate(model: nn.Module) -> None:
    template = SimpleNamespace(encode_prompt=lambda c: [1, 2], stop_token_ids=[0])
    generate(model, SimpleNamespace(pad_token_id=0), template, [[{"role": "user", "content": "hi"}]])


@pytest.mark.parametrize(
    "run",
    [_generate, lambda model: continuation_logprobs(model, [([1, 2], [3])], pad_token_id=0)],
    ids=["generate", "continuation_logprobs"],
)
def test_inference_functions_restore_training_mode_on_exception(run):
    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        run(model)
    assert model.seen == [False] and model.training and model.dropout.training


def test_doctest():
    import doctest

    from itune.inference import eval_mode as module

    assert doctest.testmod(module).failed == 0
