"""Live metrics: TensorBoard event files read back with tensorboard's own reader, what W&B is asked to record, a
resumed run's curves without repeated steps; and log.txt read by build-nanogpt's notebook parser, as the README
says."""

import importlib.machinery
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest

from cli import Exit
from conftest import ROOT, log_events, make_hellaswag_file, tiny_args
from dataloader import ShardLoader
from train_gpt2 import parse_config, train


def tensorboard_scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows them (its reader applies the purges of resumed runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run_dir))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def test_tensorboard_curves_match_the_log_and_a_resumed_run_repeats_no_step(shards, tmp_path):
    args = tiny_args(shards, tmp_path, "--checkpoint-interval", "3")  # 6 steps, val every 3, checkpoints at 3, 6
    train(parse_config(args))
    first = tensorboard_scalars(tmp_path)
    # A kill just after step 5: the newest checkpoint is step 3's, TensorBoard already has steps 3..5 and val at 6.
    (tmp_path / "ckpt_000006.pt").unlink()
    train(parse_config(args))
    scalars = tensorboard_scalars(tmp_path)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "val/loss"):
        steps = [step for step, _ in scalars[tag]]
        assert steps == sorted(set(steps)), f"{tag}: repeated or unordered steps {steps}"
    assert [s for s, _ in scalars["train/loss"]] == list(range(6)) and [s for s, _ in scalars["val/loss"]] == [0, 3, 6]
    assert scalars["train/loss"] == first["train/loss"] and scalars["val/loss"] == first["val/loss"]  # bitwise resume
    for tag, kind, digits in (("train/loss", "train", 6), ("val/loss", "val", 4), ("train/grad_norm", "norm", 4)):
        logged = log_events(tmp_path / "log.txt", kind)
        assert {step: round(value, digits) for step, value in scalars[tag]} == pytest.approx(logged, abs=10 ** -digits)


def test_hellaswag_and_mfu_reach_tensorboard_and_it_can_be_turned_off(shards, tmp_path):
    hella = ["--hellaswag-interval", "3", "--hellaswag-path", str(make_hellaswag_file(tmp_path / "hs.jsonl", 8))]
    train(parse_config(tiny_args(shards, tmp_path / "on", *hella, "--peak-flops", "1e12")))
    scalars = tensorboard_scalars(tmp_path / "on")
    hella_log = log_events(tmp_path / "on" / "log.txt", "hella")
    assert {s: round(v, 4) for s, v in scalars["hellaswag/acc_norm"]} == pytest.approx(hella_log, abs=1e-4)
    assert all(0 < v < 100 for _, v in scalars["perf/mfu_percent"])
    train(parse_config(tiny_args(shards, tmp_path / "off", "--no-tensorboard")))
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))


class FakeWandb(types.ModuleType):
    """A stand-in for the wandb package that records what the run asks of it: init's settings, then each run's
    logged scalars and its finish."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # what importlib.util.find_spec reports
        self.runs = []

    def init(self, **settings):
        self.runs.append(FakeRun(settings))
        return self.runs[-1]


class FakeRun:
    def __init__(self, settings):
        self.settings, self.history, self.exit_code = settings, {}, None

    def log(self, scalars, step):
        self.history.setdefault(step, {}).update(scalars)

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_gets_the_curves_and_the_config_and_a_stopped_run_is_continued(shards, tmp_path, monkeypatch,
                                                                              fake_wandb):
    args = tiny_args(shards, tmp_path, "--wandb-project", "gpt2-tests", "--max-steps", "3")
    train(parse_config(args))
    (run,) = fake_wandb.runs
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert run.settings["project"] == "gpt2-tests" and run.settings["id"] == run_id
    assert run.settings["resume"] == "allow" and run.settings["dir"] == str(tmp_path)
    config = run.settings["config"]
    assert config["max_lr"] == 1e-2 and config["model_config"]["n_layer"] == 2 and config["world_size"] == 1
    train_loss = log_events(tmp_path / "log.txt", "train")
    assert sorted(run.history) == [0, 1, 2, 3] and run.settings["name"] == tmp_path.name
    assert {s: round(h["train/loss"], 6) for s, h in run.history.items() if "train/loss" in h} == train_loss
    assert round(run.history[3]["val/loss"], 4) == log_events(tmp_path / "log.txt", "val")[3]
    assert run.exit_code == 0

    # stopped by Ctrl-C in step 4 (its second micro-batch): marked failed; the rerun continues the same W&B run
    real, batches = ShardLoader.next_batch, {"n": 0}

    def next_batch(self):
        batches["n"] += self.split == "train"
        if batches["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    args = tiny_args(shards, tmp_path, "--wandb-project", "gpt2-tests", "--max-steps", "6")
    with monkeypatch.context() as patch:
        patch.setattr(ShardLoader, "next_batch", next_batch)
        with pytest.raises(Exit, match="stopped by SIGINT at step 4"):
            train(parse_config(args))
    train(parse_config(args))
    first, stopped, rerun = fake_wandb.runs
    assert stopped.settings["id"] == rerun.settings["id"] == run_id
    assert (stopped.exit_code, rerun.exit_code) == (1, 0)
    logged = [sorted(step for step, scalars in run.history.items() if scalars) for run in (stopped, rerun)]
    assert logged == [[3], [4, 5, 6]]  # each from its resumed step on: 3's val again, then the steps it trained


def test_build_nanogpt_notebook_parser_reads_the_log_once_it_skips_comment_lines(shards, tmp_path):
    train(parse_config(tiny_args(shards, tmp_path, "--sample-interval", "3", "--max-steps", "3")))
    # build-nanogpt's play.ipynb, re-typed, with the one line the README tells its users to add
    streams = {}
    for line in (tmp_path / "log.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        step, stream, val = line.strip().split()
        streams.setdefault(stream, {})[int(step)] = float(val)
    assert set(streams) == {"train", "val", "lr", "norm"}
    assert streams["train"] == log_events(tmp_path / "log.txt", "train") and len(streams["train"]) == 3


def test_ctrl_c_to_the_process_group_with_wandb_stops_cleanly_and_resumes_the_same_run(shards, tmp_path,
                                                                                        monkeypatch):
    """Ctrl-C in a terminal reaches W&B's service process too: the run still stops at a step boundary with its
    checkpoint and one line, and the rerun continues the same W&B run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = tiny_args(shards, tmp_path, "--max-steps", "200", "--wandb-project", "gpt2-tests", "--checkpoint-interval",
                     "0", "--eval-interval", "0")
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((tmp_path / "log.txt").exists() and 2 in log_events(tmp_path / "log.txt")):
        assert time.time() < deadline and proc.poll() is None, "the run did not reach step 2"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    stop = re.findall(r"stopped by SIGINT at step (\d+); checkpoint", err)
    assert len(stop) == 1 and (tmp_path / f"ckpt_{int(stop[0]):06d}.pt").is_file()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    result = train(parse_config([*args, "--max-steps", str(int(stop[0]) + 2)]))  # the last --max-steps counts
    assert len(result["losses"]) == 2 and (tmp_path / "wandb_run_id").read_text().strip() == run_id
    sessions = sorted(tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-*.wandb"))
    assert len(sessions) == 2  # two sessions of one W&B run
