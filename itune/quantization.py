"""QLoRA: load the base model with bitsandbytes 4-bit weights (`quantization=nf4` puts transformers'
BitsAndBytesConfig at `model.lm.quantization_config`) and train a peft adapter on top.

`quantized_load_kwargs` is what `itune.model.load_causal_lm` adds to `from_pretrained` (each process's own
GPU); `prepare_quantized` runs peft's `prepare_model_for_kbit_training` before the adapter is added;
`quantization_problems` lists the settings QLoRA cannot run with, for `itune.scale.check_scale`.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)

OPTION = "quantization=nf4 (model.lm.quantization_config)"


def unavailable() -> str | None:
    """Why 4-bit bitsandbytes training cannot run in this process (None: it can)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package: pip install 'itune[qlora]' (or pip install bitsandbytes)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (bitsandbytes 4-bit kernels) and none is visible: use quantization=none"
    return None


def local_device() -> int:
    """This process's GPU index: Lightning's launcher and torchrun set LOCAL_RANK, Slurm SLURM_LOCALID."""
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def quantized_load_kwargs(quantization_config: Any) -> dict[str, Any]:
    """`from_pretrained` kwargs that load 4-bit weights onto this process's GPU.

    Raises:
        ValueError: without bitsandbytes or a CUDA GPU, saying what to install or set.
    """
    if (reason := unavailable()) is not None:
        raise ValueError(f"{OPTION} {reason}")
    return {"quantization_config": quantization_config, "device_map": {"": local_device()}}


def is_quantized(model: nn.Module) -> bool:
    """Whether transformers loaded `model` with a quantizer (bitsandbytes, GPTQ, …)."""
    return getattr(model, "hf_quantizer", None) is not None


def prepare_quantized(model: nn.Module, peft_config: Any) -> nn.Module:
    """peft's `prepare_model_for_kbit_training`: freeze the base, cast the non-quantized weights (norms,
    embeddings, head) to float32, keep the model's gradient checkpointing setting (non-reentrant).

    Raises:
        ValueError: for full fine-tuning (no peft config): 4-bit weights cannot be trained.
    """
    from peft import prepare_model_for_kbit_training

    if peft_config is None:
        raise ValueError(_FULL_FINE_TUNING)
    checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    log.info("QLoRA: 4-bit base prepared for adapter training (gradient checkpointing %s)", checkpointing)
    return model


_FULL_FINE_TUNING = (
    f"{OPTION} trains an adapter on frozen 4-bit weights; full fine-tuning (peft=none) cannot update them: "
    "use peft=lora (QLoRA) or quantization=none"
)


def _takes_quantization_config(target: str) -> bool:
    try:
        params = inspect.signature(get_method(target)).parameters.values()
    except Exception:  # an unimportable target fails in the schema check with its own message
        return True
    return any(p.name == "quantization_config" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def quantization_problems(cfg: DictConfig, strategy: str) -> list[str]:
    """Why the composed config cannot train with its `model.lm.quantization_config` (empty: it can, or it
    sets none). `strategy` is `itune.scale.strategy_kind` of the trainer."""
    lm = (cfg.get("model") or {}).get("lm") or {}
    if lm.get("quantization_config") is None:
        return []
    problems = []
    target = str(lm.get("_target_", ""))
    if target and not _takes_quantization_config(target):
        problems.append(
            f"{OPTION} needs a model loaded with from_pretrained, and model.lm._target_={target} takes no "
            "quantization_config: pick a hub or local model (e.g. model=llama3_1_8b) or quantization=none"
        )
    if cfg.get("peft") is None:
        problems.append(_FULL_FINE_TUNING)
    if strategy == "fsdp" or strategy.startswith("deepspeed"):
        problems.append(
            f"{OPTION} with trainer.strategy={strategy} is not supported: FSDP and DeepSpeed shard or cast "
            "the packed 4-bit weights; use trainer=gpu (one GPU) or trainer=ddp (a 4-bit copy per GPU)"
        )
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if accelerator in ("cpu", "mps"):
        problems.append(
            f"{OPTION} needs a CUDA GPU, but trainer.accelerator={accelerator}: use trainer=gpu on a GPU "
            "machine, or quantization=none"
        )
    elif (reason := unavailable()) is not None:
        problems.append(f"{OPTION} {reason}")
    return problems
