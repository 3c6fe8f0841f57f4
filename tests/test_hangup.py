"""A closed terminal, a dead pipe and nohup never cost a run its work, through the real command: a hang-up (SIGHUP:
the terminal closed, or torchrun's agent passing on its own) stops the run like SIGTERM, with a checkpoint of that
step and the reason in log.txt, and rerunning the command continues exactly; a console that goes away (its pipe's
reader gone) is muted and the run trains on to its end; signals ignored at start stay ignored, SIGTERM always stops."""

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import ROOT, default_dispositions, log_events, tiny_args, torchrun, wait_for
from train_gpt2 import parse_config, train

STEPS = 12
FP32_NOISE = 1e-5  # 2 ranks against one process (see test_sharded.py)


def run_args(shards, run_dir, *extra):
    """12 steps, no periodic checkpoints: only a stop's and the end's."""
    return tiny_args(shards, run_dir, "--max-steps", str(STEPS), "--eval-interval", "4", "--checkpoint-interval", "0",
                     "--checkpoint-minutes", "0", *extra)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unbroken")
    train(parse_config(run_args(shards, run_dir)))
    return run_dir


def assert_same_final_state(run_dir, reference_dir):
    a = load_checkpoint(run_dir / f"ckpt_{STEPS:06d}.pt")
    b = load_checkpoint(reference_dir / f"ckpt_{STEPS:06d}.pt")
    assert a["step"] == b["step"] == STEPS and a["loader"] == b["loader"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def train_lines(run_dir):
    path = run_dir / "log.txt"
    return len(re.findall(r"(?m)^\d+ train ", path.read_text())) if path.exists() else 0


def stop_line(run_dir, cause):
    """The stop's line in log.txt: (its step, its checkpoint)."""
    found = re.findall(rf"(?m)^# stopped by {cause} at step (\d+); checkpoint (\S+); rerun the same command to "
                       rf"continue$", (run_dir / "log.txt").read_text())
    assert len(found) == 1, (run_dir / "log.txt").read_text()[-2000:]
    return int(found[0][0]), found[0][1]


def finish(args):
    result = subprocess.run([sys.executable, "train_gpt2.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def on_a_terminal():
    """preexec_fn: a new session whose controlling terminal is stdin (the pty's slave), as a login shell's job."""
    default_dispositions()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_terminal_that_closes_stops_the_run_with_a_checkpoint_and_the_reason_in_log_txt(shards, tmp_path,
                                                                                         reference):
    """The run on a pseudo-terminal, as in an SSH session; the terminal closes (the kernel's hang-up: SIGHUP, then
    EIO on every write): exit 129, the checkpoint of the step it stopped at, the line in log.txt. The same command
    then continues to the unbroken run's state, bitwise."""
    run = tmp_path / "run"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *run_args(shards, run)], cwd=ROOT, stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True, preexec_fn=on_a_terminal)
    os.close(slave)
    shown = b""
    deadline = time.time() + 240
    while b"step     2 | loss" not in shown and time.time() < deadline and proc.poll() is None:
        if select.select([master], [], [], 0.5)[0]:
            try:
                shown += os.read(master, 65536)
            except OSError:
                break
    assert b"step     2 | loss" in shown, shown[-2000:]
    os.close(master)  # the terminal goes away
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    step, checkpoint = stop_line(run, "SIGHUP")
    assert 2 < step < STEPS and load_checkpoint(checkpoint)["step"] == step
    assert "Traceback" not in (run / "log.txt").read_text()
    assert f"resumed from {checkpoint} at step {step}" in finish(run_args(shards, run))
    assert_same_final_state(run, reference)
    assert log_events(run / "log.txt", "val") == log_events(reference / "log.txt", "val")


def test_a_pipe_whose_reader_exits_leaves_the_run_training_to_its_end(shards, tmp_path, reference):
    """`python train_gpt2.py | head -18`: the console is muted, log.txt says so, and the run is the unbroken one."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *run_args(shards, run)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_dispositions)
    for _ in range(18):
        proc.stdout.readline()
    proc.stdout.close()  # head exits
    err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 0 and err == "", err
    log = (run / "log.txt").read_text()
    assert re.search(r"(?m)^# the console went away \(stdout: EPIPE\) at \S+; the run goes on", log), log[-2000:]
    assert_same_final_state(run, reference)


def test_a_pipe_whose_reader_exits_then_a_hang_up_of_torchrun(shards, tmp_path, reference):
    """Under torchrun, the reader of the ranks' stdout exits after the first step: they train on, muted. Then
    torchrun's agent takes SIGHUP (over nohup's ignore) and passes it on to the workers: they stop at one step
    boundary with a checkpoint; the same command then continues to the one-process run within fp32 noise."""
    run = tmp_path / "run"
    proc = torchrun(run_args(shards, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while "step     0 | loss" not in proc.stdout.readline():
        assert proc.poll() is None
    proc.stdout.close()
    assert wait_for(lambda: "the console went away (stdout: EPIPE)" in (run / "log.txt").read_text() or
                    proc.poll() is not None, 240)
    proc.send_signal(signal.SIGHUP)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0 and 'train_gpt2.py", line' not in err, err[-3000:]
    step, checkpoint = stop_line(run, "SIGHUP")
    assert load_checkpoint(checkpoint)["step"] == step
    proc = torchrun(run_args(shards, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and f"resumed from {checkpoint} at step {step}" in out, err[-3000:]
    ours, one = log_events(run / "log.txt"), log_events(reference / "log.txt")
    assert sorted(ours) == sorted(one) and max(abs(ours[s] - one[s]) for s in one) <= FP32_NOISE


def ignoring_sigint_and_sighup():
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def test_signals_ignored_at_start_stay_ignored_and_sigterm_still_stops(shards, tmp_path):
    """Started as `nohup cmd &` starts it (SIGINT and SIGHUP ignored): both go on being ignored; SIGTERM stops."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *run_args(shards, run, "--max-steps", "400")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignoring_sigint_and_sighup)
    try:
        assert wait_for(lambda: train_lines(run) >= 2 or proc.poll() is not None, 240)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGHUP)
        after = train_lines(run)
        assert wait_for(lambda: train_lines(run) >= after + 3 or proc.poll() is not None, 120)
        assert proc.poll() is None  # still training
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert re.fullmatch(r"train_gpt2.py: stopped by SIGTERM at step \d+; checkpoint \S+; rerun the same command to "
                        r"continue", err.strip()), err


def test_the_suite_does_not_depend_on_the_signal_dispositions_it_inherits():
    """The in-process stop tests, run by a pytest started with SIGINT ignored (`nohup python3 -m pytest ... &`)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                             "tests/test_lifecycle.py::test_second_signal_during_the_save_corrupts_nothing"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            preexec_fn=ignoring_sigint_and_sighup)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]
