"""LoRA dropout fused into lora_A (itune.lora_dropout): stock peft's numbers and RNG stream, less memory."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from itune.lora_dropout import FusedDropoutLinear, fuse_lora_dropout
from itune.model import apply_peft, tiny_llama

P = 0.3


def lora_llama(fuse: bool, p: float = P, **config) -> nn.Module:
    """The tiny Llama with all-linear LoRA; B drawn non-zero so lora_A gets a gradient."""
    config = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": "all-linear", "lora_dropout": p, **config}
    model = apply_peft(tiny_llama(seed=0), LoraConfig(**config), fuse_dropout=fuse)
    gen = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1, generator=gen)
    return model.train()


class Stack(nn.Module):
    """Linear -> ReLU -> Linear -> ReLU -> Linear: each inner linear's input is saved by the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(
            nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def lora_stack(fuse: bool) -> nn.Module:
    config = LoraConfig(r=4, target_modules=["layers.2", "layers.4"], lora_dropout=P, init_lora_weights=False)
    model = get_peft_model(Stack(), config)  # init_lora_weights=False: B random, not zero
    if fuse:
        assert fuse_lora_dropout(model) == 2
    return model.train()


def step(model: nn.Module, x: torch.Tensor, run) -> dict[str, torch.Tensor]:
    """One seeded forward+backward: output, loss, input and parameter gradients, the RNG state after."""
    torch.manual_seed(123)
    x = x.clone().requires_grad_(True)
    out = run(model, x)
    loss = out.float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {
        "out": out.detach(),
        "loss": loss.detach(),
        "x.grad": x.grad,
        **grads,
        "rng": torch.get_rng_state(),
    }


def llama_run(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    return model(inputs_embeds=embeds).logits


def embeds() -> torch.Tensor:
    return torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(2))


