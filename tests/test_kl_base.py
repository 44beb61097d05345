"""KL to the base (`val/<source>/kl_base`): the token KL, the reference models, the validation metric."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from peft import LoraConfig
from torch.utils.data import DataLoader

from itune.config_schema import check_config
from itune.data.collate import PadCollator
from itune.data.templates import IGNORE_INDEX
from itune.losses import token_kl
from itune.model import apply_peft, load_causal_lm, tiny_llama
from itune.module import InstructionTuner, resolve_kl_base

SOURCES = ["general", "domain"]
CONVERSATIONS = [
    [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}, {w} and {w}."}]
    for w in ["red", "blue", "green", "gold", "pink", "gray", "white", "black"]
]


@pytest.fixture
def val_loader(tokenizer) -> DataLoader:
    """Eight encoded chats of two sources, in padded batches of three (the last one short)."""
    from tests.test_templates import build

    chatml = build("chatml", tokenizer)
    examples = [chatml.encode(c) | {"source": i % 2} for i, c in enumerate(CONVERSATIONS)]
    return DataLoader(examples, batch_size=3, collate_fn=PadCollator(tokenizer.pad_token_id))


def lora_model() -> torch.nn.Module:
    return apply_peft(tiny_llama(seed=0), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))


def tuner(model: torch.nn.Module, kl_base: bool | str = "auto", lr: float = 0.5) -> InstructionTuner:
    return InstructionTuner(
        model, optimizer=lambda p: torch.optim.AdamW(p, lr=lr), source_names=SOURCES, kl_base=kl_base
    )


def trainer(max_steps: int = 1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def validate(module: InstructionTuner, loader: DataLoader) -> dict[str, float]:
    trainer().validate(module, dataloaders=loader, verbose=False)
    return {k: float(v) for k, v in module.trainer.callback_metrics.items()}


def one_step(module: InstructionTuner, loader: DataLoader) -> None:
    """One optimizer step (AdamW, the module's large lr) on the first batch."""
    trainer(max_steps=1).fit(module, train_dataloaders=loader)


@torch.no_grad()
def reference_kl(base: torch.nn.Module, tuned: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Token-weighted mean KL(base ‖ tuned) per source and overall, computed here from two models."""
    base.eval()
    tuned.eval()
    kl = torch.zeros(len(SOURCES), dtype=torch.float64)
    tokens = torch.zeros_like(kl)
    for batch in loader:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        trained = batch["labels"][:, 1:] != IGNORE_INDEX
        rows, n = token_kl(base(**inputs).logits[:, :-1], tuned(**inputs).logits[:, :-1], trained)
        kl.index_add_(0, batch["source"], rows.double())
        tokens.index_add_(0, batch["source"], n.double())
    out = {f"val/{s}/kl_base": float(kl[i] / tokens[i]) for i, s in enumerate(SOURCES)}
    return out | {"val/kl_base": float(kl.sum() / tokens.sum())}


def test_token_kl_is_the_sum_of_manual_kls_over_masked_positions():
    torch.manual_seed(0)
    base, tuned = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    kl, count = token_kl(base, tuned, mask)
    p, logp, logq = base.softmax(-1), base.log_softmax(-1), tuned.log_softmax(-1)
    manual = ((p * (logp - logq)).sum(-1) * mask).sum(1)
    torch.testing.assert_close(kl, manual, rtol=1e-5, atol=1e-7)
    assert count.tolist() == [3, 1]
    assert (kl > 0).all()
    same, _ = token_kl(base, base, mask)
    assert same.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("setting", "peft", "mode"),
    [
        ("auto", True, "adapter"),
        ("auto", False, "off"),
        (True, True, "adapter"),
        (True, False, "frozen_copy"),
        (False, True, "off"),
        ("off", True, "off"),
        ("frozen_copy", False, "frozen_copy"),
        ("frozen_copy", True, "frozen_copy"),
        ("adapter", True, "adapter"),
    ],
)
def test_resolve_kl_base(setting, peft, mode):
    assert resolve_kl_base(setting, peft) == mode


@pytest.mark.parametrize(("setting", "match"), [("adapter", "kl_base=frozen_copy"), ("copy", "one of")])
def test_resolve_kl_base_errors_say_what_to_set(setting, match):
    with pytest.raises(ValueError, match=match):
        resolve_kl_base(setting, peft=False)


def test_lora_kl_is_zero_at_step_0_and_grows_after_one_step(val_loader):
    module = tuner(lora_model())
    assert module.kl_base == "adapter"
    before = validate(module, val_loader)
    for key in ("val/kl_base", "val/general/kl_base", "val/domain/kl_base"):
        assert before[key] == pytest.approx(0.0, abs=1e-6)
    one_step(module, val_loader)
    after = validate(module, val_loader)
    assert after["val/general/kl_base"] > 1e-3 and after["val/domain/kl_base"] > 1e-3
    assert after["val/loss"] != pytest.approx(before["val/loss"])  # the adapter did move


def test_adapter_disabled_kl_equals_kl_against_a_separately_loaded_copy(val_loader, tmp_path):
    tiny_llama(seed=0).save_pretrained(tmp_path / "base")  # the same base, loaded again from disk
    module = tuner(lora_model())
    one_step(module, val_loader)
    logged = validate(module, val_loader)
    expected = reference_kl(load_causal_lm(str(tmp_path / "base")), module.model, val_loader)
    assert expected["val/kl_base"] > 1e-3
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key
    # the same under LoRA with kl_base=frozen_copy (the base copied, its adapter removed)
    copied = tuner(module.model, kl_base="frozen_copy")
    assert not any("lora" in n for n, _ in copied.base_copy.named_parameters())
    for key, value in validate(copied, val_loader).items():
        if key.endswith("kl_base"):
            assert value == pytest.approx(logged[key], abs=1e-5), key


def test_full_fine_tune_with_a_frozen_copy(val_loader):
    model = tiny_llama(seed=0)
    assert tuner(model).kl_base == "off"  # auto: no copy for full fine-tuning unless asked
    module = tuner(model, kl_base="frozen_copy", lr=1e-2)
    assert set(module.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # checkpoints do not grow
    assert abs(validate(module, val_loader)["val/kl_base"]) < 1e-6  # the chunked KL rounds at ~1e-8
    copy_before = [p.clone() for p in module.base_copy.parameters()]
    one_step(module, val_loader)
    logged = validate(module, val_loader)
    assert all(torch.equal(a, b) for a, b in zip(copy_before, module.base_copy.parameters(), strict=True))
    expected = reference_kl(tiny_llama(seed=0), module.model, val_loader)
    assert expected["val/kl_base"] > 1e-3
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key


def test_kl_off_logs_no_kl(val_loader):
    metrics = validate(tuner(lora_model(), kl_base="off"), val_loader)
    assert "val/loss" in metrics and not any(k.endswith("kl_base") for k in metrics)


@pytest.mark.parametrize("setting", ["off", "frozen_copy", "adapter", "true"])
def test_kl_base_is_a_valid_train_key(compose_train, setting):
    cfg = compose_train(f"kl_base={setting}")
    check_config(cfg)
    assert str(cfg.kl_base).lower() == setting
