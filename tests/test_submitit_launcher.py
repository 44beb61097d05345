"""hydra-submitit-launcher under itune-train: a real 2-trial Optuna sweep of the tiny model through
`hydra/launcher=submitit_local` (each job a submitit subprocess), and the Slurm presets (slurm_ddp,
slurm_ddp_multinode) composed down to the sbatch script submitit would submit and to the Slurm
environment Lightning's DDP reads in each task (no Slurm here: a stand-in `srun` on PATH)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from tests.test_sweep import TINY, command

MATCHED = ["++trainer.num_nodes=${hydra:launcher.nodes}", "trainer.devices=${hydra:launcher.gpus_per_node}"]


def _compose(monkeypatch, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # put back after the test
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:…} as in a job
    return cfg


def _sbatch(cfg: DictConfig, folder: Path, monkeypatch) -> str:
    """The sbatch script hydra-submitit-launcher's SlurmLauncher would submit for one job of `cfg`."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake = folder / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)  # the plugin itself, with the preset's params
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder / "submitit")
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # the same mapping as SlurmLauncher.launch
    skip = {"submitit_folder", "max_num_timeout"}
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in launcher.params.items() if k not in skip}
    )
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")


@pytest.mark.parametrize(
    ("preset", "nodes", "gpus"),
    [("slurm_ddp", 1, 4), ("slurm_ddp_multinode", 2, 8), ("slurm_ddp_multinode", 4, 8)],
)
def test_slurm_presets_give_every_trial_one_task_per_gpu(preset, nodes, gpus, tmp_path, monkeypatch):
    sizes = [f"hydra.launcher.gpus_per_node={gpus}"] + (
        [f"hydra.launcher.nodes={nodes}"] if nodes > 2 else []
    )
    cfg = _compose(
        monkeypatch,
        f"hydra/launcher={preset}",
        "hparams_search=forgetting_optuna",
        "trainer=gpu",
        "hydra.launcher.partition=gpu",
        *sizes,
        *MATCHED,
    )
    node = cfg.hydra.launcher
    fields = {
        f.name
        for f in dataclasses.fields(get_class("hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf"))
    }
    assert set(node) <= fields, set(node) - fields  # only keys the plugin's schema has
    assert (node.nodes, node.gpus_per_node, node.tasks_per_node) == (nodes, gpus, gpus)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (nodes, gpus)  # interpolated from the launcher
    script = _sbatch(cfg, tmp_path, monkeypatch)
    for line in (
        f"--nodes={nodes}",
        f"--ntasks-per-node={gpus}",
        f"--gpus-per-node={gpus}",
        "--partition=gpu",
    ):
        assert f"#SBATCH {line}\n" in script, script
    assert "\nsrun " in script  # srun starts the tasks: SLURM_PROCID/LOCALID/NODEID per task


def test_lightning_reads_the_multinode_jobs_slurm_environment(monkeypatch):
    """Rank 9 of a 2 x 8 job: Lightning's SLURMEnvironment gives it node 1, local rank 1 and accepts the
    trainer's numbers, and refuses a trainer that asks for other numbers than the job's."""
    import lightning as L

    cfg = _compose(monkeypatch, "hydra/launcher=slurm_ddp_multinode", "trainer=gpu", *MATCHED)
    launcher = cfg.hydra.launcher
    tasks = launcher.nodes * launcher.tasks_per_node
    env = {
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(launcher.tasks_per_node),
        "SLURM_NNODES": str(launcher.nodes),
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NODELIST": "gpu[01-02]",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "4242",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = L.Trainer(  # the job's trainer numbers, on CPU here (no GPU needed to build it)
        accelerator="cpu",
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
    )
    slurm = trainer.strategy.cluster_environment
    assert type(slurm).__name__ == "SLURMEnvironment"
    assert (slurm.global_rank(), slurm.local_rank(), slurm.node_rank(), slurm.world_size()) == (
        9,
        1,
        1,
        tasks,
    )
    assert slurm.main_address == "gpu01" and trainer.world_size == tasks
    slurm.validate_settings(
        num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes
    )  # what DDP checks
    with pytest.raises(ValueError, match="ntasks-per-node"):
        slurm.validate_settings(num_devices=4, num_nodes=cfg.trainer.num_nodes)


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_runs_through_submitit_local(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = command(
        "itune-train",
        "-m",
        *TINY,
        "hparams_search=forgetting_optuna",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=submitit",
        f"hydra.sweep.dir={tmp_path / 'study'}",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",  # both trials in one launch: two submitit jobs at once
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    study = optuna.load_study(study_name="submitit", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        job = tmp_path / "study" / str(trial.number)
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed" and status["objective"] == pytest.approx(trial.value)
        assert {"gain/domain_delta", "forgetting/general_delta_lo"} <= set(
            json.loads((job / "metrics.json").read_text())
        )
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optuna_trial=") and f"number:{trial.number}}}" in o for o in overrides)
    logs = sorted((tmp_path / "study" / ".submitit").glob("*/*_log.out"))
    assert (
        len({p.parent.name for p in logs}) == 2
    )  # each trial its own submitit job (a local job id is a pid)
    results = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    assert results["complete"] == 2
