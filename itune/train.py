"""train(cfg): compose the groups into objects, evaluate the base model, fit, evaluate, save the run.

`train` reads as its phases, each a function below: start the run, build the data, the model, the module
and the trainer, evaluate the base, fit, evaluate the tuned model, write the run directory.

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
from typing import Any, NamedTuple

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
from itune.scale import check_scale, gather_for_save, without_wrappers
from itune.swiglu import recompute_silu

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


class Data(NamedTuple):
    """The data side of a run: tokenizer, template and the set-up datamodule."""

    tokenizer: Any
    template: Any
    datamodule: Any


class Results(NamedTuple):
    """Metrics, generated samples and per-item scores ({"base"/"tuned": ...}), and the forgetting report."""

    metrics: dict[str, float]
    samples: dict[str, Any]
    items: dict[str, Any]
    report: dict[str, Any] | None = None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one training job described by a composed `train.yaml` config.

    Returns:
        metrics (the content of metrics.json) and the built objects (trainer, module, datamodule,
        tokenizer, template) for callers and tests.
    """
    rank0 = is_rank_zero()
    run_dir, previous = _start_run(cfg, rank0)
    data = _build_data(cfg, run_dir, previous, rank0)
    model = _build_model(cfg, data.datamodule)
    suites = {name: instantiate(node) for name, node in (cfg.eval.get("suites") or {}).items()}
    module = _build_module(cfg, model, data.datamodule.source_names)
    trainer = _build_trainer(cfg, suites)
    base = _evaluate_base(cfg, trainer, module, model, data, suites)
    metrics = _fit(cfg, trainer, module, data.datamodule, run_dir)
    results = _evaluate(cfg, suites, model, data, base, metrics)
    # FSDP/ZeRO-3: every rank takes part in gathering the whole weights to rank 0 (None: already whole)
    weights = gather_for_save(trainer.strategy, model) if cfg.get("save_model", True) else None
    if rank0:
        _write_run_dir(cfg, run_dir, trainer, model, data, results, weights)
    return results.metrics, {"trainer": trainer, "module": module, **data._asdict()}


def _start_run(cfg: DictConfig, rank0: bool) -> tuple[Path, dict[str, Any]]:
    """Check the strategy combination, make the run directory, read a resumed run's earlier attempt, save
    the config early (rank 0) and seed; returns the run directory and the earlier attempt ({} if none)."""
    check_scale(cfg)  # strategy/model/quantization combinations that cannot work fail before anything loads
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # rank 0 reads the earlier attempt before overwriting it; other ranks start later and would read this one
    previous = previous_attempt(run_dir) if cfg.get("ckpt_path") and rank0 else {}
    if rank0:
        rd.save_config(run_dir, cfg)  # now too, so a crashed run keeps its config (secrets redacted)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return run_dir, previous


def _build_data(cfg: DictConfig, run_dir: Path, previous: dict[str, Any], rank0: bool) -> Data:
    """Tokenizer, template and the set-up datamodule; on rank 0 the resume check, template and audit."""
    tokenizer = instantiate(cfg.model.tokenizer)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, template=template)
    datamodule.setup("fit")  # bad data fails here, before the model is loaded
    if cfg.get("ckpt_path") and rank0 and not cfg.get("resume_allow_changes"):
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
    return Data(tokenizer, template, datamodule)


def _build_model(cfg: DictConfig, datamodule: Any) -> Any:
    """The base model with its kernels, gradient checkpointing, peft adapter and compilation."""
    model = instantiate(cfg.model.lm)
    if cfg.model.get("liger_kernel"):  # before peft: patches the base model's modules and loss
        apply_liger_kernel(model)
    recompute_silu(model)  # gated MLPs keep one intermediate tensor less for backward (liger's: left alone)
    if cfg.model.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    peft_config = instantiate(cfg.peft, _convert_="all") if cfg.get("peft") else None
    check_peft_saveable(peft_config)  # a value that cannot be saved fails now, not after training
    general = list(cfg.eval.get("general_sources") or [])
    rows = _calibration_rows(datamodule, peft_config, general, cfg.get("peft_init_rows", 64))
    model = apply_peft(model, peft_config, rows)  # rows: read only by a data-driven init (CorDA)
    if cfg.model.get("compile"):
        compile_model(model)
    return model


def _build_module(cfg: DictConfig, model: Any, source_names: list[str]) -> InstructionTuner:
    """The LightningModule: loss, optimizer, scheduler and regularizer from their groups."""
    return InstructionTuner(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        source_names=source_names,
        fused_cross_entropy=bool(cfg.model.get("liger_kernel")),
        chunked_loss=cfg.model.get("chunked_loss", True),
        kl_base=cfg.get("kl_base", "auto"),
        regularizer=instantiate(cfg.regularizer) if cfg.get("regularizer") else None,
    )


