"""itune-chat through a pseudo-terminal: it answers with streamed tokens, keeps history, resets and exits."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from itune.inference.chat import ChatSession, chat_loop
from itune.inference.loading import load_base


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    from tests.tiny_runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("runs"), "chatml")


def test_chat_loop_history_reset_and_exit():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("chat", overrides=["model=tiny", "template=chatml"])
    model, tokenizer, template = load_base(cfg.model, cfg.template)
    session = ChatSession("Be brief.")
    out = io.StringIO()
    stdin = io.StringIO("Hello\nAgain\n/reset\n/bogus\nHi\n/exit\nnever read\n")
    n = chat_loop(model, tokenizer, template, session, Console(file=out, width=200), stdin, max_new_tokens=4)
    assert n == 3
    assert [t["role"] for t in session.turns] == ["user", "assistant"]  # cleared by /reset, then one turn
    assert session.messages()[0] == {"role": "system", "content": "Be brief."}
    text = out.getvalue()
    assert "history cleared" in text and "unknown command /bogus" in text and text.count("assistant>") == 3


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    buf, end = b"", time.time() + timeout
    while needle not in buf and time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.mark.slow
def test_itune_chat_in_a_pty(run_dir, tmp_path):
    main, child = pty.openpty()
    cmd = [str(Path(sys.executable).with_name("itune-chat")), f"run={run_dir}", "max_new_tokens=6"]
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, cwd=tmp_path, close_fds=True)
    os.close(child)
    try:
        seen = read_until(main, b"you>", 240)
        assert b"you>" in seen, seen.decode(errors="replace")[-2000:]
        os.write(main, b"Repeat the word red.\n")
        seen = read_until(main, b"you>", 120)
        assert b"assistant>" in seen, seen.decode(errors="replace")[-2000:]
        os.write(main, b"/reset\n")
        assert b"history cleared" in read_until(main, b"you>", 60)
        os.write(main, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert list(tmp_path.iterdir()) == []  # chatting leaves no files behind
