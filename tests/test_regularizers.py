"""Regularizers against forgetting (the `regularizer` group); peft inits that change the base weights."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.config import CordaConfig
from torch.utils.data import DataLoader

from itune.config_schema import check_config
from itune.data.collate import PadCollator
from itune.model import apply_peft, base_changing_init, tiny_llama
from itune.module import InstructionTuner, resolve_kl_base
from itune.regularizers import KLToBase, L2ToInit, Regularizer
from itune.train import train

CONVERSATIONS = [
    [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}, {w} and {w}."}]
    for w in ["red", "blue", "green", "gold", "pink", "gray", "white", "black"]
]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def loader(tokenizer) -> DataLoader:
    """Eight encoded chats in padded batches of four (no shuffling: every fit sees the same batches)."""
    from tests.test_templates import build

    chatml = build("chatml", tokenizer)
    examples = [chatml.encode(c) | {"source": 0} for c in CONVERSATIONS]
    return DataLoader(examples, batch_size=4, collate_fn=PadCollator(tokenizer.pad_token_id))


def lora_model(init: bool | str = True) -> torch.nn.Module:
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=LINEAR, init_lora_weights=init)
    return apply_peft(tiny_llama(seed=0), config)


def tuner(model: torch.nn.Module, regularizer: Regularizer | None = None, **kwargs) -> InstructionTuner:
    optimizer = lambda p: torch.optim.AdamW(p, lr=0.05)  # noqa: E731
    return InstructionTuner(model, optimizer=optimizer, source_names=["s"], regularizer=regularizer, **kwargs)


class Capture(L.Callback):
    """Per step: the returned loss, the gradients before the optimizer step and the logged train/ values."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.logged: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        params = module.model.named_parameters()
        self.grads.append({n: p.grad.clone() for n, p in params if p.requires_grad})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())
        metrics = trainer.callback_metrics.items()
        self.logged.append({k: float(v) for k, v in metrics if k.startswith("train/")})


def fit(module: InstructionTuner, loader: DataLoader, steps: int = 2) -> Capture:
    capture = Capture()
    L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        log_every_n_steps=1,
        callbacks=[capture],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    ).fit(module, train_dataloaders=loader)
    return capture


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "full_logits"])
def test_kl_base_with_weight_0_is_exactly_plain_sft(loader, chunked):
    plain = fit(tuner(lora_model(), chunked_loss=chunked), loader)
    zero = fit(tuner(lora_model(), KLToBase(weight=0.0), chunked_loss=chunked), loader)
    assert len(plain.losses) == len(zero.losses) == 2
    for a, b in zip(plain.losses, zero.losses, strict=True):
        assert torch.equal(a, b)
    for ga, gb in zip(plain.grads, zero.grads, strict=True):  # step 2: the adapter moved, KL > 0
        assert ga.keys() == gb.keys()
        for name in ga:
            assert torch.equal(ga[name], gb[name]), name
    assert zero.logged[1]["train/kl_base"] > 1e-4  # measured all the same, it just does not count
    assert zero.logged[1]["train/ce"] == zero.logged[1]["train/loss"]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "full_logits"])
def test_kl_term_is_0_at_step_0_and_positive_after_one_step(loader, chunked):
    module = tuner(lora_model(), KLToBase(weight=0.05), chunked_loss=chunked)
    assert module.kl_base == "adapter"  # the adapter disabled: no copy of the model
    logged = fit(module, loader).logged
    assert logged[0]["train/kl_base"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the identity
    assert logged[1]["train/kl_base"] > 1e-4
    for step in logged:
        assert step["train/loss"] == pytest.approx(step["train/ce"] + 0.05 * step["train/kl_base"], rel=1e-6)


def test_kl_base_full_fine_tune_uses_a_frozen_copy(loader):
    module = tuner(tiny_llama(seed=0), KLToBase(weight=0.05))
    assert (
        module.kl_base == "frozen_copy"
    )  # kl_base=auto is off for full fine-tuning; the regularizer needs it
    assert not any(k.startswith("regularizer") for k in module.state_dict())
    logged = fit(module, loader).logged
    assert logged[0]["train/kl_base"] == pytest.approx(0.0, abs=1e-6)
    assert logged[1]["train/kl_base"] > 1e-4


def test_l2_init_gradient_is_2_lambda_times_the_displacement():
    model = lora_model()
    reg = L2ToInit(weight=0.3)
    reg.setup(model)
    assert float(reg(model, None)) == 0.0
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(1)
    with torch.no_grad():
        for name in init:
            model.get_parameter(name).add_(0.1 * torch.randn_like(init[name]))
    value = reg(model, None)  # unweighted; the module adds weight * value to the loss
    (reg.weight * value).backward()
    expected = sum(float(((model.get_parameter(n) - t) ** 2).sum()) for n, t in init.items())
    assert float(value) == pytest.approx(expected, rel=1e-6)
    for name, start in init.items():
        param = model.get_parameter(name)
        torch.testing.assert_close(param.grad, 2 * 0.3 * (param.detach() - start), rtol=1e-6, atol=1e-8)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(reg.names)
    assert all("lora_" in n for n in reg.names)  # LoRA: the adapter's A and B only


def test_l2_init_in_training_logs_its_term(loader):
    logged = fit(tuner(lora_model(), L2ToInit(weight=0.5)), loader).logged
    assert logged[0]["train/l2_init"] == 0.0 and logged[1]["train/l2_init"] > 0.0
    step = logged[1]
    assert step["train/loss"] == pytest.approx(step["train/ce"] + 0.5 * step["train/l2_init"], rel=1e-6)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="regularizer.weight"):
        KLToBase(weight=-0.1)