def _build_trainer(cfg: DictConfig, suites: dict[str, Any]) -> L.Trainer:
    """The Trainer with its loggers and callbacks, every rank started (see `_start_processes`)."""
    trainer = instantiate(
        cfg.trainer, logger=_nodes(cfg.get("logger")) or False, callbacks=_nodes(cfg.callbacks)
    )
    if suites:
        check_full_parameters(trainer.strategy, "eval.suites")
    _start_processes(trainer)  # every rank is up before the base evaluation, which they share
    return trainer


def _evaluate_base(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: InstructionTuner,
    model: Any,
    data: Data,
    suites: dict[str, Any],
) -> Results:
    """With `eval.on_base`, before training: the base model's validation losses and eval suites (cached in
    `eval.cache_dir`); a fresh LoRA adapter is the identity, so this is the base model. Else empty."""
    if not cfg.eval.get("on_base", False):
        return Results({}, {}, {})
    base: dict[str, float] = {}
    if data.datamodule.val_set is not None:
        base |= _validate(trainer, module, data.datamodule)
    cache_dir = Path(cfg.eval.cache_dir) if cfg.eval.get("cache_dir") else None
    keys = base_cache_keys(
        OmegaConf.to_container(cfg.model, resolve=True),
        data.template,
        OmegaConf.to_container(cfg.eval.get("suites") or {}, resolve=True),
    )
    scores, samples, items = score_suites(suites, model, data.tokenizer, data.template, cache_dir, keys)
    return Results(base | scores, {"base": samples}, {"base": items})


def _fit(
    cfg: DictConfig, trainer: L.Trainer, module: InstructionTuner, datamodule: Any, run_dir: Path
) -> dict[str, float]:
    """Train (resuming `ckpt_path`), then the final validation; the trainer's metrics and the data stats."""
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)  # `last`: resume this run dir's last.ckpt
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if datamodule.val_set is not None:  # final validation of the trained weights
        metrics |= _validate(trainer, module, datamodule)
    return metrics | datamodule.stats | {"train/steps": trainer.global_step}


def _evaluate(
    cfg: DictConfig, suites: dict[str, Any], model: Any, data: Data, base: Results, metrics: dict[str, float]
) -> Results:
    """The eval suites on the trained model and, with `eval.on_base`, the forgetting report against the
    base (its summary and the base's metrics, as `base/<key>`, join the metrics)."""
    samples, items = dict(base.samples), dict(base.items)
    if suites:
        tuned, samples["tuned"], items["tuned"] = score_suites(suites, model, data.tokenizer, data.template)
        metrics = metrics | tuned
    if not cfg.eval.get("on_base", False):
        return Results(metrics, samples, items)
    report = compare_runs(base.metrics, metrics, suites, data.datamodule.source_names, cfg.eval, items)
    metrics = metrics | {f"base/{k}": v for k, v in base.metrics.items()} | report["summary"]
    return Results(metrics, samples, items, report)


def _write_run_dir(
    cfg: DictConfig,
    run_dir: Path,
    trainer: L.Trainer,
    model: Any,
    data: Data,
    results: Results,
    weights: dict[str, Any] | None,
) -> None:
    """Rank 0: the final metrics to the loggers, then config, template, metrics, samples, model (`weights`:
    the gathered full weights of a sharded run), forgetting report and the tracking artifacts."""
    metrics = results.metrics
    final = {k: v for k, v in metrics.items() if k.startswith(("eval/", "base/", "gain/", "forgetting/"))}
    for lg in trainer.loggers:
        if final:  # an empty dict would add an empty row to csv/metrics.csv
            lg.log_metrics(final, step=trainer.global_step)
        lg.save()
    rd.save_config(run_dir, cfg)
    rd.save_template(run_dir, data.template)
    rd.save_metrics(run_dir, metrics)
    if results.samples:
        rd.save_samples(run_dir, results.samples)
    if cfg.get("save_model", True):
        with without_wrappers(model):  # FSDP: peft picks the adapter's keys by the plain module names
            rd.save_model(run_dir, model, data.tokenizer, state_dict=weights)
    if results.report is not None:
        write_report(results.report, run_dir, results.items)
        show_report(results.report, results.samples, cfg.eval.get("show_samples", 3))
    log_run_artifacts(trainer.loggers, run_dir, cfg, metrics)  # params, lineage tags, artifacts
    log.info("run directory: %s", run_dir)
