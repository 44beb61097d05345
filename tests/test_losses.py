"""The chunked cross-entropy: the same losses, KL and gradients as the full logits, in fp32."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from itune.data.templates import IGNORE_INDEX
from itune.losses import HeadSplit, chunked_token_losses, split_lm_head, token_kl
from itune.model import tiny_llama
from itune.module import InstructionTuner, token_losses

TOL = {"atol": 1e-5, "rtol": 1e-5}


def random_case(bias: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 9, 8, generator=g, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True) if bias else None
    labels = torch.randint(0, 50, (3, 9), generator=g)
    labels[0, :4] = IGNORE_INDEX  # a prompt
    labels[2, 5:] = IGNORE_INDEX  # padding
    labels[1, 3] = IGNORE_INDEX  # the first label of a packed example
    return hidden, weight, b, labels


def grads(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    out = [None if t is None else t.grad.clone() for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return out


@pytest.mark.parametrize("chunk_size", [1, 4, None])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_losses_and_gradients_match_full_logits(chunk_size, bias):
    hidden, weight, b, labels = random_case(bias)
    full = token_losses(F.linear(hidden, weight, b), labels)
    scale = torch.rand(full.shape, generator=torch.Generator().manual_seed(2))  # per-token weights
    (full * scale).sum().backward()
    expected = grads(hidden, weight, b)
    chunked, kl = chunked_token_losses(hidden, labels, weight, b, chunk_size=chunk_size)
    assert kl is None
    torch.testing.assert_close(chunked, full, **TOL)
    assert (chunked[labels[:, 1:] == IGNORE_INDEX] == 0).all()
    (chunked * scale).sum().backward()
    for got, want in zip(grads(hidden, weight, b), expected, strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("own_base_head", [False, True])
def test_chunked_kl_matches_token_kl_with_gradients(own_base_head):
    hidden, weight, b, labels = random_case(bias=True, seed=1)
    base_hidden = torch.randn(hidden.shape)
    base_weight, base_bias = (torch.randn(weight.shape), torch.randn(50)) if own_base_head else (None, None)
    mask = labels[:, 1:] != IGNORE_INDEX
    base_logits = F.linear(
        base_hidden, weight if base_weight is None else base_weight, b if base_bias is None else base_bias
    )
    ce = token_losses(F.linear(hidden, weight, b), labels)
    kl, count = token_kl(base_logits.detach()[:, :-1], F.linear(hidden, weight, b)[:, :-1], mask)
    (ce.sum() + 3 * kl.sum()).backward()
    expected = grads(hidden, weight, b)
    ce2, kl2 = chunked_token_losses(hidden, labels, weight, b, 2, base_hidden, base_weight, base_bias)
    torch.testing.assert_close(ce2, ce, **TOL)
    torch.testing.assert_close(kl2.sum(dim=1), kl, **TOL)
    assert (kl2[~mask] == 0).all() and kl.min() > 0
    (ce2.sum() + 3 * kl2.sum()).backward()
    for got, want in zip(grads(hidden, weight, b), expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_chunked_under_bf16_autocast_runs_the_head_in_bf16_like_nn_linear():
    """Autocast: the head's matmul in bf16 (as nn.Linear), softmax in fp32: the same losses; weight
    gradients differ by bf16 rounding only (chunks' products are rounded before their fp32 sum)."""
    hidden, weight, _, labels = random_case(bias=False, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = token_losses(F.linear(hidden, weight), labels)
        chunked, _ = chunked_token_losses(hidden, labels, weight, chunk_size=3)
    torch.testing.assert_close(chunked, full, **TOL)
    full.sum().backward()
    expected = grads(hidden, weight)
    chunked.sum().backward()
    for got, want in zip(grads(hidden, weight), expected, strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)


def batches(tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    from itune.data.collate import PackCollator, PadCollator
    from tests.test_templates import MULTI, SINGLE, build

    chatml = build("chatml", tokenizer)
    examples = [chatml.encode(c) for c in (MULTI, SINGLE, MULTI[:2])]
    return {
        "padded": PadCollator(tokenizer.pad_token_id)(examples),
        "packed": PackCollator(tokenizer.pad_token_id, 512)(examples),
    }


def tuner(model: torch.nn.Module, **kwargs) -> InstructionTuner:
    module = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kwargs)
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    return module


def lora(model: torch.nn.Module) -> torch.nn.Module:
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter: B != 0, so the LoRA gradients and the KL are not trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("packing", ["padded", "packed"])
def test_training_step_chunked_equals_full_logits(peft, packing, tokenizer):
    """Loss and every trainable gradient (the tied embedding/LM head weight, LoRA's A and B) as today."""
    batch = batches(tokenizer)[packing]
    assert (batch["labels"] == IGNORE_INDEX).any()
    base = tiny_llama()
    assert base.config.tie_word_embeddings and base.lm_head.weight is base.model.embed_tokens.weight
    models = [lora(copy.deepcopy(base)) if peft else copy.deepcopy(base) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    full, chunked = tuner(models[0], chunked_loss=False), tuner(models[1], chunked_loss=7)
    losses = [m.training_step(batch, 0) for m in (full, chunked)]
    assert isinstance(chunked.head_split, HeadSplit) and full.split_head(batch["input_ids"]) is None
    torch.testing.assert_close(losses[1], losses[0], **TOL)
    for loss in losses:
        loss.backward()
    named = [dict(m.named_parameters()) for m in models]
    trainable = [n for n, p in named[0].items() if p.requires_grad]
    assert trainable and (not peft or all("lora_" in n for n in trainable))
    for name in trainable:
        torch.testing.assert_close(named[1][name].grad, named[0][name].grad, **TOL, msg=name)


@pytest.mark.parametrize("kl_base", ["off", "adapter", "frozen_copy"])
def test_validation_losses_and_kl_chunked_equal_full_logits(kl_base, tokenizer):
    batch = batches(tokenizer)["padded"]
    model = lora(tiny_llama())
    full, chunked = (tuner(model, kl_base=kl_base, chunked_loss=c) for c in (False, 5))
    with torch.no_grad():
        (losses, kl), (losses2, kl2) = full.validation_losses(batch), chunked.validation_losses(batch)
    assert isinstance(chunked.head_split, HeadSplit)
    torch.testing.assert_close(losses2, losses, **TOL)
    if kl_base == "off":
        assert kl is None and kl2 is None
    else:
        assert kl.min() > 0
        torch.testing.assert_close(kl2, kl, **TOL)


def test_split_refuses_heads_that_are_not_a_plain_linear_map():
    capped = tiny_llama()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in split_lm_head(capped)
    adapted = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert "not a plain torch.nn.Linear" in split_lm_head(adapted)
    assert isinstance(split_lm_head(lora(tiny_llama())), HeadSplit)


def test_module_falls_back_when_the_logits_are_not_head_of_hidden(tokenizer):
    """A model whose forward transforms its logits unannounced: the first-batch check turns chunking off."""

    class Scaled(type(tiny_llama())):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            out.logits = out.logits * 0.5
            return out

    model = tiny_llama()
    model.__class__ = Scaled
    batch = batches(tokenizer)["padded"]
    module = tuner(model)
    loss = module.training_step(batch, 0)
    assert "differs from the logits" in module.head_split
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = token_losses(logits, batch["labels"]).sum() / (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(loss, expected)


def test_fused_cross_entropy_turns_chunking_off():
    assert not tuner(tiny_llama(), fused_cross_entropy=True).chunked_loss
    with pytest.raises(ValueError, match="chunked_loss"):
        tuner(tiny_llama(), chunked_loss=0)


def test_step_metrics_are_logged_at_the_logger_steps_only(tokenizer):
    """train/* metrics at every `log_every_n_steps`-th step and the last, with the same keys as before."""
    batch = batches(tokenizer)["packed"]
    module = tuner(tiny_llama())
    logged: list[tuple[int, str, float]] = []
    module.log = lambda key, value, **k: logged.append((step, key, float(value)))
    trainer = SimpleNamespace(log_every_n_steps=3, max_steps=8, is_last_batch=False, global_step=0)
    module._trainer = trainer
    for step in range(8):
        trainer.global_step = step
        module.training_step(batch, step)
    assert sorted({s for s, _, _ in logged}) == [2, 5, 7]
    keys = {k for s, k, _ in logged if s == 2}
    assert keys - {"train/ce"} == {  # train/ce: the cross-entropy term of a regularized loss
        "train/loss",
        "train/trained_tokens",
        "train/real_tokens",
        "train/token_efficiency",
        "train/lr",
    }
    values = {k: v for s, k, v in logged if s == 2}
    assert values["train/trained_tokens"] == (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert values["train/real_tokens"] == batch["num_real_tokens"] and values["train/lr"] == pytest.approx(
        0.1
    )
