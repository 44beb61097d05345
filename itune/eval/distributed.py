"""Eval suites under several processes (DDP): every suite runs once, on one rank, and every rank gets all
the results.

What is shared out is whole suites, round-robin in config order (suite i on rank i mod world size). Each
rank runs its suites on its own local, unwrapped replica of the model (a forward pass of the plain module,
never of the DDP wrapper), so generation holds no collective and ranks may decode for different numbers of
steps; `torch.distributed.all_gather_object` then hands every rank every suite's result. Metrics,
samples, item scores and reports are therefore exactly those of one process: a suite's scores depend on
how its items are batched (padding changes floating-point sums; greedy decoding can flip on a near tie),
so splitting the items of one suite across ranks would not reproduce the one-process numbers, while
whole suites do, bit for bit, and need nothing from the suites themselves. The cost: with fewer suites
than ranks some ranks wait, and the longest suite sets the time. The waiting ranks sit in the gather, so
an evaluation longer than the process group's timeout (Lightning's DDP default: 30 minutes;
`DDPStrategy(timeout=...)`) fails: raise the timeout or move long suites to `itune-eval` after training.

A failing suite fails on every rank (its message is gathered too), so no rank hangs waiting for it.

Sharded parameters (FSDP, ModelParallel/FSDP2, DeepSpeed ZeRO-3) are refused (`check_full_parameters`):
there no rank holds the whole model, a forward pass all-gathers each layer across ranks, and ranks
generating different prompts for different numbers of steps would deadlock. Evaluate such runs after
training with `itune-eval run=<run dir>` (one process, the saved adapter or model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")
_ERROR = "__itune_eval_error__"
SHARDED_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy")  # Lightning strategies that shard parameters


class DistributedEvalError(RuntimeError):
    """An eval suite failed on another rank (the rank that ran it raises the original error)."""


def rank_and_world() -> tuple[int, int]:
    """(rank, number of processes) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def owner(index: int, world: int) -> int:
    """The rank that runs the `index`-th task: round-robin.

    >>> [owner(i, 2) for i in range(5)]
    [0, 1, 0, 1, 0]
    """
    return index % world


def run_shared(tasks: Mapping[str, Callable[[], T]], describe: str = "task") -> dict[str, T]:
    """Run each task once, on rank `owner(i, world)`, and return every task's result on every rank, in
    the order of `tasks`. With one process this is `{name: task()}`. Results must be picklable.

    Every rank must call this with the same task names in the same order (it is a collective). An error
    in a task is raised on every rank: the original on the rank that ran it, `DistributedEvalError`
    naming the task and rank on the others.
    """
    rank, world = rank_and_world()
    if world == 1:
        return {name: task() for name, task in tasks.items()}
    local: dict[str, Any] = {}
    failure: Exception | None = None
    for i, (name, task) in enumerate(tasks.items()):
        if owner(i, world) != rank:
            continue
        try:
            local[name] = task()
        except Exception as e:  # shared below, so the other ranks stop too instead of waiting
            failure = e
            local = {_ERROR: f"{describe} {name} failed on rank {rank}: {type(e).__name__}: {e}"}
            break
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    if failure is not None:
        raise failure
    errors = [part[_ERROR] for part in parts if _ERROR in part]
    if errors:
        raise DistributedEvalError("; ".join(errors))
    merged = {name: result for part in parts for name, result in part.items()}
    return {name: merged[name] for name in tasks}


def sharded_parameters(strategy: Any) -> str | None:
    """The name of a Lightning strategy that shards the parameters across processes, else None."""
    name = type(strategy).__name__
    if any(c.__name__ in SHARDED_STRATEGIES for c in type(strategy).__mro__):  # or a subclass of one
        return name
    if getattr(strategy, "zero_stage_3", False):  # DeepSpeedStrategy(stage=3)
        return f"{name} (ZeRO stage 3)"
    return None


def check_full_parameters(strategy: Any, what: str) -> None:
    """Refuse eval suites (`what`, e.g. `eval.suites`) under a strategy that shards the parameters.

    Raises:
        ValueError: naming the strategy and what to do instead.
    """
    sharded = sharded_parameters(strategy)
    if sharded:
        raise ValueError(
            f"{what} generate with the whole model on each process, but trainer.strategy ({sharded}) shards "
            "the parameters across processes: train with eval=none and without callbacks.periodic_eval, then "
            "evaluate the saved run with `itune-eval run=<run dir>`"
        )
