"""Test-only pieces for the multi-process tests (tests/test_ddp.py), passed to `itune-train` by `_target_`.

- `RecordBatches`: each rank writes the examples of every training batch it trained on to its own file.
- `StopAt`: ends training after a given optimizer step (an interruption that leaves `last.ckpt` there).
- `CountedRules`: a rules suite that records each call (rank, items) before scoring, so a test can count
  how often every suite ran and on which rank.
- `watch_writes`: a `sitecustomize` that makes every process started with LOCAL_RANK > 0 (Lightning's
  launcher sets it for ranks 1..N-1) log what it creates, writes, renames or removes under some folders.
  Python-level file operations only: a file written by C/Rust code (torch.save to a path, safetensors) is
  not seen, but their sidecar files (configs, READMEs) are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from itune.data.templates import IGNORE_INDEX
from itune.eval.rules import RulesSuite


def example_key(ids: list[int]) -> str:
    """A short hash of an example's token ids (identifies a training example across processes)."""
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def batch_examples(batch: dict[str, Any]) -> list[list[int]]:
    """The examples of a collated batch as token-id lists: padded rows without their padding, packed rows
    cut where the position ids restart (the padding tail, a piece with no trained label, is left out)."""
    examples = []
    ids, labels = batch["input_ids"], batch["labels"]
    for row in range(ids.size(0)):
        if "attention_mask" in batch:
            examples.append(ids[row][batch["attention_mask"][row].bool()].tolist())
            continue
        starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist() + [ids.size(1)]
        for a, b in zip(starts, starts[1:], strict=False):
            if (labels[row, a:b] != IGNORE_INDEX).any():
                examples.append(ids[row, a:b].tolist())
    return examples


def rank_file(folder: str | Path, stem: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}_rank{rank_zero_only.rank}.jsonl"


def append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class RecordBatches(Callback):
    """Append `{step, rank, world, examples: [key, ...]}` per training batch (`step`: the optimizer steps
    done after it) to `<out>/batches_rank<r>.jsonl`."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        keys = [example_key(e) for e in batch_examples(batch)]
        record = {"step": trainer.global_step, "rank": trainer.global_rank, "world": trainer.world_size}
        append_line(rank_file(self.out, "batches"), record | {"examples": keys})


def read_batches(out: Path) -> dict[int, dict[int, list[str]]]:
    """{rank: {step: example keys}} of what `RecordBatches` wrote into `out`."""
    found: dict[int, dict[int, list[str]]] = {}
    for path in sorted(Path(out).glob("batches_rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            found.setdefault(record["rank"], {})[record["step"]] = record["examples"]
    return found


class StopAt(Callback):
    """Stop training once `step` optimizer steps are done (on every rank: the same step everywhere)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class CountedRules(RulesSuite):
    """A `RulesSuite` that appends `{rank, items}` to `<calls>/calls_rank<r>.jsonl` each time it scores."""

    def __init__(self, calls: str, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls, self.name = calls, name

    def score(self, model: Any, tokenizer: Any, template: Any) -> Any:
        record = {"suite": self.name, "rank": rank_zero_only.rank, "items": len(self.prompts)}
        append_line(rank_file(self.calls, "calls"), record)
        return super().score(model, tokenizer, template)


SITECUSTOMIZE = """
import atexit, json, os, sys

def _install():
    if os.environ.get("LOCAL_RANK", "0") == "0" or not os.environ.get("ITUNE_TEST_WATCH"):
        return
    roots = [os.path.abspath(p) for p in os.environ["ITUNE_TEST_WATCH"].split(os.pathsep)]
    log_path = os.environ["ITUNE_TEST_WATCH_LOG"] + "." + os.environ["LOCAL_RANK"]
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    events = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree"}
    busy = []

    def note(event, path):
        busy.append(1)
        try:
            with open(log_path, "a") as f:
                f.write(json.dumps({"event": event, "path": path}) + "\\n")
        finally:
            busy.pop()

    def hook(event, args):
        if busy or not (event == "open" or event in events) or not args:
            return
        path = args[0]
        if not isinstance(path, (str, os.PathLike)):
            return
        if event == "os.mkdir" and os.path.isdir(path):  # exists: a no-op (exist_ok) or an error
            return
        if event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            if not ((mode and any(c in mode for c in "wax+")) or (mode is None and flags & writing)):
                return
        path = os.path.abspath(os.fspath(path))
        if any(path == r or path.startswith(r + os.sep) for r in roots):
            note(event, path)

    sys.addaudithook(hook)
    atexit.register(note, "exit", "")

_install()
"""


def watch_writes(folder: Path, roots: list[Path], log: Path) -> dict[str, str]:
    """Write the `sitecustomize` into `folder`; returns the environment variables that turn it on (add
    `folder` to PYTHONPATH). Processes with LOCAL_RANK > 0 append `{event, path}` lines to `<log>.<rank>`
    for every write under `roots`, and an `exit` line when they end."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return {"ITUNE_TEST_WATCH": os.pathsep.join(str(r) for r in roots), "ITUNE_TEST_WATCH_LOG": str(log)}


def read_writes(log: Path, rank: int = 1) -> tuple[list[dict[str, str]], bool]:
    """(the writes that rank logged, whether it logged its exit)."""
    path = Path(f"{log}.{rank}")
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [x for x in lines if x["event"] != "exit"], any(x["event"] == "exit" for x in lines)


def shared_tasks_worker(rank: int, world: int, port: int, out: str) -> None:
    """A `torch.multiprocessing.spawn` target: in a gloo group, `run_shared` three tasks twice (the second
    time task `b` fails) and write `{ran, results | error}` of each round to `<out>/<rank>.json`."""
    import torch.distributed as dist

    from itune.eval.distributed import run_shared

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rounds = []
    for fail in (None, "b"):
        ran: list[str] = []

        def task(name: str, fail: str | None = fail, ran: list[str] = ran) -> Any:
            def run() -> dict[str, Any]:
                ran.append(name)
                if name == fail:
                    raise ValueError(f"{name} broke")
                return {"by": rank}

            return run

        try:
            rounds.append({"ran": ran, "results": run_shared({n: task(n) for n in "abc"}, "eval suite")})
        except Exception as e:
            rounds.append({"ran": ran, "error": f"{type(e).__name__}: {e}"})
    dist.destroy_process_group()
    (Path(out) / f"{rank}.json").write_text(json.dumps(rounds), encoding="utf-8")
