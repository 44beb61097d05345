"""Load base models and tokenizers (hub id, local directory, or a tiny random model) and apply peft."""

from __future__ import annotations

import atexit
import copy
import functools
import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from itune.lora_dropout import fuse_lora_dropout
from itune.quantization import is_quantized, prepare_quantized, quantized_load_kwargs

log = logging.getLogger(__name__)

# Markers of the built-in templates, so every template works with the byte-level test tokenizer.
BYTE_SPECIAL_TOKENS = [
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHATML_JINJA = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_tokenizer(special_tokens: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A 265-token tokenizer (256 bytes + the built-in templates' markers) that needs no download.

    Every byte is one token, so any text round-trips exactly. Like SmolLM2, EOS == PAD == <|im_end|>
    (so tests catch labels derived from the pad id), and it carries a ChatML chat_template.

    Args:
        special_tokens: markers added as single tokens besides <s>, <unk> and <|im_end|>
            (default: the rest of ChatML's and Llama 3's).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|im_end|>",
    )
    extra = [t for t in BYTE_SPECIAL_TOKENS if t not in fast.all_special_tokens]
    fast.add_special_tokens(
        {"additional_special_tokens": extra if special_tokens is None else special_tokens}
    )
    fast.chat_template = CHATML_JINJA
    fast.name_or_path = "itune/byte-level"
    return fast


def tiny_llama(
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised small Llama for tests and smoke runs (no download).

    The vocabulary is larger than the byte tokenizer's 265 tokens, as real models pad theirs.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def load_causal_lm(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    revision: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    quantization_config: Any | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a hub id or a local directory.

    Args:
        name_or_path: hub id (e.g. `Qwen/Qwen2.5-0.5B`) or a local model directory.
        dtype: torch dtype name of the weights (`float32`, `bfloat16`, `float16`).
        attn_implementation: `sdpa`, `eager` or `flash_attention_2` (needs the flash-attn package).
        revision: git revision on the hub, pinned for reproducible runs.
        trust_remote_code: run modelling code from the model repository; off unless a user sets it.
        gguf_file: a GGUF file inside `name_or_path` to dequantize and load.
        quantization_config: a transformers quantization config (`quantization=nf4`: 4-bit bitsandbytes for
            QLoRA), loaded onto this process's GPU.
    """
    quantized = quantized_load_kwargs(quantization_config) if quantization_config is not None else {}
    return AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation,
        revision=revision,
        trust_remote_code=trust_remote_code,
        gguf_file=gguf_file,
        **quantized,
    )


def load_tokenizer(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer; sets a pad token (the EOS) when the tokenizer has none."""
    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_peft_saveable(peft_config: PeftConfig | None) -> None:
    """Write the peft config to a scratch folder now, so a value peft cannot save fails before training.

    Raises:
        ValueError: naming the peft config and the value that could not be written.
    """
    if peft_config is None:
        return
    with tempfile.TemporaryDirectory() as scratch:
        try:
            peft_config.save_pretrained(scratch)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"peft: the adapter config could not be saved ({e}); give lists and dicts as plain values, "
                "e.g. 'peft.target_modules=[q_proj,v_proj]'"
            ) from e


# peft inits that move the base weights: the adapter starts on the top singular directions (PiSSA, CorDA)
# or an orthonormal basis (OLoRA) of W and the base keeps W minus that part: the adapter disabled is not the
# base model
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
UNSUPPORTED_INITS = ("eva", "lora_ga")  # need a data or gradient pass after wrapping that itune does not run


def base_changing_init(model_or_config: nn.Module | PeftConfig | None) -> str | None:
    """The `init_lora_weights` of a peft model or config when it changes the base weights, else None.

    >>> from peft import LoraConfig
    >>> base_changing_init(LoraConfig(init_lora_weights="pissa_niter_4")), base_changing_init(LoraConfig())
    ('pissa_niter_4', None)
    """
    if isinstance(model_or_config, PeftConfig):
        configs = [model_or_config]
    else:
        configs = list(getattr(model_or_config, "peft_config", {}).values())
    for config in configs:
        init = getattr(config, "init_lora_weights", True)
        if isinstance(init, str) and init.startswith(BASE_CHANGING_INITS):
            return init
    return None


def _expand_all_linear(model: nn.Module, config: PeftConfig) -> PeftConfig:
    """A copy of `config` whose `target_modules="all-linear"` names the model's linear layers (not the
    LM head), as peft does when wrapping; CorDA's preprocessing needs the names before that."""
    if getattr(config, "target_modules", None) != "all-linear":
        return config
    head = model.get_output_embeddings()
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head
    }
    config = copy.copy(config)
    config.target_modules = names
    return config


def _preprocess_corda(
    model: nn.Module, config: PeftConfig, calibration: Iterable[Sequence[int]] | None
) -> None:
    """Run CorDA's covariance collection on `calibration` (token id rows, one forward each, no grad)."""
    from peft.tuners.lora.corda import preprocess_corda

    rows = [list(r) for r in calibration or []]
    if not rows:
        raise ValueError(
            "peft.init_lora_weights=corda needs calibration rows (peft_init_rows training rows of "
            "eval.general_sources); the training mixture has none: add a general source or pick another init"
        )
    device = next(model.parameters()).device

    def run_model() -> None:  # CorDA's hooks take one unpadded sequence per forward
        for ids in rows:
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)

    was_training = model.training
    preprocess_corda(model, config, run_model=run_model)
    model.train(was_training)
    log.info("CorDA (%s): covariance of %d rows", config.corda_config.corda_method, len(rows))


