"""Scaling presets (trainer=ddp|fsdp|deepspeed_zero2|deepspeed_zero3), the checks of combinations that cannot
work, QLoRA's quantization option, and the full weights a sharded run saves.

No GPU here: the strategy objects are built on CPU, FSDP really wraps and trains the tiny model on two CPU
processes (gloo), DeepSpeed ZeRO-3 really partitions it in one; a Lightning fit on GPUs is not run.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from itune import scale
from itune.config_schema import check_config
from itune.model import apply_peft, byte_level_tokenizer, load_causal_lm, tiny_llama
from itune.quantization import OPTION, quantization_problems
from itune.runs.write import save_model
from itune.scale import DecoderLayerPolicy, check_scale, decoder_layer_classes, fsdp_strategy, gather_for_save

PRESETS = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="deepspeed not installed (pip install 'itune[scale]')"
)
CONF = Path(__file__).resolve().parents[1] / "conf"
# `quantization` is appended to train.yaml's defaults until train.yaml lists the group itself
NF4 = "quantization=nf4" if "- quantization:" in (CONF / "train.yaml").read_text() else "+quantization=nf4"


def _lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- presets compose and build
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_on_two_nodes_and_its_strategy_builds(compose_train, preset):
    cfg = compose_train(f"trainer={preset}", "trainer.num_nodes=2")
    check_config(cfg, files=False)  # every key of the preset is a parameter of its target
    assert (cfg.trainer.num_nodes, cfg.trainer.accelerator, cfg.trainer.precision) == (2, "gpu", "bf16-mixed")
    if preset.startswith("deepspeed") and not HAS_DEEPSPEED:
        pytest.skip("deepspeed not installed (pip install 'itune[scale]'): composition checked only")
    strategy = instantiate(cfg.trainer.strategy)
    expected = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}.get(preset, DeepSpeedStrategy)
    assert type(strategy) is expected
    if preset.startswith("deepspeed"):
        assert strategy.config["zero_optimization"]["stage"] == int(preset[-1])


def test_ddp_trainer_builds_on_cpu_with_two_nodes(compose_train):
    cfg = compose_train("trainer=ddp", "trainer.num_nodes=2")
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, precision="32-true", logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_nodes == 2 and trainer.world_size == 2


@pytest.mark.parametrize(("peft", "state_dict_type"), [("lora", "full"), ("none", "sharded")])
def test_fsdp_preset_settings(compose_train, peft, state_dict_type):
    strategy = instantiate(compose_train("trainer=fsdp", f"peft={peft}").trainer.strategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, DecoderLayerPolicy)
    assert strategy._activation_checkpointing_kwargs == {"auto_wrap_policy": policy}
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == state_dict_type  # auto: adapter checkpoints whole, full FT sharded


def test_fsdp_preset_takes_named_layer_classes_and_refuses_a_bad_state_dict_type(compose_train):
    cfg = compose_train("trainer=fsdp", "trainer.strategy.layer_classes=[LlamaMLP]")
    policy = instantiate(cfg.trainer.strategy).kwargs["auto_wrap_policy"]
    assert {type(m).__name__ for m in policy._run_policy(tiny_llama(), set(), {})} == {"LlamaMLP"}
    with pytest.raises(ValueError, match=r"^trainer.strategy.state_dict_type='shard': expected one of"):
        fsdp_strategy(state_dict_type="shard")


def test_decoder_layer_policy_finds_the_tiny_models_layers_through_peft():
    holder = nn.ModuleDict(
        {"model": get_peft_model(tiny_llama(), _lora())}
    )  # as the LightningModule holds it
    assert decoder_layer_classes(holder) == {LlamaDecoderLayer}
    wrapped = DecoderLayerPolicy()._run_policy(holder, set(), {"x": 1})
    layers = list(holder["model"].base_model.model.model.layers)
    assert list(wrapped) == layers and all(kw == {"x": 1} for kw in wrapped.values())
    with pytest.raises(ValueError, match="trainer.strategy.layer_classes") as e:
        decoder_layer_classes(holder, ["NoSuchLayer"])
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- combinations refused
_GPU8 = ("trainer.devices=8", "model.gradient_checkpointing=false")
BAD = {
    "fsdp_on_cpu": (("trainer=fsdp", "trainer.accelerator=cpu", *_GPU8), "needs CUDA GPUs"),
    "zero2_on_cpu": (("trainer=deepspeed_zero2", "trainer.accelerator=cpu"), "needs CUDA GPUs"),
    "fsdp_one_device": (
        ("trainer=fsdp", "trainer.devices=1", "model.gradient_checkpointing=false"),
        "one device",
    ),
    "fsdp_double_checkpointing": (
        ("trainer=fsdp", "trainer.devices=8", "model.gradient_checkpointing=true"),
        "recompute them again",
    ),
    "fsdp_compile": (("trainer=fsdp", *_GPU8, "model.compile=true"), "model.compile=true does not work"),
    "zero3_compile": (
        ("trainer=deepspeed_zero3", "model.chunked_loss=false", "model.compile=true"),
        "model.compile=true does not work",
    ),
    "zero3_liger": (("trainer=deepspeed_zero3", "model.liger_kernel=true"), "model.liger_kernel=true"),
    "zero3_chunked_loss": (("trainer=deepspeed_zero3",), "model.chunked_loss=True does not work"),
    "fsdp_l2_init": (("trainer=fsdp", *_GPU8, "regularizer=l2_init"), "regularizer=l2_init"),
    "fsdp_eval_suites": (("trainer=fsdp", *_GPU8, "eval=demo"), "eval.suites generate"),
    "zero3_periodic_eval": (
        ("trainer=deepspeed_zero3", "model.chunked_loss=false", "callbacks=periodic_eval"),
        "callbacks.periodic_eval",
    ),
    "qlora_on_cpu": (
        ("model=llama3_1_8b", NF4, "trainer=cpu"),
        "needs a CUDA GPU, but trainer.accelerator=cpu",
    ),
    "qlora_full_fine_tuning": (("model=llama3_1_8b", NF4, "peft=none", "trainer=cpu"), "peft=none"),
    "qlora_fsdp": (("model=llama3_1_8b", NF4, "trainer=fsdp", *_GPU8), "with trainer.strategy=fsdp"),
    "qlora_zero2": (("model=llama3_1_8b", NF4, "trainer=deepspeed_zero2"), "not supported"),
    "qlora_tiny_model": ((NF4, "trainer=cpu"), "takes no quantization_config"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_check_scale_refuses_with_one_line(compose_train, case):
    overrides, fragment = BAD[case]
    cfg = compose_train(*overrides)
    with pytest.raises(ValueError) as e:
        check_scale(cfg)
    assert fragment in str(e.value) and "\n" not in str(e.value)


GOOD = {
    "cpu": ("trainer=cpu",),
    "one_gpu": ("trainer=gpu",),
    "ddp_two_nodes_everything": (
        ("trainer=ddp", "trainer.num_nodes=2", "eval=demo", "regularizer=l2_init", "model.compile=true")
    ),
    "fsdp_full_fine_tuning": ("trainer=fsdp", *_GPU8, "peft=none"),
    "fsdp_one_gpu_on_two_nodes": ("trainer=fsdp", "trainer.devices=1", "trainer.num_nodes=2", _GPU8[1]),
    "fsdp_own_checkpointing_liger": (
        (
            "trainer=fsdp",
            *_GPU8[:1],
            "trainer.strategy.activation_checkpointing=false",
            "model.liger_kernel=true",
        )
    ),
    "zero2_liger_compile_l2": (
        ("trainer=deepspeed_zero2", "model.liger_kernel=true", "model.compile=true", "regularizer=l2_init")
    ),
    "zero3_unchunked": ("trainer=deepspeed_zero3", "model.chunked_loss=false", "peft=none"),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_check_scale_accepts_combinations_that_work(compose_train, case):
    if "deepspeed" in GOOD[case][0] and not HAS_DEEPSPEED:
        pytest.skip("deepspeed not installed (pip install 'itune[scale]')")
    check_scale(compose_train(*GOOD[case]))


def test_strategy_kind_doctests():
    import doctest

    assert doctest.testmod(scale).failed == 0


def test_missing_deepspeed_is_named_with_what_to_install(compose_train, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    with pytest.raises(ValueError, match=r"needs the deepspeed package: pip install 'itune\[scale\]'"):
        check_scale(compose_train("trainer=deepspeed_zero2"))


# ----------------------------------------------------------------------------- QLoRA
def test_nf4_builds_a_bitsandbytes_config(compose_train):
    # BitsAndBytesConfig itself needs no bitsandbytes; loading the 4-bit weights does (and a CUDA GPU)
    cfg = compose_train("model=llama3_1_8b", NF4)
    check_config(cfg, files=False)  # load_causal_lm takes quantization_config
    bnb = instantiate(cfg.model.lm.quantization_config)
    assert isinstance(bnb, BitsAndBytesConfig)
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert (bnb.bnb_4bit_quant_type, bnb.bnb_4bit_use_double_quant) == ("nf4", True)
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert compose_train("model=llama3_1_8b").model.lm.get("quantization_config") is None


def test_quantized_load_without_a_gpu_says_what_is_missing(compose_train):
    bnb = instantiate(compose_train("model=llama3_1_8b", NF4).model.lm.quantization_config)
    with pytest.raises(ValueError) as e:  # before any download: the check comes first
        load_causal_lm("meta-llama/Llama-3.1-8B", quantization_config=bnb)
    message = str(e.value)
    assert message.startswith(OPTION) and "\n" not in message
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "pip install 'itune[qlora]'" in message
    else:
        assert "needs a CUDA GPU" in message


def test_missing_bitsandbytes_is_named_on_a_gpu_trainer(compose_train, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    problems = quantization_problems(compose_train("model=llama3_1_8b", NF4, "trainer=gpu"), "auto")
    assert problems == [
        f"{OPTION} needs the bitsandbytes package: pip install 'itune[qlora]' (or pip install bitsandbytes)"
    ]


@pytest.mark.parametrize("checkpointing", [True, False])
def test_a_quantized_model_is_prepared_for_kbit_training_before_the_adapter(monkeypatch, checkpointing):
    import peft

    calls = []
    real = peft.prepare_model_for_kbit_training

    def spy(model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=None):
        calls.append(
            (use_gradient_checkpointing, gradient_checkpointing_kwargs, hasattr(model, "peft_config"))
        )
        return real(model, use_gradient_checkpointing, gradient_checkpointing_kwargs)

    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", spy)
    model = tiny_llama()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.hf_quantizer = object()  # what transformers sets when it loads quantized weights
    wrapped = apply_peft(model, _lora())
    assert calls == [(checkpointing, {"use_reentrant": False}, False)]  # before peft wraps the model
    assert hasattr(wrapped, "peft_config")
    with pytest.raises(ValueError, match=r"peft=none\) cannot update them"):
        apply_peft(model, None)


# ---------------------------------------------------------------------------- sharded runs save whole weights
class _Holder(nn.Module):
    """Stands for the LightningModule: holds the model as `model`; its forward is a training step's loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, labels=ids).loss


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _compare_saved(run_dir: Path, reference: nn.Module) -> dict[str, float]:
    """How the weights saved in `run_dir` (adapter/ or model/) compare with those one process saves of
    `reference` through the same run-directory writer."""
    single = run_dir / "single_process"
    target = save_model(single, reference, byte_level_tokenizer())
    name = "adapter_model.safetensors" if target.name == "adapter" else "model.safetensors"
    saved, expected = load_file(run_dir / target.name / name), load_file(target / name)
    return {
        "same_keys": float(set(saved) == set(expected)),
        "key_diff": sorted(set(saved) ^ set(expected)),
        "max_diff": max(float((saved[k] - expected[k]).abs().max()) for k in expected),
        "lora_b_norm": sum(float(v.norm()) for k, v in saved.items() if "lora_B" in k),
    }


