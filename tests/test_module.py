"""The module's loss: mean cross-entropy over exactly the trained tokens."""

from __future__ import annotations

import math

import pytest
import torch

from itune.data.templates import IGNORE_INDEX
from itune.model import tiny_llama
from itune.module import InstructionTuner, token_losses


def test_loss_is_mean_over_trained_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 2, 6]])
    losses = token_losses(logits, labels)
    manual = []
    for b in range(2):
        for t in range(4):
            target = labels[b, t + 1].item()
            if target != IGNORE_INDEX:
                manual.append(-torch.log_softmax(logits[b, t], -1)[target].item())
    assert losses.sum().item() == pytest.approx(sum(manual), rel=1e-5)
    assert (losses[labels[:, 1:] == IGNORE_INDEX] == 0).all()


def test_training_step_matches_token_losses():
    model = tiny_llama(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ids = torch.randint(0, 50, (2, 6))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    logits = module(ids, mask)
    expected = token_losses(logits, labels).sum() / (labels[:, 1:] != IGNORE_INDEX).sum()
    assert not math.isnan(expected.item())
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    loss = module.training_step({"input_ids": ids, "labels": labels, "attention_mask": mask}, 0)
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("packed", [False, True])
def test_model_loss_path_matches_token_losses(packed, tokenizer):
    """fused_cross_entropy=True (the model's own loss, liger's fused kernel when applied) = our mean."""
    from itune.data.collate import PackCollator, PadCollator
    from tests.test_templates import MULTI, SINGLE, build

    chatml = build("chatml", tokenizer)
    examples = [chatml.encode(c) for c in (MULTI, SINGLE)]
    collate = PackCollator(tokenizer.pad_token_id, 256) if packed else PadCollator(tokenizer.pad_token_id)
    batch = collate(examples)
    model = tiny_llama()
    ours = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    fused = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), fused_cross_entropy=True)
    for m in (ours, fused):
        m.log = lambda *a, **k: None
        m.optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    torch.testing.assert_close(fused.training_step(batch, 0), ours.training_step(batch, 0))


def test_liger_switch_without_the_package_says_what_to_do():
    import importlib.util

    from itune.model import apply_liger_kernel

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed")
    with pytest.raises(ImportError, match="model.liger_kernel=false"):
        apply_liger_kernel(tiny_llama())


def test_a_model_loaded_in_eval_mode_trains_in_train_mode():
    """transformers' from_pretrained returns eval mode and Lightning keeps the mode it finds: training
    must still run with dropout (LoRA's included) on."""
    import lightning as L
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader

    model = tiny_llama(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.5)).eval()
    module = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    seen: list[bool] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(all(m.training for m in pl_module.model.modules()))

    ids = torch.randint(0, 50, (2, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[Spy()],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader([batch], batch_size=None))
    assert seen and all(seen)
