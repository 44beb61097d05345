"""Scaling out: the FSDP strategy of `trainer=fsdp`, the checks of strategy combinations, and the full weights
a sharded run saves.

The trainer presets (conf/trainer/ddp, fsdp, deepspeed_zero2, deepspeed_zero3) are Lightning strategies.
FSDP wraps each decoder layer of the model in its own unit; which class that is depends on the model, which
is built after the trainer config is composed, so `DecoderLayerPolicy` finds it when FSDP applies it, from
the model's `_no_split_modules` (transformers' list of blocks that must not be split).

`check_scale(cfg)` refuses, before any data or model loads, the combinations that cannot work, each with one
line saying why and what to use instead. `gather_for_save(strategy, model)` gathers the full weights of a
run whose strategy shards them (FSDP, DeepSpeed ZeRO-3), which the run directory's writer then saves.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.distributed.fsdp.wrap import _Policy  # the interface FSDP and activation checkpointing run

from itune.quantization import quantization_problems

STATE_DICT_TYPES = ("auto", "full", "sharded")
# name segments FSDP and activation checkpointing add inside a wrapped model (removed from state dict keys)
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


# ----------------------------------------------------------------------------- FSDP
def decoder_layer_classes(model: nn.Module, names: Sequence[str] | None = None) -> set[type[nn.Module]]:
    """The classes of `model`'s submodules named in `names`, or by default in the `_no_split_modules` of the
    transformers models inside it (e.g. `LlamaDecoderLayer`).

    Raises:
        ValueError: when no submodule has one of those class names.
    """
    wanted = set(names or ())
    if not wanted:
        for module in model.modules():
            wanted.update(getattr(module, "_no_split_modules", None) or ())
    classes = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not classes:
        found = sorted(wanted) or "no _no_split_modules"
        raise ValueError(
            f"trainer.strategy.layer_classes: no decoder layer of {type(model).__name__} found ({found}); "
            "name the model's layer class, e.g. 'trainer.strategy.layer_classes=[LlamaDecoderLayer]'"
        )
    return classes


class DecoderLayerPolicy(_Policy):
    """FSDP auto-wrap and activation-checkpointing policy: every decoder layer of the module it is applied
    to, its classes found then (`decoder_layer_classes`), so one preset serves every model."""

    def __init__(self, layer_classes: Sequence[str] | None = None) -> None:
        self.layer_classes = tuple(layer_classes) if layer_classes else None

    def _run_policy(
        self, root_module: nn.Module, ignored_modules: set[nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[nn.Module, dict[str, Any]]:
        classes = tuple(decoder_layer_classes(root_module, self.layer_classes))
        return {
            m: copy.copy(root_kwargs)
            for m in root_module.modules()
            if m not in ignored_modules and isinstance(m, classes)
        }

    def __repr__(self) -> str:
        return f"DecoderLayerPolicy({list(self.layer_classes or ['<the model _no_split_modules>'])})"


def fsdp_strategy(
    layer_classes: Sequence[str] | None = None,
    activation_checkpointing: bool = True,
    sharding_strategy: str = "FULL_SHARD",
    state_dict_type: str = "auto",
    cpu_offload: bool = False,
    peft: str | None = None,
) -> FSDPStrategy:
    """Lightning's FSDPStrategy with one FSDP unit per decoder layer (`use_orig_params`, so LoRA works).

    Args:
        layer_classes: class names of the layers to wrap; None: the model's `_no_split_modules`.
        activation_checkpointing: recompute each decoder layer in the backward pass.
        sharding_strategy: FULL_SHARD, SHARD_GRAD_OP or HYBRID_SHARD (shard in a node, replicate across).
        state_dict_type: checkpoints as `sharded` (a folder, one file per rank), `full` (one file, gathered
            on rank 0) or `auto`: full with peft (adapter-only checkpoints are small, and Lightning cannot
            resume a sharded one that lacks the frozen weights), sharded for full fine-tuning.
        cpu_offload: keep parameters and gradients in CPU memory between uses (slow, for models that do
            not fit otherwise).
        peft: the run's peft `_target_` (None: full fine-tuning); decides `state_dict_type=auto`.
    """
    if state_dict_type not in STATE_DICT_TYPES:
        raise ValueError(
            f"trainer.strategy.state_dict_type={state_dict_type!r}: expected one of {list(STATE_DICT_TYPES)}"
        )
    if state_dict_type == "auto":
        state_dict_type = "full" if peft else "sharded"
    # a LoRA layer's unit holds its frozen weights and its adapter: by design (the frozen part costs gradient
    # memory, sharded); torch warns once per layer, listing every weight
    warnings.filterwarnings("ignore", message=r".*has both parameters with requires_grad=True and False")
    policy = DecoderLayerPolicy(layer_classes)
    return FSDPStrategy(
        auto_wrap_policy=policy,
        activation_checkpointing_policy=policy if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,  # frozen and trainable weights in one unit (LoRA); optimizer on the originals
        limit_all_gathers=True,
    )


# ----------------------------------------------------------------------------- checks
def strategy_kind(trainer_cfg: Mapping[str, Any]) -> str:
    """`fsdp`, `deepspeed_stage_<n>[...]`, `ddp[...]` or the strategy's name, from a trainer config node.

    >>> strategy_kind({"strategy": {"_target_": "itune.scale.fsdp_strategy"}})
    'fsdp'
    >>> strategy_kind({"strategy": {"_target_": "lightning.pytorch.DeepSpeedStrategy", "stage": 3}})
    'deepspeed_stage_3'
    """
    strategy = trainer_cfg.get("strategy") or "auto"
    if isinstance(strategy, str):
        return "fsdp" if strategy.lower().startswith("fsdp") else strategy.lower()
    name = str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if "fsdp" in name:
        return "fsdp"
    if "deepspeed" in name:
        return f"deepspeed_stage_{strategy.get('stage', 2)}"
    return "ddp" if "ddp" in name else name


def _device_count(devices: Any) -> int | None:
    """How many devices a `trainer.devices` value asks for (`auto`/-1: the visible GPUs; None: unknown)."""
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return torch.cuda.device_count() or None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else None


def _eval_problems(cfg: DictConfig, kind: str) -> list[str]:
    suites = (cfg.get("eval") or {}).get("suites") or {}
    periodic = "periodic_eval" in (cfg.get("callbacks") or {})
    if not suites and not periodic:
        return []
    what = "eval.suites" if suites else "callbacks.periodic_eval"
    return [
        f"{what} generate with the whole model on each process, but trainer.strategy={kind} shards the "
        "parameters across processes: train with eval=none and without callbacks.periodic_eval, then "
        "evaluate the saved run with `itune-eval run=<run dir>`"
    ]


def scale_problems(cfg: DictConfig) -> list[str]:
    """Every combination of trainer strategy, model options, regularizer, eval and quantization that
    cannot work, one line each (empty: none)."""
    trainer = cfg.get("trainer") or {}
    model = cfg.get("model") or {}
    kind = strategy_kind(trainer)
    fsdp, deepspeed = kind == "fsdp", kind.startswith("deepspeed")
    zero3 = kind.startswith("deepspeed_stage_3")
    sharded = fsdp or zero3
    problems: list[str] = []
    accelerator = str(trainer.get("accelerator", "auto"))
    if (fsdp or deepspeed) and accelerator in ("cpu", "mps"):
        problems.append(
            f"trainer.strategy={kind} needs CUDA GPUs, but trainer.accelerator={accelerator}: run "
            "trainer=fsdp/deepspeed_zero2/deepspeed_zero3 on a GPU machine (they set accelerator=gpu), or "
            "use trainer=cpu or trainer=ddp here"
        )
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            f"trainer.strategy={kind} needs the deepspeed package: pip install 'itune[scale]' "
            "(or pip install deepspeed)"
        )
    if fsdp and _device_count(trainer.get("devices", "auto")) == 1 and int(trainer.get("num_nodes", 1)) == 1:
        problems.append(
            "trainer=fsdp on one device shards nothing (FSDP falls back to NO_SHARD, which breaks saving "
            "adapters): use trainer=gpu for one GPU, or trainer.devices=N with N >= 2"
        )
    strategy = trainer.get("strategy")
    checkpoints_layers = isinstance(strategy, Mapping) and bool(strategy.get("activation_checkpointing"))
    if fsdp and checkpoints_layers and model.get("gradient_checkpointing"):
        problems.append(
            "trainer.strategy.activation_checkpointing=true (trainer=fsdp) recomputes every decoder layer, "
            "and model.gradient_checkpointing=true would recompute them again: set "
            "model.gradient_checkpointing=false (or trainer.strategy.activation_checkpointing=false)"
        )
    if sharded and model.get("compile"):
        problems.append(
            f"model.compile=true does not work with trainer.strategy={kind}: the compiled forward would run "
            "over weights the strategy shards and gathers layer by layer; set model.compile=false "
            "(compile works with trainer=gpu, ddp and deepspeed_zero2)"
        )
    if zero3 and model.get("liger_kernel"):
        problems.append(
            f"model.liger_kernel=true does not work with trainer.strategy={kind}: its fused loss reads the "
            "LM head weight outside the head's forward, where ZeRO-3 keeps it partitioned; set "
            "model.liger_kernel=false, or use trainer=deepspeed_zero2 or trainer=fsdp"
        )
    if zero3 and model.get("chunked_loss", True) and not model.get("liger_kernel"):
        problems.append(
            f"model.chunked_loss={model.get('chunked_loss', True)} does not work with "
            f"trainer.strategy={kind}: the chunked loss reads the LM head weight outside the head's forward, "
            "where ZeRO-3 keeps it partitioned; set model.chunked_loss=false, or use trainer=fsdp or "
            "trainer=deepspeed_zero2"
        )
    regularizer = cfg.get("regularizer") or {}
    if sharded and "L2ToInit" in str(regularizer.get("_target_", "")):
        problems.append(
            f"regularizer=l2_init reads the trainable weights outside the forward, where "
            f"trainer.strategy={kind} keeps them sharded: use regularizer=kl_base or none, or trainer=ddp "
            "or trainer=deepspeed_zero2"
        )
    if sharded:
        problems += _eval_problems(cfg, kind)
    problems += quantization_problems(cfg, kind)
    return problems


def check_scale(cfg: DictConfig) -> None:
    """Refuse a strategy/model/quantization combination that cannot work, before anything is loaded.

    Raises:
        ValueError: one line naming each conflicting setting, why, and what to use instead.
    """
    problems = scale_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------- saving sharded runs
def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _prefix(wrapped: nn.Module, model: nn.Module) -> str:
    """The state dict key prefix of `model` inside `wrapped` (the wrapper segments removed)."""
    for name, module in wrapped.named_modules():
        if module is model:
            for segment in _WRAPPER_SEGMENTS:
                name = name.replace(segment, "").replace(segment.rstrip("."), "")
            return f"{name.strip('.')}." if name.strip(".") else ""
    raise ValueError(f"{type(model).__name__} is not inside the strategy's wrapped module")


def fsdp_full_state_dict(wrapped: nn.Module, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """All ranks: the full state dict of `model` (a submodule of the FSDP-wrapped `wrapped`), gathered unit
    by unit into rank 0's CPU memory; None on the other ranks."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = next(wrapped.parameters()).device.type == "cuda"
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
        full = wrapped.state_dict()
    if _rank() != 0:
        return None
    prefix = _prefix(wrapped, model)
    return _tie({k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, model)


def _clean(name: str) -> str:
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def _tie(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state` with the keys of one shared (tied) parameter of `model` on one tensor, as in the plain model's
    own state dict, so `save_pretrained` writes a tied weight once (e.g. the LM head tied to the
    embeddings)."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = _clean(name)
        if key in state:
            state[key] = state[first.setdefault(id(param), key)]
    return state


def zero3_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """All ranks: the full state dict of a DeepSpeed ZeRO-3 partitioned `model`, one parameter gathered at a
    time into rank 0's CPU memory (tied weights stay one tensor); None on the other ranks."""
    import deepspeed

    rank0 = _rank() == 0
    params = dict(model.named_parameters(remove_duplicate=False))
    gathered: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        param = params.get(key)
        if param is None or not hasattr(param, "ds_id"):
            out[key] = value.detach().cpu()
            continue
        if id(param) not in gathered:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                gathered[id(param)] = param.detach().cpu().clone() if rank0 else param.new_empty(0)
        out[key] = gathered[id(param)]
    return out if rank0 else None


def gather_for_save(strategy: Strategy, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """All ranks, after `fit`: `model`'s full weights on rank 0 when `strategy` shards them (FSDP, ZeRO-3),
    keyed as in the plain model, for `itune.runs.write.save_model(..., state_dict=...)` to write a standard
    peft adapter or transformers model folder; None on other ranks and under strategies where every rank
    holds them whole (one device, DDP, ZeRO-1/2): the model's own state dict is then saved."""
    if isinstance(strategy, FSDPStrategy):
        return fsdp_full_state_dict(strategy.model, model)
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        return zero3_full_state_dict(model)
    return None


@contextmanager
def without_wrappers(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its FSDP and activation-checkpointing wrappers swapped for the modules they wrap, so its
    module names are those of the plain model (peft picks the adapter's keys by module name); put back on
    exit. The weights of the unwrapped modules are the strategy's shards: save with a gathered state dict."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            inner = child
            while (unwrapped := _wrapped_module(inner)) is not None:
                inner = unwrapped
            if inner is not child:
                swapped.append((parent, name, child))
                setattr(parent, name, inner)
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def _wrapped_module(module: nn.Module) -> nn.Module | None:
    for segment in _WRAPPER_SEGMENTS:
        inner = module._modules.get(segment.rstrip("."))
        if inner is not None:
            return inner
    return None