def test_without_wrappers_gives_peft_the_plain_module_names():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = get_peft_model(tiny_llama(), _lora())
    apply_activation_checkpointing(model, auto_wrap_policy=DecoderLayerPolicy())
    assert get_peft_model_state_dict(model) == {}  # peft finds no adapter under the wrapper's module names
    wrapped_names = [n for n, _ in model.named_modules()]
    with scale.without_wrappers(model):
        assert not any("_checkpoint_wrapped_module" in n for n, _ in model.named_modules())
        assert len(get_peft_model_state_dict(model)) == 2 * 7 * 2  # 2 layers x 7 linears x (A, B)
    assert [n for n, _ in model.named_modules()] == wrapped_names  # the wrappers are back


def _fsdp_worker(rank: int, world: int, out: str, port: int, peft: bool) -> None:
    import torch.distributed as dist
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        strategy = fsdp_strategy(peft="peft.LoraConfig" if peft else None)
        model = get_peft_model(tiny_llama(), _lora()) if peft else tiny_llama()
        reference = copy.deepcopy(model)
        wrapped = FSDP(  # as Lightning's FSDPStrategy wraps the LightningModule, on CPU
            _Holder(model),
            device_id=torch.device("cpu"),
            sharding_strategy=strategy.sharding_strategy,
            **strategy.kwargs,
        )
        _setup_activation_checkpointing(wrapped, strategy._activation_checkpointing_kwargs)
        ids = torch.arange(2 * 12).reshape(2, 12) % 200
        optimizer = torch.optim.SGD(_trainable(wrapped), lr=1.0)  # B starts at 0: one step makes it -grad
        wrapped(ids).backward()
        optimizer.step()
        reference_optimizer = torch.optim.SGD(_trainable(reference), lr=1.0)
        _Holder(reference)(ids).backward()  # the same batch on both ranks: FSDP's mean gradient is this one
        reference_optimizer.step()
        strategy.model = wrapped
        weights = gather_for_save(strategy, model)
        if rank == 0:
            with scale.without_wrappers(model):
                save_model(Path(out).parent, model, byte_level_tokenizer(), state_dict=weights)
            result = _compare_saved(Path(out).parent, reference)
            result["fsdp_units"] = sum(isinstance(m, FSDP) for m in wrapped.modules())
            result["checkpointed"] = sum(isinstance(m, CheckpointWrapper) for m in wrapped.modules())
            if not peft:  # the saved weights are the trained ones, not the initial ones
                saved, initial = (
                    load_file(Path(out).parent / "model" / "model.safetensors"),
                    tiny_llama().state_dict(),
                )
                result["moved"] = max(float((saved[k] - initial[k]).abs().max()) for k in saved)
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_fsdp_wraps_each_decoder_layer_and_saves_standard_weights(tmp_path, peft):
    out = tmp_path / "result.json"
    torch.multiprocessing.spawn(_fsdp_worker, args=(2, str(out), _free_port(), peft), nprocs=2)
    result = json.loads(out.read_text())
    assert result["fsdp_units"] == 3  # the root (embeddings, norm, head) and the 2 decoder layers
    assert result["checkpointed"] == 2  # activation checkpointing of the decoder layers
    assert result["same_keys"] == 1.0, result["key_diff"]
    assert result["lora_b_norm"] > 0 if peft else result["moved"] > 0.01
    assert result["max_diff"] < 1e-5  # the trained weights, whole, as one process would have saved them


