"""WiSE-FT: `itune-eval interpolate=[...]` (base + λ·(tuned − base)) and `itune-export scale=`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from transformers import AutoModelForCausalLM

from itune.eval.evaluate import run_eval
from itune.inference.export import export_run
from itune.inference.interpolate import interpolation, scaled_adapter
from itune.inference.loading import load_run
from itune.model import tiny_llama

pytestmark = pytest.mark.slow
SCALES = [0.0, 0.5, 1.0]
X = torch.randint(0, 265, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 6-step LoRA run and a 6-step full fine-tune of the tiny model."""
    from tests.tiny_runs import tiny_run

    base = tmp_path_factory.mktemp("runs")
    return {
        "lora": tiny_run(base, "chatml"),
        "full": tiny_run(base, "chatml", "peft=none", "optimizer.lr=1e-3"),
    }


def eval_cfg(run: Path, out: Path, data: Path, *overrides: str):
    """itune-eval's config: 4 disclaimer prompts (domain) and perplexity on 8 Alpaca rows (general)."""
    ppl = (
        "+eval.suites.ppl={_target_:itune.eval.perplexity.PerplexitySuite,"
        f"references:{{alpaca:{{path:'{data}',format:alpaca}}}},limit:8,kind:general}}"
    )
    small = ["eval.suites.disclaimer.limit=4", "eval.suites.disclaimer.max_new_tokens=6"]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                f"run={run}",
                f"run_dir={out}",
                "eval=demo",
                "~eval.suites.general_rules",
                *small,
                ppl,
                f"eval.cache_dir={out / 'cache'}",
                "eval.show_samples=0",
                "eval.stats.n_boot=200",
                *overrides,
            ],
        )


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_interpolation_ends_reproduce_base_and_tuned_metrics_exactly(runs, kind, tmp_path):
    run = runs[kind]
    out = tmp_path / "eval"
    metrics = run_eval(eval_cfg(run, out, run.parent / "alpaca.json", f"interpolate={SCALES}"))
    keys = [k for k in metrics if k.startswith("eval/")]
    assert {"eval/disclaimer/ends_with_disclaimer", "eval/ppl/alpaca_loss"} <= set(keys)
    for key in keys:
        assert metrics[f"interpolate/0/{key}"] == metrics[f"base/{key}"], key  # λ = 0: the base model
        assert metrics[f"interpolate/1/{key}"] == metrics[key], key  # λ = 1: the tuned model
    loss = "eval/ppl/alpaca_loss"
    assert metrics[f"base/{loss}"] != metrics[loss]  # the run did move
    assert metrics[f"interpolate/0.5/{loss}"] not in (metrics[loss], metrics[f"base/{loss}"])
    assert metrics["interpolate/0/gain/domain_delta"] == 0.0
    assert metrics["interpolate/0/forgetting/general_delta"] == 0.0
    assert metrics["interpolate/1/gain/domain_delta"] == metrics["gain/domain_delta"]
    curve = json.loads((out / "interpolation.json").read_text())
    assert [p["scale"] for p in curve["points"]] == SCALES
    rule = next(
        r for r in curve["points"][1]["rows"] if r["metric"] == "eval/disclaimer/ends_with_disclaimer"
    )
    assert rule["n"] == 4 and rule["ci_lo"] <= rule["improvement"] <= rule["ci_hi"]  # CIs per λ
    assert "| 0.5 |" in (out / "interpolation.md").read_text()
    assert (out / "interpolation.png").stat().st_size > 0


def test_interpolate_without_a_run_says_what_to_set(tmp_path):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"run_dir={tmp_path}",
                "model=tiny",
                "template=chatml",
                "eval=demo",
                "interpolate=[0.5]",
            ],
        )
    with pytest.raises(ValueError, match="needs run=<run dir>"):
        run_eval(cfg)


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model.eval()(input_ids=X).logits


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_export_lora_at_a_scale_equals_the_scaled_adapter(runs, merge, tmp_path):
    model, _, _ = load_run(runs["lora"])
    with scaled_adapter(model, 0.5):
        expected = logits(model)
    out = export_run(runs["lora"], tmp_path / "export", merge=merge, scale=0.5)
    if merge:
        exported = AutoModelForCausalLM.from_pretrained(out)
    else:
        from peft import PeftModel

        exported = PeftModel.from_pretrained(tiny_llama(seed=0), out)
    torch.testing.assert_close(logits(exported), expected, atol=1e-5, rtol=0)
    assert "interpolation scale | `0.5" in (out / "README.md").read_text()


def test_export_full_fine_tune_at_scale_0_is_the_base_and_at_0_5_the_midpoint(runs, tmp_path):
    base, tuned = tiny_llama(seed=0), load_run(runs["full"])[0]
    zero = AutoModelForCausalLM.from_pretrained(export_run(runs["full"], tmp_path / "zero", scale=0.0))
    assert torch.equal(logits(zero), logits(base))
    half = AutoModelForCausalLM.from_pretrained(export_run(runs["full"], tmp_path / "half", scale=0.5))
    for name, param in half.state_dict().items():
        if param.is_floating_point():
            mid = torch.lerp(base.state_dict()[name], tuned.state_dict()[name], 0.5)
            torch.testing.assert_close(param, mid, atol=1e-6, rtol=0)
    _, at = interpolation(tuned, lambda: tiny_llama(seed=0))
    with at(0.5) as model:
        torch.testing.assert_close(logits(model), logits(half), atol=1e-5, rtol=0)