def assert_same(stock: dict[str, torch.Tensor], fused: dict[str, torch.Tensor]) -> None:
    assert stock.keys() == fused.keys()
    assert any("lora_A" in k for k in stock) and any("lora_B" in k for k in stock)
    assert torch.equal(stock.pop("rng"), fused.pop("rng"))  # the global RNG stream is stock peft's
    for key in stock:
        torch.testing.assert_close(fused[key], stock[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_llama_matches_stock_peft(checkpointing):
    models = [lora_llama(fuse=False), lora_llama(fuse=True)]
    assert sum(isinstance(m, FusedDropoutLinear) for m in models[1].modules()) == 2 * 7
    if checkpointing:
        for model in models:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stock, fused = (step(m, embeds(), llama_run) for m in models)
    assert_same(stock, fused)


def test_rng_stream_after_fused_step_is_stock():
    draws = []
    for fuse in (False, True):
        step(lora_llama(fuse=fuse), embeds(), llama_run)
        draws.append(torch.rand(5))
    assert torch.equal(*draws)


def test_fused_linear_stack_matches_stock_peft():
    x = torch.randn(4, 5, 16)
    assert_same(step(lora_stack(False), x, lambda m, x: m(x)), step(lora_stack(True), x, lambda m, x: m(x)))


def test_fused_matches_stock_under_autocast():
    x = torch.randn(4, 5, 16)

    def run(model, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    stock, fused = step(lora_stack(False), x, run), step(lora_stack(True), x, run)
    assert fused["out"].dtype == torch.bfloat16
    assert_same(stock, fused)


def test_dropout_is_active_in_training_and_eval_is_plain_linear():
    model = lora_llama(fuse=True)
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    train_logits = model(input_ids=ids).logits
    model.eval()
    eval_logits = model(input_ids=ids).logits
    assert not torch.allclose(train_logits, eval_logits)
    torch.testing.assert_close(eval_logits, lora_llama(fuse=False).eval()(input_ids=ids).logits)
    layer = next(m for m in model.modules() if isinstance(m, FusedDropoutLinear))
    assert not layer.training
    x = torch.randn(3, layer.in_features)
    assert torch.equal(layer(x), x @ layer.weight.T)


def saved_bytes(fn) -> int:
    """Bytes of the unique storages autograd saves while `fn` runs."""
    storages: dict[int, int] = {}
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        kept.append(t)  # keep each storage alive so no address is reused while counting
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_saved_bytes_drop_by_the_dropped_copies():
    """Stock saves, per adapter, the dropped copy and the noise (2 x-sized fp32 tensors); fused saves x, which
    in the stack the ReLU saves already, and a bool mask (1 byte an element) on CPU."""
    x = torch.randn(4, 5, 16, requires_grad=True)
    stock, fused = lora_stack(False), lora_stack(True)
    stock_bytes = saved_bytes(lambda: stock(x))
    fused_bytes = saved_bytes(lambda: fused(x))
    copies = 2 * 4 * (4 * 5 * 32)  # two adapters, two fp32 copies of a (4, 5, 32) input each
    masks = 2 * (4 * 5 * 32)  # two adapters' bool masks
    assert stock_bytes - fused_bytes >= copies - masks


def test_saved_bytes_drop_in_the_llama():
    """Fused keeps at most one copy per distinct adapter input (q, k and v share one) and a bool mask per
    adapter (CPU) instead of two fp32 copies per adapter."""
    stock, fused = lora_llama(fuse=False), lora_llama(fuse=True)
    inputs: dict[int, int] = {}  # storage -> bytes of each distinct adapter input
    adapters = []

    def record(module, args):
        adapters.append(args[0].nbytes)
        inputs[args[0].untyped_storage().data_ptr()] = args[0].nbytes

    hooks = [
        m.register_forward_pre_hook(record)
        for n, m in stock.named_modules()
        if n.endswith("lora_dropout.default")
    ]
    x = embeds().requires_grad_(True)
    stock_bytes = saved_bytes(lambda: stock(inputs_embeds=x))
    for hook in hooks:
        hook.remove()
    fused_bytes = saved_bytes(lambda: fused(inputs_embeds=x))
    assert len(adapters) == 14
    masks = sum(adapters) // 4  # bool, 1 byte per fp32 element
    assert stock_bytes - fused_bytes >= 2 * sum(adapters) - sum(inputs.values()) - masks


def test_state_dict_parameters_and_merge_unchanged():
    stock, fused = lora_llama(fuse=False), lora_llama(fuse=False)
    before = dict(fused.named_parameters())
    assert fuse_lora_dropout(fused) == 14
    assert fuse_lora_dropout(fused) == 0  # idempotent
    after = dict(fused.named_parameters())
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)  # optimizer's params
    assert stock.state_dict().keys() == fused.state_dict().keys()
    for key, value in stock.state_dict().items():
        assert torch.equal(value, fused.state_dict()[key])
    merged_stock, merged_fused = stock.merge_and_unload().state_dict(), fused.merge_and_unload().state_dict()
    assert merged_stock.keys() == merged_fused.keys()
    assert all(torch.equal(merged_stock[k], merged_fused[k]) for k in merged_stock)


def test_disable_adapter_and_save_pretrained(tmp_path):
    model = lora_llama(fuse=True).eval()
    ids = torch.randint(0, 320, (1, 8), generator=torch.Generator().manual_seed(4))
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    torch.testing.assert_close(base, tiny_llama(seed=0).eval()(input_ids=ids).logits)
    model.save_pretrained(tmp_path)
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path).eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize(
    ("config", "count"),
    [
        ({"lora_dropout": 0.0}, 0),
        ({"use_dora": True}, 0),
        ({"target_modules": ["embed_tokens", "q_proj"]}, 2),  # the embedding's LoRA is left alone
    ],
)
def test_left_alone(config, count):
    config = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": "all-linear", "lora_dropout": P, **config}
    model = get_peft_model(tiny_llama(seed=0), LoraConfig(**config))
    assert fuse_lora_dropout(model) == count


def test_apply_peft_fuses_by_default_and_logs(caplog):
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear", lora_dropout=P)
    with caplog.at_level(logging.INFO, logger="itune.model"):
        fused = apply_peft(tiny_llama(seed=0), config)
    assert "fused into lora_A of 14 layers" in caplog.text
    assert sum(isinstance(m, FusedDropoutLinear) for m in fused.modules()) == 14
    stock = apply_peft(tiny_llama(seed=0), config, fuse_dropout=False)
    assert not any(isinstance(m, FusedDropoutLinear) for m in stock.modules())
