"""The demo model end to end (integration): a short LoRA run tracked in MLflow, then exported, loaded by
plain transformers with the same prompts as itune, and chatted with."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from itune.demo_model import demo_model_dir
from itune.inference.chat import ChatSession, chat_loop
from itune.inference.export import export_run
from itune.inference.loading import load_run
from itune.train import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_run_exports_and_chats(compose_train, tmp_path):
    try:
        demo_model_dir(fetch=False)
    except FileNotFoundError:
        pytest.skip("demo model not cached (make demo-model)")
    db = tmp_path / "mlflow.db"
    cfg = compose_train(
        "experiment=demo",
        "eval=none",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "data.num_samples=8",
        "data.batch_size=2",
        "data.max_val_samples=2",
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{db}",
        f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
    )
    train(cfg)
    run_dir = Path(cfg.run_dir)

    out = export_run(run_dir, tmp_path / "export")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    peft_model, _, template = load_run(run_dir)
    for messages in (
        [{"role": "user", "content": "Should I buy index funds?"}],
        [
            {"role": "system", "content": "You are a finance assistant."},
            {"role": "user", "content": "What is an ETF?"},
            {"role": "assistant", "content": "A fund that trades on an exchange."},
            {"role": "user", "content": "Thanks!"},
        ],
    ):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == template.render(messages, add_generation_prompt=True)
        ids = torch.tensor([template.encode_prompt(messages)])
        assert tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(
                model(ids).logits, peft_model(input_ids=ids).logits, rtol=1e-3, atol=1e-3
            )
    assert (
        json.loads((run_dir / "template.json").read_text())["fingerprint"] in (out / "README.md").read_text()
    )

    out_text = io.StringIO()
    stdin = io.StringIO("Should I buy index funds?\n/exit\n")
    n = chat_loop(model, tok, template, ChatSession(), Console(file=out_text), stdin, max_new_tokens=12)
    assert n == 1 and "assistant>" in out_text.getvalue()

    # The run in a real MLflow server (what `mlflow ui` serves), read over its REST API.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server's workers end with it
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.time() + 240  # a cold server start imports a lot
        while True:
            try:
                exp = json.load(
                    urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=itune")
                )
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]]}).encode()
        req = urllib.request.Request(f"{base}/runs/search", body, {"Content-Type": "application/json"})
        (run,) = json.load(urllib.request.urlopen(req))["runs"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["itune.base_model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert tags["itune.template"] == "tokenizer" and len(tags["itune.template_fingerprint"]) == 64
    assert {p["key"] for p in run["data"]["params"]} >= {
        "optimizer.lr",
        "peft.r",
        "data.sources.domain.weight",
    }
