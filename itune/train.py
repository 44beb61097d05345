"""train(cfg): compose the groups into objects, evaluate the base model, fit, evaluate, save the run.

With several processes (`trainer.strategy=ddp trainer.devices=N`), Lightning's launcher re-runs the command
for ranks 1..N-1; each runs `train` too. Rank 0 alone writes the run directory (config, template, audit,
metrics, samples, reports, adapter, loggers) and checks a resume against the earlier attempt. All ranks
are started before the base evaluation, so the eval suites run once each, shared out across the ranks
(itune.eval.distributed), and every rank gets the same eval metrics. Strategies that shard the
parameters (FSDP, DeepSpeed ZeRO-3) are refused when eval suites are configured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from itune.data.audit import write_audit
from itune.eval.distributed import check_full_parameters
from itune.eval.forgetting import compare_runs, show_report, write_report
from itune.eval.runner import base_cache_keys, score_suites
from itune.model import (
    apply_liger_kernel,
    apply_peft,
    check_peft_saveable,
    compile_model,
    enable_gradient_checkpointing,
)
from itune.module import InstructionTuner
from itune.resume import resolve_ckpt_path
from itune.resume_run import check_resume, previous_attempt
from itune.runs import write as rd
from itune.runs.tracking import log_run_artifacts
from itune.scale import check_scale, gather_for_save

log = logging.getLogger(__name__)


def is_rank_zero() -> bool:
    """Whether this process is global rank 0. Before the process group is up Lightning knows the rank from
    the launcher's environment (LOCAL_RANK, RANK, SLURM_PROCID); NODE_RANK covers a second node's local
    rank 0 under Lightning's own launcher."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


def _start_processes(trainer: L.Trainer) -> None:
    """Start the other ranks now and join the process group, so that what runs before `fit` on every rank
    (the base evaluation) is shared out instead of repeated.

    Lightning's script launcher (strategy=ddp; torchrun and Slurm start the ranks themselves) re-runs this
    command for the other ranks, which run `train` up to here. A no-op with one process, when the group is
    already up, and under launchers that spawn workers for `fit` only (ddp_spawn/ddp_fork), where
    everything outside `fit` runs once, in the main process.

    Raises:
        ValueError: in a Hydra multirun, where the script launcher would re-run the whole sweep per rank.
    """
    launcher = trainer.strategy.launcher
    if trainer.num_devices * trainer.num_nodes <= 1 or not isinstance(launcher, _SubprocessScriptLauncher):
        return
    if not launcher.cluster_environment.creates_processes_externally and _in_multirun():
        raise ValueError(
            f"trainer.devices={trainer.num_devices} with {type(trainer.strategy).__name__} cannot start its "
            "processes inside a multirun (-m): Lightning's launcher would re-run the whole sweep for every "
            "rank. Sweep with the ranks started outside (hydra/launcher=slurm_ddp, or torchrun per job) or "
            "with one process a job"
        )
    if not torch.distributed.is_initialized():
        launcher.launch(trainer.strategy.setup_environment)


