"""Offline, a hub name is answered in seconds, in one line, and leaves no directory behind: the hub's address
points at a closed local port (a refused connection), or the offline switch is set, and the cache is empty."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

HUB_COMMANDS = {
    "sample": ["sample.py", "--init", "gpt2", "--device", "cpu"],
    "train": ["train_gpt2.py", "--init-from", "gpt2", "--data-dir", "{shards}", "--run-dir", "run", "--device", "cpu",
              "--hellaswag-interval", "0", "--micro-batch-size", "4", "--seq-len", "32", "--total-batch-size", "128"],
    "fineweb": ["fineweb.py", "--out", "shards"],
    "export": ["export_hf.py", "gpt2", "hf/my-gpt2"],
}


def run_offline(command, cwd, offline_switch):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_HOME=str(cwd / ".hf-home"), HF_ENDPOINT="http://127.0.0.1:9")  # port 9 (discard): nobody listens
    if offline_switch:
        env["HF_HUB_OFFLINE"] = "1"
    start = time.time()
    result = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, time.time() - start


@pytest.mark.parametrize("script", HUB_COMMANDS)
def test_an_unreachable_hub_is_one_line_in_seconds_and_leaves_nothing(script, shards, tmp_path):
    command = [arg.format(shards=shards) for arg in HUB_COMMANDS[script]]
    result, seconds = run_offline(command, tmp_path, offline_switch=False)
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if ": error: " in line]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert "127.0.0.1:9" in lines[0] and "Connection refused" in lines[0]
    # torch's import is most of it on this project's 2-core machine; without the probe: 30 s of retries or more
    assert seconds < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed command left files or directories"


def test_the_offline_switch_is_named_and_answered_at_once(tmp_path):
    result, seconds = run_offline(HUB_COMMANDS["sample"], tmp_path, offline_switch=True)
    assert result.returncode == 1 and "HF_HUB_OFFLINE=1 is set" in result.stderr and "save_pretrained" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and seconds < 20
