"""The gated MLP with silu(gate) recomputed in backward: stock autograd's numbers, one tensor less saved."""

from __future__ import annotations

import copy

import torch
from torch import nn

from itune.model import tiny_llama
from itune.swiglu import SiLUMul, recompute_silu


def saved_bytes(fn) -> int:
    storages: dict[int, int] = {}
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_silu_mul_gradients_are_stock_bit_for_bit():
    gate = torch.randn(3, 7, 16, requires_grad=True)
    up = torch.randn(3, 7, 16, requires_grad=True)
    grad = torch.randn(3, 7, 16)
    stock = torch.nn.functional.silu(gate) * up
    fused = SiLUMul.apply(gate, up)
    assert torch.equal(stock, fused)
    g1 = torch.autograd.grad(stock, (gate, up), grad)
    g2 = torch.autograd.grad(fused, (gate, up), grad)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_tiny_llama_same_loss_and_gradients_and_less_saved():
    torch.manual_seed(0)
    stock = tiny_llama()
    fused = copy.deepcopy(stock)
    assert recompute_silu(fused) == stock.config.num_hidden_layers
    assert recompute_silu(nn.Linear(2, 2)) == 0
    ids = torch.randint(0, stock.config.vocab_size, (2, 24))
    losses, grads = [], []
    for model in (stock, fused):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    stock_bytes = saved_bytes(lambda: stock(input_ids=ids).logits)
    fused_bytes = saved_bytes(lambda: fused(input_ids=ids).logits)
    one_silu_output = 2 * 24 * stock.config.intermediate_size * 4  # fp32, per layer
    assert stock_bytes - fused_bytes >= stock.config.num_hidden_layers * one_silu_output
    with torch.no_grad():  # inference: the plain ops
        assert torch.equal(stock(input_ids=ids).logits, fused(input_ids=ids).logits)
