"""Training writes the forgetting report; itune-eval reproduces it from the run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from itune.train import train

pytestmark = pytest.mark.slow
SMALL_DEMO_EVAL = [
    "eval=demo",
    "eval.suites.disclaimer.limit=4",
    "eval.suites.general_rules.limit=4",
    "eval.suites.disclaimer.max_new_tokens=8",
    "eval.suites.general_rules.max_new_tokens=8",
]
TINY = ["model=tiny", "template=chatml", "logger=csv", "trainer=debug", "trainer.limit_val_batches=1.0"]


def itune_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("itune-eval")), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def demo_run(compose_train, tmp_path):
    """A tiny run on the demo mix with the demo rule suites (few prompts), cache in tmp_path."""
    cfg = compose_train(*TINY, *SMALL_DEMO_EVAL, f"eval.cache_dir={tmp_path / 'cache'}")
    metrics, _ = train(cfg)
    return Path(cfg.run_dir), metrics, cfg


def test_training_writes_the_forgetting_report(demo_run, tmp_path):
    run_dir, metrics, _ = demo_run
    report = json.loads((run_dir / "forgetting.json").read_text())
    rows = {r["metric"]: r for r in report["rows"]}
    assert {"eval/disclaimer/ends_with_disclaimer", "eval/general_rules/no_disclaimer"} <= set(rows)
    assert rows["val/domain/loss"]["kind"] == "domain" and rows["val/general/loss"]["kind"] == "general"
    for key, row in rows.items():
        assert metrics[key] == pytest.approx(row["tuned"])
        if not row["informational"]:  # KL to the base rows: the base's KL is 0 by definition
            assert metrics[f"base/{key}"] == pytest.approx(row["base"])
    rule = rows["eval/disclaimer/ends_with_disclaimer"]
    assert (
        rule["n"] == 4 and rule["test"] == "mcnemar" and rule["ci_lo"] <= rule["improvement"] <= rule["ci_hi"]
    )
    assert rule["mde"] >= 1 and not rule["regression"]  # 4 prompts can never show a significant change
    assert rows["val/general/loss"]["n"] is None and not rows["val/general/loss"]["regression"]
    summary_keys = [
        f"{k}{b}" for k in ("gain/domain_delta", "forgetting/general_delta") for b in ("", "_lo", "_hi")
    ] + ["forgetting/regressions", "forgetting/significant_regressions"]
    for key in summary_keys:
        assert metrics[key] == report["summary"][key]
    assert metrics["forgetting/general_delta_lo"] <= metrics["forgetting/general_delta"]
    assert metrics["forgetting/general_delta"] <= metrics["forgetting/general_delta_hi"]
    assert (run_dir / "forgetting.md").exists() and (run_dir / "forgetting.png").exists()
    for model in ("base", "tuned"):
        lines = (run_dir / f"items_{model}.jsonl").read_text().splitlines()
        assert len(lines) == 8 and {json.loads(line)["suite"] for line in lines} == {
            "disclaimer",
            "general_rules",
        }
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # one cached base result per suite


def test_itune_eval_reproduces_the_report(demo_run, tmp_path):
    run_dir, metrics, _ = demo_run
    done = itune_eval(
        f"run={run_dir}",
        *SMALL_DEMO_EVAL,
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'eval_out'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval_out" / "eval_metrics.json").read_text())
    for key in ("eval/disclaimer/ends_with_disclaimer", "eval/general_rules/no_disclaimer"):
        assert evaluated[key] == pytest.approx(metrics[key])
        assert evaluated[f"base/{key}"] == pytest.approx(metrics[f"base/{key}"])
    assert (tmp_path / "eval_out" / "forgetting.md").exists()
    for model in ("base", "tuned"):  # the same item scores (greedy answers, cached base)
        assert (tmp_path / "eval_out" / f"items_{model}.jsonl").read_text() == (
            run_dir / f"items_{model}.jsonl"
        ).read_text()


def test_itune_eval_refuses_another_template(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    done = itune_eval(f"run={run_dir}", "template=alpaca", "eval=demo", cwd=tmp_path)
    assert done.returncode != 0
    assert "template mismatch" in done.stderr and "alpaca" in done.stderr


def test_periodic_eval_callback_logs_during_training(compose_train, tmp_path):
    cfg = compose_train(
        *TINY,
        "callbacks=periodic_eval",
        "callbacks.periodic_eval.suites.disclaimer.limit=2",
        "callbacks.periodic_eval.suites.disclaimer.max_new_tokens=4",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    )
    _, objects = train(cfg)
    callback = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "PeriodicEval")
    assert [h["step"] for h in callback.history] == [2, 4]
    assert all("eval/disclaimer/ends_with_disclaimer" in h for h in callback.history)


@pytest.mark.parametrize(("at_least", "steps"), [(0.0, [2]), (1.1, [2, 4, 6])])
def test_stop_at_target_stops_at_the_first_eval_that_reaches_it(compose_train, at_least, steps):
    """Runs compared at matched gain: training ends at the step whose periodic eval reached the target
    (0.0: the first one, at step 2 of 6); an unreachable target (1.1) lets the run go to max_steps."""
    cfg = compose_train(
        *TINY,
        "callbacks=periodic_eval",
        "callbacks.periodic_eval.suites.disclaimer.limit=2",
        "callbacks.periodic_eval.suites.disclaimer.max_new_tokens=4",
        "+callbacks.periodic_eval.on_eval.stop={_target_: itune.eval.callback.StopAtTarget, "
        f"metric: eval/disclaimer/ends_with_disclaimer, at_least: {at_least}}}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
    )
    metrics, objects = train(cfg)
    callback = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "PeriodicEval")
    assert [h["step"] for h in callback.history] == steps
    assert metrics["train/steps"] == steps[-1]
    assert callback.on_eval[0].reached_at == (2 if at_least == 0.0 else None)


def test_stop_at_target_names_the_valid_metrics():
    from itune.eval.callback import StopAtTarget

    with pytest.raises(KeyError, match="eval/x/ok"):
        StopAtTarget("eval/x/typo", 0.9)(None, {"eval/x/ok": 1.0})
