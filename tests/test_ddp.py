"""Training with two processes on CPU (DDP over gloo): `itune-train trainer.strategy=ddp trainer.devices=2`.

Lightning's script launcher re-runs the command for rank 1 (with `hydra.run.dir` set to rank 0's run
directory and `hydra.output_subdir=null`). The 2-process run (batch 4 a rank) is compared with a 1-process
run of the same config (batch 8, the same global batch) and with itself interrupted and resumed:

- (b) each rank trains on its own shard and the shards make up the mixture; the manifest is the same;
- (a) the global batches and the adapter weights are those of the 1-process run;
- (c) rank 0 alone writes the run directory, the audit, the reports and the loggers;
- eval suites run once per item across the ranks, with the metrics of one process on the same weights;
- (d) `ckpt_path=last` continues an interrupted 2-process run exactly.

Three subprocess runs of 6 tiny steps (25-50 s each on 2 cores) and one in-process run, all `slow`. The
fast tests at the end build, in this process, the training loader Lightning makes for each rank out of
itune's (plain shuffle, LengthGroupedSampler, PackedDataset) and check how it shares the data out.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from peft import PeftModel
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, DataLoader

import itune.train
from itune.eval.callback import PeriodicEval
from itune.eval.distributed import check_full_parameters
from itune.eval.items import read_items
from itune.eval.runner import score_suites
from itune.resume import ResumeState
from itune.train import train
from tests.ddp_helpers import example_key, read_batches, read_writes, shared_tasks_worker, watch_writes

slow = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEPS, HALF = 6, 3  # 32 examples / global batch 8 = 4 steps an epoch: the runs cross an epoch boundary
EPOCH_STEPS = 4
# Tolerance of (a): the 2-process run sums the ranks' gradients in another order and multiplies matrices of
# other shapes (batch 4, one thread a process) than the 1-process run, so the weights differ by float32
# rounding, which Adam (at this constant lr 1e-2) carries on. Measured with the same global batches and the
# loss as the mean over the step's tokens of both ranks: max |diff| 2.6e-6 on equal-length rows, 8.7e-6 on
# this run's packed rows of different lengths, while lora_B moves to ~6e-2; the per-rank mean instead gives
# 6.8e-2 (Adam's first steps are about lr x sign(gradient)). 1e-4: 10x room, 600x below a wrong loss.
WEIGHTS_ATOL = 1e-4

TRAIN = [
    "model=tiny",
    "template=chatml",
    "trainer=debug",
    "trainer.limit_val_batches=1.0",
    "logger=csv",
    "data=demo",  # two sources (domain, general); packed batches (pack_scope=batch)
    "data.num_samples=32",
    "peft.lora_dropout=0",  # no random numbers: one process draws masks for 8 rows, each rank for its 4
    "optimizer.lr=1e-2",
    "scheduler=constant",
    "scheduler.num_warmup_steps=0",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
]
ONE = ["data.batch_size=8"]
TWO = ["++trainer.strategy=ddp", "trainer.devices=2", "data.batch_size=4"]
SUITE_LIMITS = {"disclaimer": 4, "general_rules": 4}


def eval_overrides(cache: Path, calls: Path | None = None) -> list[str]:
    """eval=demo on a few prompts (base and tuned, cached base); with `calls`, suites that count their
    calls (tests.ddp_helpers.CountedRules) and a periodic eval of 2 prompts at every validation."""
    out = ["eval=demo", f"eval.cache_dir={cache}"]
    for name, limit in SUITE_LIMITS.items():
        out += [f"eval.suites.{name}.limit={limit}", f"eval.suites.{name}.max_new_tokens=8"]
        if calls:
            out += [
                f"eval.suites.{name}._target_=tests.ddp_helpers.CountedRules",
                f"+eval.suites.{name}.calls={calls}",
                f"+eval.suites.{name}.name={name}",
            ]
    if calls:
        node = "callbacks.periodic_eval.suites.disclaimer"
        out += [
            "callbacks=periodic_eval",
            f"{node}._target_=tests.ddp_helpers.CountedRules",
            f"+{node}.calls={calls}",
            f"+{node}.name=periodic",
            f"{node}.limit=2",
            f"{node}.max_new_tokens=8",
        ]
    return out


def record(out: Path) -> list[str]:
    return ["+callbacks.record._target_=tests.ddp_helpers.RecordBatches", f"+callbacks.record.out={out}"]


class Run(NamedTuple):
    dir: Path  # the run directory
    work: Path  # the folder of its records
    metrics: dict[str, Any]


def itune_train_ddp(work: Path, *overrides: str, name: str = "writes") -> Run:
    """`itune-train` with two processes in `work/run`; rank 1's writes under the run and cache dirs are
    logged to `work/<name>.1`."""
    run_dir, watch = work / "run", work / "watch"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(watch), str(ROOT)]), "HYDRA_FULL_ERROR": "1"}
    env |= watch_writes(watch, [run_dir, work / "cache"], work / name)
    cmd = [str(Path(sys.executable).with_name("itune-train")), f"hydra.run.dir={run_dir}", *TRAIN, *TWO]
    done = subprocess.run([*cmd, *overrides], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    deadline = time.time() + 60  # rank 0 may end first: wait for rank 1's exit line
    while not read_writes(work / name)[1] and time.time() < deadline:
        time.sleep(0.2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return Run(run_dir, work, metrics)


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Run:
    """The 2-process run: base and tuned evaluation, a periodic eval, batches recorded per rank."""
    work = tmp_path_factory.mktemp("two")
    return itune_train_ddp(work, *eval_overrides(work / "cache", work / "calls"), *record(work / "batches"))


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> tuple[Run, Any]:
    """The 1-process run of the same config with the same global batch, in this process."""
    work = tmp_path_factory.mktemp("one")
    overrides = [*TRAIN, *ONE, *eval_overrides(work / "cache"), *record(work / "batches")]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={work / 'run'}", *overrides])
    metrics, objects = train(cfg)
    return Run(work / "run", work, metrics), objects["datamodule"]


def mixture_keys(datamodule: Any) -> dict[str, str]:
    """example key → source name of every example of the training mixture."""
    names = datamodule.source_names
    return {example_key(list(r["input_ids"])): names[int(r["source"])] for r in datamodule.train_set}


def epoch_examples(batches: dict[int, list[str]], epoch: int) -> Counter:
    steps = range(epoch * EPOCH_STEPS + 1, (epoch + 1) * EPOCH_STEPS + 1)
    return Counter(k for step in steps for k in batches[step])


def adapter(run: Run) -> dict[str, torch.Tensor]:
    return load_file(run.dir / "adapter" / "adapter_model.safetensors")


def train_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


# ---------------------------------------------------------------------------------------------- data (b, a)
@slow
def test_ranks_train_disjoint_shards_that_make_up_the_mixture(two, one):
    (one_run, datamodule), ranks = one, read_batches(two.work / "batches")
    sources = mixture_keys(datamodule)
    assert sorted(ranks) == [0, 1] and sorted(ranks[0]) == sorted(ranks[1]) == list(range(1, STEPS + 1))
    shards = [epoch_examples(ranks[r], 0) for r in (0, 1)]  # the first epoch: one pass over the mixture
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])  # disjoint
    assert shards[0] + shards[1] == Counter(sources.keys())  # their union is the mixture, each example once
    assert all({sources[k] for k in shard} == {"domain", "general"} for shard in shards)
    manifest = json.loads((two.dir / "manifest.json").read_text())
    assert manifest == json.loads((one_run.dir / "manifest.json").read_text())  # the same mixture

    def stats(metrics: dict[str, Any]) -> dict[str, Any]:  # packing efficiency: of a rank's batch of 4
        return {k: v for k, v in metrics.items() if k.startswith("data/") and k != "data/packing_efficiency"}

    assert stats(two.metrics) == stats(one_run.metrics)


@slow
def test_global_batches_are_those_of_one_process(two, one):
    ranks, single = read_batches(two.work / "batches"), read_batches(one[0].work / "batches")[0]
    for step in range(1, STEPS + 1):
        assert Counter(ranks[0][step]) + Counter(ranks[1][step]) == Counter(single[step]), f"step {step}"


@slow
def test_adapter_matches_one_process(two, one):
    a, b = adapter(two), adapter(one[0])
    assert a.keys() == b.keys()
    moved = max(float(b[k].abs().max()) for k in b if "lora_B" in k)  # lora_B starts at 0
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 100 * WEIGHTS_ATOL and diff <= WEIGHTS_ATOL, f"max |diff| {diff:.3g} (moved {moved:.3g})"


@slow
def test_validation_loss_matches_one_process(two, one):
    keys = [k for k in one[0].metrics if k.startswith("base/val/") and k.endswith("/loss")]
    assert keys
    for key in keys:  # the base model: the same weights in both runs
        assert two.metrics[key] == pytest.approx(one[0].metrics[key], rel=1e-6), key


# ---------------------------------------------------------------------------------------------- files (c)
@slow
def test_only_rank_zero_writes_the_run_directory(two, one):
    writes, exited = read_writes(two.work / "writes")
    assert exited  # the watch was on in rank 1, which ran to its end
    written = {
        str(Path(w["path"]).relative_to(two.dir)) for w in writes if w["path"].startswith(str(two.dir))
    }
    assert written == {"train_ddp_process_1.log"}  # its own log (Hydra's job log of rank 1), nothing else
    assert not [w for w in writes if w["path"].startswith(str(two.work / "cache"))]  # rank 0 writes the cache

    def files(run_dir: Path) -> set[str]:
        return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}

    extra = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "status.json", "train.log"}
    assert files(two.dir) == files(one[0].dir) | extra | {"train_ddp_process_1.log"}  # as one process
    assert json.loads((two.dir / "status.json").read_text())["status"] == "completed"
    with open(two.dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train_steps == list(range(STEPS))  # each step logged once, in order: not doubled by rank 1
    assert all(any(v for k, v in r.items() if k not in ("step", "epoch")) for r in rows)  # no empty row
    for model in ("base", "tuned"):
        items = read_items(two.dir / f"items_{model}.jsonl")
        assert {s: len(r) for s, r in items.items()} == SUITE_LIMITS  # each item once
    assert len(json.loads((two.dir / "forgetting.json").read_text())["rows"]) > 0


# ----------------------------------------------------------------------------------------------- eval (5)
@slow
def test_eval_suites_run_once_per_item_across_the_ranks(two):
    calls = Counter()
    for path in (two.work / "calls").glob("calls_rank*.jsonl"):
        calls.update(tuple(json.loads(x).values()) for x in path.read_text().splitlines())
    validations = 1  # the periodic eval runs after each validation during fit: val_check_interval=STEPS
    assert calls == {
        ("disclaimer", 0, 4): 2,  # base and tuned: suite 0 on rank 0
        ("general_rules", 1, 4): 2,  # suite 1 on rank 1
        ("periodic", 0, 2): validations,
    }
    assert len(list((two.work / "cache").iterdir())) == len(SUITE_LIMITS)  # one base result per suite


@slow
def test_eval_metrics_are_those_of_one_process_on_the_same_weights(two, one):
    one_run = one[0]
    evals = [k for k in two.metrics if k.startswith("eval/")]
    assert len(evals) == len(SUITE_LIMITS)
    for key in evals:  # the base model: the same weights in both runs
        assert two.metrics[f"base/{key}"] == one_run.metrics[f"base/{key}"], key
    assert read_items(two.dir / "items_base.jsonl") == read_items(one_run.dir / "items_base.jsonl")

    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*TRAIN, *eval_overrides(two.work / "unused")])
    tokenizer = instantiate(cfg.model.tokenizer)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    model = PeftModel.from_pretrained(instantiate(cfg.model.lm), two.dir / "adapter")  # the tuned weights
    suites = {name: instantiate(node) for name, node in cfg.eval.suites.items()}
    tuned = score_suites(suites, model, tokenizer, template)
    assert tuned.metrics == {k: two.metrics[k] for k in evals}
    assert {name: scores["rows"] for name, scores in tuned.items.items()} == read_items(
        two.dir / "items_tuned.jsonl"
    )


@slow
def test_run_shared_runs_each_task_on_one_rank_and_fails_everywhere(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(shared_tasks_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    ok, failed = [r[0] for r in ranks], [r[1] for r in ranks]
    assert [r["ran"] for r in ok] == [["a", "c"], ["b"]]  # round-robin: each task once
    assert ok[0]["results"] == ok[1]["results"] == {"a": {"by": 0}, "b": {"by": 1}, "c": {"by": 0}}
    assert failed[1]["error"] == "ValueError: b broke"  # the rank that ran it: the original error
    assert failed[0]["error"] == "DistributedEvalError: eval suite b failed on rank 1: ValueError: b broke"


class ZeroStage3:  # stands for DeepSpeedStrategy(stage=3) without importing deepspeed
    zero_stage_3 = True


@pytest.mark.parametrize("strategy", [FSDPStrategy(), ModelParallelStrategy(), ZeroStage3()])
def test_eval_suites_refuse_strategies_that_shard_the_parameters(strategy):
    with pytest.raises(ValueError, match="shards the parameters.*itune-eval run="):
        check_full_parameters(strategy, "eval.suites")
    trainer = SimpleNamespace(strategy=strategy)
    with pytest.raises(ValueError, match="callbacks.periodic_eval"):
        PeriodicEval({"s": object()}).setup(trainer, None, "fit")
    check_full_parameters(DDPStrategy(), "eval.suites")  # DDP replicates the model: fine
    PeriodicEval({}).setup(trainer, None, "fit")  # no suites: nothing to refuse


def test_a_multirun_job_does_not_launch_ranks_itself(monkeypatch):
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    trainer = SimpleNamespace(num_devices=2, num_nodes=1, strategy=SimpleNamespace(launcher=launcher))
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # not started by a cluster: Lightning would launch
    monkeypatch.setattr(itune.train, "_in_multirun", lambda: True)
    with pytest.raises(ValueError, match="inside a multirun"):
        itune.train._start_processes(trainer)


# --------------------------------------------------------------------------------------------- resume (d)
@slow
def test_ckpt_path_last_resumes_a_two_process_run_exactly(two, tmp_path_factory):
    work = tmp_path_factory.mktemp("resumed")
    same = [*record(work / "batches")]  # no eval: it does not change the training (greedy, no RNG)
    stop = ["+callbacks.stop._target_=tests.ddp_helpers.StopAt", f"+callbacks.stop.step={HALF}"]
    every = f"callbacks.checkpoint.every_n_train_steps={HALF}"
    first = itune_train_ddp(work, *same, every, *stop, name="writes_first")
    assert first.metrics["train/steps"] == HALF
    resumed = itune_train_ddp(work, *same, every, "ckpt_path=last", name="writes_resumed")
    assert resumed.metrics["train/steps"] == STEPS

    a, b = adapter(resumed), adapter(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0  # the same operations: bit for bit
    assert train_losses(resumed.dir) == train_losses(two.dir)  # steps before the stop kept, after redone
    ranks, reference = read_batches(work / "batches"), read_batches(two.work / "batches")
    assert ranks == reference  # each rank trained the same batches at the same steps
    for key in (k for k in two.metrics if k.startswith("val/")):
        assert resumed.metrics[key] == two.metrics[key], key


# ---------------------------------------------------------------------------------- samplers (b, a), fast
SAMPLERS = {
    "shuffle": ["data.packing=false", "data.group_by_length=false"],
    "length_grouped": ["data.packing=false", "data.group_by_length=true"],
    "packed_dataset": [
        "data.packing=true",
        "data.pack_scope=dataset",
        "data.pack_length=256",
        "data.max_length=256",
    ],
}


@pytest.fixture(scope="module")
def varied_file(tmp_path_factory) -> Path:
    """48 Alpaca rows of different lengths (length grouping has something to group)."""
    rows = [
        {"instruction": f"Say {topic} {n} times.", "input": "", "output": " ".join([topic] * n)}
        for n in range(1, 25)
        for topic in ("tea", "rain")
    ]
    path = tmp_path_factory.mktemp("varied") / "varied.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def fit_batches(
    path: Path, mode: str, batch_size: int, rank: int = 0, world: int = 1, epoch: int = 0
) -> list[list[int]]:
    """The dataset indices of an epoch's training batches of `rank` (of `world`) in `fit`: the datamodule's
    loader, wrapped by ResumeState, then given Lightning's distributed sampler as `fit` does."""
    overrides = ["model=tiny", "template=chatml", "data=alpaca", f"data.sources.alpaca.path={path}"]
    overrides += [
        "data.val_fraction=0",
        "data.num_samples=40",
        f"data.batch_size={batch_size}",
        *SAMPLERS[mode],
    ]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=unused", *overrides])
    tokenizer = instantiate(cfg.model.tokenizer)
    datamodule = instantiate(
        cfg.data, tokenizer=tokenizer, template=instantiate(cfg.template, tokenizer=tokenizer)
    )
    datamodule.setup("fit")
    strategy = "ddp" if world > 1 else "auto"
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=strategy, logger=False, enable_progress_bar=False
    )
    if world > 1:  # the ranks that `setup_distributed` would set in that process
        trainer.strategy.cluster_environment.set_global_rank(rank)
        trainer.strategy.cluster_environment.set_world_size(world)
    trainer.state.fn = TrainerFn.FITTING
    datamodule.trainer = trainer
    fake = SimpleNamespace(datamodule=datamodule, world_size=world, global_rank=rank)  # what setup reads
    ResumeState(seed=cfg.seed).setup(fake, None, "fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = datamodule.train_dataloader()  # as Lightning's _request_dataloader asks for it
    if world > 1:
        loader = _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, loader)
    _set_sampler_epoch(loader, epoch)  # as the fit loop does at the start of each epoch
    return [list(batch) for batch in loader.batch_sampler]