def _convert_on_save(model: PeftModel) -> None:
    """Make `model.save_pretrained` write a standard LoRA adapter (rank 2r) for the original base weights.

    For inits that change the base weights, peft converts the trained adapter when given the adapter as
    initialised (`path_initial_model_for_weight_conversion`): saved here, in a scratch folder removed at
    exit. The saved adapter then loads on the plain base model (eval, export, interpolation, chat).
    """
    scratch = tempfile.mkdtemp(prefix="itune-initial-adapter-")
    atexit.register(shutil.rmtree, scratch, True)
    model.save_pretrained(scratch)
    model.save_pretrained = functools.partial(  # type: ignore[method-assign]
        model.save_pretrained, path_initial_model_for_weight_conversion=scratch
    )


def apply_peft(
    model: PreTrainedModel,
    peft_config: PeftConfig | None,
    calibration: Iterable[Sequence[int]] | None = None,
    fuse_dropout: bool = True,
) -> PreTrainedModel | PeftModel:
    """Wrap `model` with a peft adapter, or return it unchanged for full fine-tuning.

    `peft.init_lora_weights` picks the adapter's init (conf/peft/lora.yaml lists them); `corda` runs
    CorDA's preprocessing on `calibration` (token id rows) first. For inits that change the base weights
    (PiSSA, OLoRA, CorDA) the run's adapter is saved converted to a plain LoRA for the original base.
    `fuse_dropout` fuses LoRA dropout into lora_A (itune.lora_dropout: same numbers, less activation
    memory); False keeps stock peft layers.

    Raises:
        ValueError: for an init itune cannot run (EVA, LoRA-GA), or CorDA without calibration rows.
    """
    if is_quantized(model):  # QLoRA: peft's k-bit preparation first (refuses full fine-tuning)
        model = prepare_quantized(model, peft_config)
    if peft_config is None:
        return model
    init = getattr(peft_config, "init_lora_weights", True)
    if isinstance(init, str) and init.startswith(UNSUPPORTED_INITS):
        raise ValueError(
            f"peft.init_lora_weights={init} needs a pass over data after wrapping that itune does not run; "
            "use true, gaussian, orthogonal, pissa, pissa_niter_<n>, olora or corda"
        )
    if init == "corda":
        peft_config = _expand_all_linear(model, peft_config)
        _preprocess_corda(model, peft_config, calibration)
    wrapped = get_peft_model(model, peft_config)
    if base_changing_init(peft_config):
        _convert_on_save(wrapped)
    if fuse_dropout:
        log.info("peft: LoRA dropout fused into lora_A of %d layers", fuse_lora_dropout(wrapped))
    trainable, total = wrapped.get_nb_trainable_parameters()
    log.info(
        "peft: %s trainable of %s parameters (%.2f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return wrapped


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def compile_model(model: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """Compile the model's forward in place with `torch.compile` (state dict keys unchanged).

    Worth it on GPU for long runs; the first steps pay the compilation, and every new batch shape may
    recompile (packed rows with `data.pack_scope=dataset` keep shapes nearly fixed).
    """
    model.compile(mode=mode, dynamic=True)
    log.info("torch.compile: model forward compiled (mode=%s)", mode or "default")
    return model


def apply_liger_kernel(model: PreTrainedModel) -> PreTrainedModel:
    """Patch a transformers model in place with liger-kernel's Triton kernels (GPU): RMSNorm, RoPE,
    SwiGLU and the fused linear cross-entropy that never materialises the full logits.

    Raises:
        ImportError: when liger-kernel is not installed, saying how to install it or switch it off.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as e:
        raise ImportError(
            "model.liger_kernel=true needs the liger-kernel package (GPU, Triton): "
            "pip install 'itune[gpu]' (or pip install liger-kernel), or set model.liger_kernel=false"
        ) from e
    _apply_liger_kernel_to_instance(model=model)
    log.info("liger-kernel applied to %s", type(model).__name__)
    return model