def _in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (sweep)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _nodes(group: DictConfig | None) -> list[Any]:
    """Instantiate every node of a name → node group (loggers, callbacks)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _validate(trainer: L.Trainer, module: InstructionTuner, datamodule: Any) -> dict[str, float]:
    """Validation losses (`val/loss`, `val/<source>/loss`) of the module's current weights."""
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def _calibration_rows(datamodule: Any, peft_config: Any, general: list[str], n: int) -> Iterator[list[int]]:
    """Token ids of the first `n` training rows (mixture order) that a data-driven peft init runs on:
    for CorDA's `kpm` (knowledge-preserved) mode the rows of the general sources (`eval.general_sources`,
    the knowledge to keep), for `ipm` those of the other (domain) sources. Lazy: read only by CorDA."""
    corda = getattr(peft_config, "corda_config", None)
    kpm = getattr(corda, "corda_method", "kpm") == "kpm"
    wanted = {i for i, name in enumerate(datamodule.source_names) if (name in general) == kpm}
    taken = 0
    for row in datamodule.train_set if wanted and n > 0 else ():
        if int(row["source"]) in wanted:
            yield list(row["input_ids"])
            taken += 1
            if taken >= n:
                return


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one training job described by a composed `train.yaml` config.

    Returns:
        metrics (the content of metrics.json) and the built objects (trainer, module, datamodule,
        tokenizer, template) for callers and tests.
    """
    check_scale(cfg)  # strategy/model/quantization combinations that cannot work fail before anything loads
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank0 = is_rank_zero()
    resuming = bool(cfg.get("ckpt_path"))
    # rank 0 reads the earlier attempt before overwriting it; other ranks start later and would read this one
    previous = previous_attempt(run_dir) if resuming and rank0 else {}
    if rank0:
        rd.save_config(run_dir, cfg)  # now too, so a crashed run keeps its config (secrets redacted)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    tokenizer = instantiate(cfg.model.tokenizer)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, template=template)
    datamodule.setup("fit")  # bad data fails here, before the model is loaded
    if resuming and rank0 and not cfg.get("resume_allow_changes"):
        model_cfg = rd.resolved_config(cfg)["model"]
        check_resume(
            previous,
            datamodule.manifest.get("mixture_hash"),
            (template.name, template.fingerprint),
            model_cfg,
        )
    if rank0:
        rd.save_template(run_dir, template)  # now too: inference and resume checks read it
    write_audit(run_dir, datamodule)  # audit.json/md, manifest.json (rank 0); fails if EOT is never trained

    model = instantiate(cfg.model.lm)
    if cfg.model.get("liger_kernel"):  # before peft: patches the base model's modules and loss
        apply_liger_kernel(model)
    if cfg.model.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    peft_config = instantiate(cfg.peft, _convert_="all") if cfg.get("peft") else None
    check_peft_saveable(peft_config)  # a value that cannot be saved fails now, not after training
    general = list(cfg.eval.get("general_sources") or [])
    rows = _calibration_rows(datamodule, peft_config, general, cfg.get("peft_init_rows", 64))
    model = apply_peft(model, peft_config, rows)  # rows: read only by a data-driven init (CorDA)
    if cfg.model.get("compile"):
        compile_model(model)
    suite_nodes = cfg.eval.get("suites") or {}
    suites = {name: instantiate(node) for name, node in suite_nodes.items()}
    on_base = cfg.eval.get("on_base", False)

    module = InstructionTuner(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        source_names=datamodule.source_names,
        fused_cross_entropy=bool(cfg.model.get("liger_kernel")),
        chunked_loss=cfg.model.get("chunked_loss", True),
        kl_base=cfg.get("kl_base", "auto"),
        regularizer=instantiate(cfg.regularizer) if cfg.get("regularizer") else None,
    )
    trainer = instantiate(
        cfg.trainer, logger=_nodes(cfg.get("logger")) or False, callbacks=_nodes(cfg.callbacks)
    )
    if suites:
        check_full_parameters(trainer.strategy, "eval.suites")
    _start_processes(trainer)  # every rank is up before the base evaluation, which they share
    base: dict[str, float] = {}
    samples: dict[str, Any] = {}
    items: dict[str, Any] = {}  # per-item scores of base and tuned, for the paired statistics
    if on_base:  # before training; a fresh LoRA adapter is the identity, so this is the base model
        if datamodule.val_set is not None:
            base |= _validate(trainer, module, datamodule)
        cache_dir = Path(cfg.eval.cache_dir) if cfg.eval.get("cache_dir") else None
        keys = base_cache_keys(
            OmegaConf.to_container(cfg.model, resolve=True),
            template,
            OmegaConf.to_container(suite_nodes, resolve=True),
        )
        suite_metrics, samples["base"], items["base"] = score_suites(
            suites, model, tokenizer, template, cache_dir, keys
        )
        base |= suite_metrics

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)  # `last`: resume this run dir's last.ckpt
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if datamodule.val_set is not None:  # final validation of the trained weights
        metrics |= _validate(trainer, module, datamodule)
    metrics |= datamodule.stats | {"train/steps": trainer.global_step}
    if suites:
        tuned, samples["tuned"], items["tuned"] = score_suites(suites, model, tokenizer, template)
        metrics |= tuned
    report = None
    if on_base:
        report = compare_runs(base, metrics, suites, datamodule.source_names, cfg.eval, items)
        metrics |= {f"base/{k}": v for k, v in base.items()} | report["summary"]
    if cfg.get("save_model", True):
        gather_for_save(trainer, model)  # FSDP/ZeRO-3: all ranks take part, rank 0 then saves whole weights
    if rank0:
        final = {k: v for k, v in metrics.items() if k.startswith(("eval/", "base/", "gain/", "forgetting/"))}
        for lg in trainer.loggers:
            if final:  # an empty dict would add an empty row to csv/metrics.csv
                lg.log_metrics(final, step=trainer.global_step)
            lg.save()
        rd.save_config(run_dir, cfg)
        rd.save_template(run_dir, template)
        rd.save_metrics(run_dir, metrics)
        if samples:
            rd.save_samples(run_dir, samples)
        if cfg.get("save_model", True):
            rd.save_model(run_dir, model, tokenizer)
        if report is not None:
            write_report(run_dir, report, items)
            show_report(report, samples, cfg.eval.get("show_samples", 3))
        log_run_artifacts(trainer.loggers, run_dir, cfg, metrics)  # params, lineage tags, artifacts
        log.info("run directory: %s", run_dir)
    objects = {
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
        "tokenizer": tokenizer,
        "template": template,
    }
    return metrics, objects