@pytest.mark.parametrize("mode", list(SAMPLERS))
def test_each_rank_gets_its_own_shard_of_every_sampler(varied_file, mode):
    single = [i for batch in fit_batches(varied_file, mode, 4) for i in batch]
    ranks = [[i for batch in fit_batches(varied_file, mode, 4, rank, 2) for i in batch] for rank in (0, 1)]
    assert abs(len(ranks[0]) - len(ranks[1])) == 0  # as many batches on every rank (DDP needs it)
    assert set(ranks[0]) | set(ranks[1]) == set(single)  # together: the whole epoch
    repeated = Counter(ranks[0] + ranks[1]) - Counter(single)
    assert sum(repeated.values()) <= 1  # at most world - 1 items repeated, to even out the ranks


@pytest.mark.parametrize("mode", list(SAMPLERS))
def test_global_batches_follow_itunes_sampler(varied_file, mode):
    single = fit_batches(varied_file, mode, 8)
    ranks = [fit_batches(varied_file, mode, 4, rank, 2) for rank in (0, 1)]
    for k, batch in enumerate(single[: len(ranks[0])]):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(batch), f"global batch {k}"


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("mode", list(SAMPLERS))
def test_every_epoch_has_a_new_order(varied_file, mode, world):
    first, second = (fit_batches(varied_file, mode, 4, 0, world, epoch) for epoch in (0, 1))
    assert sorted(map(sorted, first)) != sorted(map(sorted, second)), "epoch 1 repeats epoch 0's batches"