def _zero3_worker(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    import deepspeed
    import deepspeed.comm.torch as ds_comm

    ds_comm.build_shm_op = lambda: None  # skip compiling DeepSpeed's CPU shared-memory op: not needed here
    deepspeed.init_distributed(dist_backend="gloo")
    model = get_peft_model(tiny_llama(), _lora())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # non-zero adapter weights, so a gather that returned zeros would show
    reference = copy.deepcopy(model)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    config["zero_allow_untested_optimizer"] = True
    deepspeed.initialize(model=model, optimizer=torch.optim.SGD(_trainable(model), lr=0.0), config=config)
    partitioned = all(p.numel() == 0 for p in model.parameters())
    full = scale.zero3_full_state_dict(model)
    expected = reference.state_dict()
    weights = gather_for_save(DeepSpeedStrategy(stage=3), model)
    save_model(Path(out).parent, model, byte_level_tokenizer(), state_dict=weights)
    result = _compare_saved(Path(out).parent, reference)
    result["partitioned"] = partitioned
    result["full_equal"] = set(full) == set(expected) and all(
        torch.equal(full[k], expected[k]) for k in expected
    )
    result["tied"] = (
        full["base_model.model.lm_head.weight"] is full["base_model.model.model.embed_tokens.weight"]
    )
    Path(out).write_text(json.dumps(result))


@pytest.mark.slow
@needs_deepspeed
def test_zero3_gathers_the_full_weights_and_saves_a_standard_adapter(tmp_path):
    out = tmp_path / "result.json"
    torch.multiprocessing.spawn(_zero3_worker, args=(str(out), _free_port()), nprocs=1)
    result = json.loads(out.read_text())
    assert result["partitioned"]  # ZeRO-3 left no weight whole in the model
    assert result["full_equal"] and result["tied"]
    assert result["same_keys"] == 1.0 and result["max_diff"] == 0 and result["lora_b_norm"] > 0