@pytest.mark.parametrize(
    ("setting", "changed", "mode"),
    [("auto", "pissa", "off"), (True, "olora", "frozen_copy"), ("frozen_copy", "corda", "frozen_copy")],
)
def test_resolve_kl_base_with_a_base_changing_init(setting, changed, mode):
    assert resolve_kl_base(setting, peft=True, base_changed=changed) == mode


def test_adapter_reference_is_refused_for_pissa():
    with pytest.raises(ValueError, match="kl_base=frozen_copy"):
        resolve_kl_base("adapter", peft=True, base_changed="pissa")
    with pytest.raises(ValueError, match="changes the base weights"):
        tuner(lora_model("pissa"), kl_base="adapter")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_kl_base_under_a_base_changing_init_compares_with_the_original_model(init, loader):
    model = lora_model(init)
    assert base_changing_init(model) == init
    x = torch.randint(0, 265, (2, 12))
    with torch.no_grad(), model.disable_adapter():
        assert (model(input_ids=x).logits - tiny_llama(seed=0)(input_ids=x).logits).abs().max() > 1e-2
    module = tuner(model, KLToBase(weight=0.05))
    assert module.kl_base == "frozen_copy"  # merged: W_res + B0 A0 = W, the original weights
    with torch.no_grad():
        torch.testing.assert_close(
            module.base_copy(input_ids=x).logits, tiny_llama(seed=0)(input_ids=x).logits, atol=1e-5, rtol=0
        )
    logged = fit(module, loader).logged
    assert logged[0]["train/kl_base"] == pytest.approx(0.0, abs=1e-5)
    assert logged[1]["train/kl_base"] > 1e-4


def corda_model(rows: list[list[int]] | None) -> torch.nn.Module:
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        target_modules="all-linear",
        init_lora_weights="corda",
        corda_config=CordaConfig(corda_method="kpm"),
    )
    return apply_peft(tiny_llama(seed=0), config, rows)


def test_corda_init_runs_on_calibration_rows_and_saves_a_plain_lora(tmp_path):
    torch.manual_seed(0)
    rows = [torch.randint(0, 265, (48,)).tolist() for _ in range(8)]
    model = corda_model(iter(rows))
    assert base_changing_init(model) == "corda"
    x = torch.randint(0, 265, (2, 12))
    with torch.no_grad():  # at init the adapter plus the residual base is the original model
        torch.testing.assert_close(
            model(input_ids=x).logits, tiny_llama(seed=0)(input_ids=x).logits, atol=1e-5, rtol=0
        )
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
        trained = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "adapter")  # converted for the original base
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter")
    assert loaded.peft_config["default"].init_lora_weights is True and base_changing_init(loaded) is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, trained, atol=1e-5, rtol=0)


def test_corda_without_calibration_rows_says_what_to_do():
    with pytest.raises(ValueError, match="calibration rows"):
        corda_model([])


def test_unsupported_init_says_which_are_supported():
    with pytest.raises(ValueError, match="pissa"):
        apply_peft(tiny_llama(seed=0), LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights="eva"))


@pytest.mark.parametrize("option", ["none", "kl_base", "l2_init"])
def test_regularizer_options_compose_with_full_fine_tuning(compose_train, option):
    cfg = compose_train(f"regularizer={option}", "peft=none")
    check_config(cfg)
    assert (cfg.regularizer is None) == (option == "none")


@pytest.mark.slow
def test_train_with_kl_base_and_corda_end_to_end(compose_train):
    cfg = compose_train(
        "model=tiny",
        "template=chatml",
        "logger=csv",
        "eval=none",
        "trainer=debug",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1.0",
        "regularizer=kl_base",
        "peft=corda",
        "peft_init_rows=8",
        "data.batch_size=4",
    )
    metrics, objects = train(cfg)
    module = objects["module"]
    assert module.kl_base == "frozen_copy" and isinstance(module.regularizer, KLToBase)
    assert {"train/ce", "train/kl_base", "val/general/kl_base"} <= set(metrics)
    assert metrics["train/loss"] == pytest.approx(
        metrics["train/ce"] + 0.05 * metrics["train/kl_base"], rel=1e-5
    )
    saved = PeftModel.from_pretrained(tiny_llama(seed=0), f"{cfg.run_dir}/adapter")  # a plain LoRA (rank 2r)
    assert saved.peft_config["default"].r == 2 * cfg.peft.r
