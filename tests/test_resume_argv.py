"""`itune-train resume=<dir>` under DDP: ranks >= 1 get rank 0's rewritten command line and keep it."""

from __future__ import annotations

from pathlib import Path

from itune.resume_run import resume_argv


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- trainer.devices=2\n")
    return run


def test_a_rewritten_command_line_is_kept(tmp_path):
    run = _run_dir(tmp_path)
    rewritten = resume_argv([f"resume={run}"])  # what rank 0 runs
    assert "ckpt_path=last" in rewritten and f"resume='{run.resolve()}'" in rewritten
    # Lightning's launcher starts rank 1 with it, plus its own hydra.* overrides
    rank1 = [*rewritten, f'hydra.run.dir="{run.resolve()}"', "hydra.job.name=train_ddp_process_1"]
    assert resume_argv(rank1) == rank1
    assert resume_argv(rewritten) == rewritten


def test_a_partial_rewrite_is_still_resolved(tmp_path):
    run = _run_dir(tmp_path)
    argv = [f"resume={run}", "ckpt_path=last", "resume_allow_changes=true"]  # no hydra.run.dir: rewrite
    rewritten = resume_argv(argv)
    assert rewritten != argv and "model=tiny" in rewritten
    assert f"hydra.run.dir='{run.resolve()}'" in rewritten
