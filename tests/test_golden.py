"""Golden numbers: template token ids and label masks, and a seeded tiny run's loss curve, as literals.

A refactor that changes formatting, tokenization, masking, packing, the loss or the optimizer step changes
these numbers and fails here. When a change is meant to move them, regenerate and paste the printout:

    .venv/bin/python -m tests.test_golden          # prints TEMPLATES and LOSSES (the run takes ~10 s)

and say in the change why the numbers moved.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from itune.data.templates import IGNORE_INDEX
from tests.conftest import CONF

# A fixed two-turn conversation (no system turn: a template's default system prompt is part of the golden).
CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]

# {template: (rendered text, input ids, trained mask: "#" where the label is the input id, "." where ignored)}
# fmt: off
TEMPLATES: dict[str, tuple[str, list[int], str]] = {
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n"
        "\n"
        "### Instruction:\n"
        "Hi\n"
        "\n"
        "### Response:\n"
        "Yo.<|im_end|>\n"
        "\n"
        "### Instruction:\n"
        "2+2?\n"
        "\n"
        "### Response:\n"
        "4<|im_end|>\n"
        "\n",
        [
            33, 68, 75, 78, 86, 220, 72, 82, 220, 64, 77, 220, 72, 77, 82, 83, 81, 84, 66, 83,
            72, 78, 77, 220, 83, 71, 64, 83, 220, 67, 68, 82, 66, 81, 72, 65, 68, 82, 220, 64,
            220, 83, 64, 82, 74, 13, 220, 54, 81, 72, 83, 68, 220, 64, 220, 81, 68, 82, 79, 78,
            77, 82, 68, 220, 83, 71, 64, 83, 220, 64, 79, 79, 81, 78, 79, 81, 72, 64, 83, 68,
            75, 88, 220, 66, 78, 76, 79, 75, 68, 83, 68, 82, 220, 83, 71, 68, 220, 81, 68, 80,
            84, 68, 82, 83, 13, 198, 198, 2, 2, 2, 220, 40, 77, 82, 83, 81, 84, 66, 83, 72,
            78, 77, 25, 198, 39, 72, 198, 198, 2, 2, 2, 220, 49, 68, 82, 79, 78, 77, 82, 68,
            25, 198, 56, 78, 13, 257, 198, 198, 2, 2, 2, 220, 40, 77, 82, 83, 81, 84, 66, 83,
            72, 78, 77, 25, 198, 17, 10, 17, 30, 198, 198, 2, 2, 2, 220, 49, 68, 82, 79, 78,
            77, 82, 68, 25, 198, 19, 257, 198, 198,
        ],
        "................................................................................................"
        "..............................................####.......................................##.."
    ),
    "chatml": (
        "<|im_start|>user\n"
        "Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Yo.<|im_end|>\n"
        "<|im_start|>user\n"
        "2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n",
        [
            260, 84, 82, 68, 81, 198, 39, 72, 257, 198, 260, 64, 82, 82, 72, 82, 83, 64, 77, 83,
            198, 56, 78, 13, 257, 198, 260, 84, 82, 68, 81, 198, 17, 10, 17, 30, 257, 198, 260, 64,
            82, 82, 72, 82, 83, 64, 77, 83, 198, 19, 257, 198,
        ],
        ".....................####........................##."
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "Yo.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "4<|eot_id|>",
        [
            261, 262, 84, 82, 68, 81, 263, 198, 198, 39, 72, 264, 262, 64, 82, 82, 72, 82, 83, 64,
            77, 83, 263, 198, 198, 56, 78, 13, 264, 262, 84, 82, 68, 81, 263, 198, 198, 17, 10, 17,
            30, 264, 262, 64, 82, 82, 72, 82, 83, 64, 77, 83, 263, 198, 198, 19, 264,
        ],
        ".........................####..........................##"
    ),
    "tokenizer": (
        "<|im_start|>user\n"
        "Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Yo.<|im_end|>\n"
        "<|im_start|>user\n"
        "2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4<|im_end|>\n",
        [
            260, 84, 82, 68, 81, 198, 39, 72, 257, 198, 260, 64, 82, 82, 72, 82, 83, 64, 77, 83,
            198, 56, 78, 13, 257, 198, 260, 84, 82, 68, 81, 198, 17, 10, 17, 30, 257, 198, 260, 64,
            82, 82, 72, 82, 83, 64, 77, 83, 198, 19, 257, 198,
        ],
        ".....................####........................##."
    ),
}
# fmt: on

# A seeded 6-step LoRA run of the tiny model (see `golden_run`): train/loss at steps 0..5, then val/loss.
LOSSES = [
    5.844163417816162,
    5.629739284515381,
    5.516465187072754,
    5.500140190124512,
    5.552286624908447,
    5.465850353240967,  # step 5 opens the second epoch: a new order since epoch 0's was no longer repeated
]
VAL_LOSS = 5.433363914489746
RELATIVE_TOLERANCE = 1e-4  # CPU float32; thread counts may change the last bits of a reduction


def encode(name: str, tokenizer: Any) -> tuple[str, list[int], str]:
    """(rendered text, input ids, trained mask) of CONVERSATION with conf/template/<name>.yaml."""
    template = instantiate(OmegaConf.load(CONF / "template" / f"{name}.yaml"), tokenizer=tokenizer)
    enc = template.encode(CONVERSATION)
    for token, label in zip(enc["input_ids"], enc["labels"], strict=True):
        assert label in (token, IGNORE_INDEX)  # labels are the ids themselves where trained
    mask = "".join("." if label == IGNORE_INDEX else "#" for label in enc["labels"])
    return template.render(CONVERSATION), enc["input_ids"], mask


@pytest.mark.parametrize("name", sorted(f.stem for f in (CONF / "template").glob("*.yaml")))
def test_template_golden_ids(name, tokenizer):
    assert name in TEMPLATES, f"no golden for template {name!r}: regenerate (see the module docstring)"
    text, ids, mask = encode(name, tokenizer)
    golden_text, golden_ids, golden_mask = TEMPLATES[name]
    assert text == golden_text
    assert ids == golden_ids
    assert mask == golden_mask


def test_template_goldens_can_fail(tokenizer):
    """The comparison sees a one-token change (a different answer changes the ids and nothing else)."""
    text, ids, mask = encode("chatml", tokenizer)
    assert (text, ids, mask) == TEMPLATES["chatml"]
    other = [*CONVERSATION[:-1], {"role": "assistant", "content": "5"}]
    changed = instantiate(OmegaConf.load(CONF / "template" / "chatml.yaml"), tokenizer=tokenizer).encode(
        other
    )
    assert changed["input_ids"] != ids and len(changed["input_ids"]) == len(ids)


ROWS = [
    {"instruction": f"Repeat the word {w} {n} times.", "input": "", "output": " ".join([w] * n)}
    for w in ("red", "blue", "green", "gold", "pink", "gray")
    for n in (1, 2, 3, 4)
]


def golden_run(tmp_path: Path) -> tuple[list[float], float]:
    """Train the tiny model 6 steps (seeded, CPU, fp32, deterministic, no gradient accumulation) and return
    (train/loss per step, the final val/loss) from csv/metrics.csv and metrics.json."""
    from hydra import compose, initialize_config_module

    from itune.train import train

    data = tmp_path / "golden.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}",
        "seed=0",
        "model=tiny",
        "template=chatml",
        "data=alpaca",
        f"data.sources.alpaca.path={data}",
        "data.val_fraction=0.25",
        "data.batch_size=4",
        "curate=none",
        "peft=lora",
        "optimizer.lr=1e-2",
        "scheduler=constant",
        "scheduler.num_warmup_steps=0",
        "regularizer=none",
        "trainer=debug",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        "trainer.limit_val_batches=1.0",
        "trainer.accumulate_grad_batches=1",
        "trainer.deterministic=true",
        "logger=csv",
        "eval=none",
        "kl_base=off",
        "save_model=false",
    ]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics, _ = train(cfg)
    with open(run_dir / "csv" / "metrics.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))  # one row per optimizer step
    return [float(r["train/loss"]) for r in rows], float(metrics["val/loss"])


@pytest.mark.slow
def test_golden_loss_curve(tmp_path):
    losses, val_loss = golden_run(tmp_path)
    assert losses == pytest.approx(LOSSES, rel=RELATIVE_TOLERANCE), losses
    assert val_loss == pytest.approx(VAL_LOSS, rel=RELATIVE_TOLERANCE), val_loss


def _quoted(text: str) -> str:
    """A double-quoted Python literal of `text` (ruff's style)."""
    return '"' + repr(text)[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'


def _wrap(line: str, width: int) -> list[str]:
    """`line` cut after spaces into pieces of at most about `width` characters (joined: `line`)."""
    pieces = [""]
    for word in line.split(" "):
        if pieces[-1] and len(pieces[-1]) + len(word) > width:
            pieces.append("")
        pieces[-1] += word + " "
    pieces[-1] = pieces[-1][:-1]
    return pieces


def templates_literal(tokenizer: Any) -> str:
    """TEMPLATES as Python source, for every conf/template/*.yaml."""
    out = ["TEMPLATES: dict[str, tuple[str, list[int], str]] = {"]
    for name in sorted(f.stem for f in (CONF / "template").glob("*.yaml")):
        text, ids, mask = encode(name, tokenizer)
        pieces = [p for line in text.splitlines(keepends=True) for p in _wrap(line, 72)]
        assert "".join(pieces) == text
        numbers = [str(i) for i in ids]
        out += [f"    {_quoted(name)}: ("]
        out += [f"        {_quoted(piece)}" for piece in pieces]
        out[-1] += ","
        out += ["        ["]
        out += ["            " + ", ".join(numbers[i : i + 20]) + "," for i in range(0, len(numbers), 20)]
        out += ["        ],"]
        out += [f"        {_quoted(mask[i : i + 96])}" for i in range(0, len(mask), 96)]
        out += ["    ),"]
    return "\n".join([*out, "}"])


def _print_goldens() -> None:
    """Print TEMPLATES, LOSSES and VAL_LOSS as Python literals, to paste above."""
    import tempfile

    from itune.model import byte_level_tokenizer

    print(templates_literal(byte_level_tokenizer()))
    with tempfile.TemporaryDirectory() as tmp:
        losses, val_loss = golden_run(Path(tmp))
    print("LOSSES = [\n" + "".join(f"    {loss!r},\n" for loss in losses) + f"]\nVAL_LOSS = {val_loss!r}")


if __name__ == "__main__":
    _print_goldens()
