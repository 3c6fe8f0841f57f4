"""The run lifecycle: Ctrl-C (SIGINT) and preemption (SIGTERM) at any moment stop the run with a checkpoint of the
step boundary and one line, and rerunning the command continues exactly as the unbroken run (one process: bitwise;
torchrun: within fp32 tolerance); a second signal or a kill mid-save corrupts nothing; a frozen peer ends the run
within --dist-timeout; validation is the same at any world size."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from checkpoint import TrainState, list_checkpoints, load_checkpoint
from cli import Exit
from conftest import ROOT, children, log_events, make_hellaswag_file, rank_of, tiny_args, torchrun, wait_for
from dataloader import ShardLoader
from distributed import Ranks, lost_contact
from train_gpt2 import parse_config, train

STEPS = 12


def stop_args(shards, run_dir, *extra):
    """12 steps, validation every 4, no periodic checkpoints: only the stop's and the end's."""
    return tiny_args(shards, run_dir, "--max-steps", str(STEPS), "--eval-interval", "4", "--checkpoint-interval", "0",
                     "--checkpoint-minutes", "0", "--max-lr", "2e-3", *extra)


def event_lines(run_dir, kinds=("train", "lr", "norm", "val", "hella")):
    """The event lines of log.txt in order, duplicates included: a resumed run must not repeat or skip any."""
    pattern = re.compile(rf"^\d+ ({'|'.join(kinds)}) ")
    return [line for line in (run_dir / "log.txt").read_text().splitlines() if pattern.match(line)]


def assert_same_final_state(run_dir, reference_dir):
    a, b = load_checkpoint(run_dir / f"ckpt_{STEPS:06d}.pt"), load_checkpoint(reference_dir / f"ckpt_{STEPS:06d}.pt")
    assert a["step"] == b["step"] == STEPS and a["loader"] == b["loader"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def leftovers(run_dir):
    return [p.name for p in run_dir.glob("*.tmp")]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """The unbroken run."""
    run_dir = tmp_path_factory.mktemp("reference")
    train(parse_config(stop_args(shards, run_dir)))
    return run_dir


def signal_on_batch(monkeypatch, split, call, signum):
    """Make the `call`-th batch (counting from 1) read from the `split` loader send this process `signum`: a signal
    in the middle of a train step (2 micro-batches each) or of a validation (2 windows each)."""
    real, calls = ShardLoader.next_batch, {"n": 0}

    def next_batch(self):
        if self.split == split:
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signum)
        return real(self)

    monkeypatch.setattr(ShardLoader, "next_batch", next_batch)


@pytest.mark.parametrize(
    "where,split,call,signum,stopped_at",
    [
        ("in the middle of a training step", "train", 11, signal.SIGINT, 6),  # step 5's first micro-batch
        ("during validation, which is then abandoned and redone on resume", "val", 3, signal.SIGTERM, 4),
        ("during the first validation: nothing to save", "val", 1, signal.SIGINT, 0),
    ],
)
def test_stop_then_rerun_equals_the_unbroken_run_bitwise(shards, tmp_path, reference, monkeypatch, capsys, where,
                                                         split, call, signum, stopped_at):
    args = stop_args(shards, tmp_path)
    with monkeypatch.context() as patch:
        signal_on_batch(patch, split, call, signum)
        with pytest.raises(Exit) as e:
            train(parse_config(args))
    assert e.value.code == 128 + signum
    message = str(e.value)
    if stopped_at:
        ckpt = tmp_path / f"ckpt_{stopped_at:06d}.pt"
        assert message == (f"stopped by {signal.Signals(signum).name} at step {stopped_at}; checkpoint {ckpt}; "
                           f"rerun the same command to continue")
        assert load_checkpoint(ckpt)["step"] == stopped_at
    else:
        assert message == f"stopped by {signal.Signals(signum).name} before the first step; nothing to save"
        assert list_checkpoints(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handlers are gone again

    result = train(parse_config(args))
    assert len(result["losses"]) == STEPS - stopped_at
    assert event_lines(tmp_path) == event_lines(reference)
    assert_same_final_state(tmp_path, reference)
    assert leftovers(tmp_path) == []


def test_second_signal_during_the_save_corrupts_nothing(shards, tmp_path, reference, monkeypatch, capfd):
    signal_on_batch(monkeypatch, "train", 5, signal.SIGINT)  # in step 2: the stop comes at step 3
    real_state_dict = TrainState.state_dict

    def state_dict_interrupted(self):  # a second Ctrl-C, then a SIGTERM, while the checkpoint is written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        return real_state_dict(self)

    monkeypatch.setattr(TrainState, "state_dict", state_dict_interrupted)
    with pytest.raises(Exit) as e:
        train(parse_config(stop_args(shards, tmp_path)))
    assert e.value.code == 130 and "stopped by SIGINT at step 3" in str(e.value)
    assert "already stopping" in capfd.readouterr().err
    assert load_checkpoint(tmp_path / "ckpt_000003.pt")["step"] == 3 and leftovers(tmp_path) == []
    monkeypatch.undo()
    train(parse_config(stop_args(shards, tmp_path)))
    assert event_lines(tmp_path) == event_lines(reference)
    assert_same_final_state(tmp_path, reference)


def test_stale_temporary_files_of_a_killed_save_are_removed_at_the_next_start(shards, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / "ckpt_000003.pt.4242.tmp", tmp_path / "ckpt_000002.pt.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    train(parse_config(stop_args(shards, tmp_path, "--max-steps", "1", "--warmup-steps", "0")))
    assert not any(p.exists() for p in stale) and (tmp_path / "notes.tmp").exists()


@pytest.mark.parametrize("interval,kept", [(0, ["ckpt_000004.pt"]), (2, ["ckpt_000002.pt", "ckpt_000004.pt"])])
def test_checkpoints_by_time_and_the_end_supersedes_them(shards, tmp_path, interval, kept):
    """A checkpoint whenever the minutes have passed since the last one: here at every step boundary. They insure
    against a crash; the end's checkpoint supersedes them (the quickstart kept a 15-minute one beside its final one),
    and those of --checkpoint-interval stay (--keep-checkpoints 3 pruned step 1 already)."""
    train(parse_config(stop_args(shards, tmp_path, "--max-steps", "4", "--checkpoint-minutes", "1e-6",
                                 "--keep-checkpoints", "3", "--checkpoint-interval", str(interval))))
    saved = re.findall(r"# saved checkpoint \S+(ckpt_\d+\.pt)", (tmp_path / "log.txt").read_text())
    assert saved == ["ckpt_000001.pt", "ckpt_000002.pt", "ckpt_000003.pt", "ckpt_000004.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == kept


def test_signals_at_random_moments_of_the_command(shards, tmp_path, reference):
    """The real command, signalled at seeded random moments (start-up, steps, evaluations, saves), then rerun until it
    finishes: never a traceback or a corrupt checkpoint, no temporary file left past the next start, a SIGKILL loses
    only the steps since the newest checkpoint, and the whole is the same run as an unbroken one, bitwise."""
    args = stop_args(shards, tmp_path / "run", "--checkpoint-interval", "3", "--keep-checkpoints", "2")
    log = tmp_path / "run" / "log.txt"
    rng = random.Random(20261126)
    stops = 0

    def train_lines():
        return len(re.findall(r"(?m)^\d+ train ", log.read_text())) if log.exists() else 0

    for attempt, signum in enumerate([signal.SIGINT, signal.SIGKILL, signal.SIGTERM, None]):
        done = train_lines()
        proc = subprocess.Popen([sys.executable, "train_gpt2.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if signum is not None:
            if attempt == 0:  # any moment of the first seconds: imports, set-up or the first steps
                delay = rng.uniform(0.5, 2.5)
            else:  # a moment of the run: after 1-4 more steps (whatever the machine's speed), within a step
                more = rng.randint(1, 4)
                wait_for(lambda: train_lines() >= done + more or proc.poll() is not None, 120)
                delay = rng.uniform(0.0, 0.3)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
        killed = proc.returncode == -signal.SIGKILL
        # a kill mid-save leaves its temporary file, which the next start removes (checked after the next attempt);
        # no other end leaves one
        assert "Traceback" not in err and (killed or leftovers(tmp_path / "run") == []), err
        for path in list_checkpoints(tmp_path / "run"):
            load_checkpoint(path)  # never corrupt
        if proc.returncode == 0:
            break
        if proc.returncode in (130, 143):  # stopped by the run: one line, naming the signal and the checkpoint
            stops += 1
            assert proc.returncode == 128 + signum and len(err.strip().splitlines()) == 1, err
            assert re.fullmatch(rf"train_gpt2.py: stopped by {signum.name} (at step \d+; checkpoint \S+; rerun the "
                                rf"same command to continue|before the first step; nothing to save)", err.strip())
        else:  # SIGKILL, or a signal during the imports, before the handlers: its default action, silently
            assert proc.returncode == -signum and err == "", (proc.returncode, err)
        if signum == signal.SIGKILL and list_checkpoints(tmp_path / "run"):
            newest = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["step"]
            assert max(log_events(log)) + 1 - newest <= 3  # lost at most the steps since the newest checkpoint
    assert proc.returncode == 0 and stops >= 1
    for kind in ("train", "val"):  # the last line of each step: a SIGKILL makes the resumed run log some twice
        assert log_events(log, kind) == log_events(reference / "log.txt", kind)
    assert_same_final_state(tmp_path / "run", reference)


def test_torchrun_stopped_by_sigterm_and_sigint_resumes_and_matches_one_process(shards, tmp_path):
    """2 ranks with gradient accumulation, stopped by SIGTERM to torchrun (as Slurm and Kubernetes preempt), then by
    SIGINT (Ctrl-C), each after a seeded random number of steps, then run to the end by the same command: the
    losses of one process within 1e-5 (the ranks sum gradients in another order), validation and HellaSwag equal,
    as the same windows and examples are evaluated at any world size."""
    hella = ["--hellaswag-interval", "4", "--hellaswag-path", str(make_hellaswag_file(tmp_path / "hs.jsonl", 8))]
    one, two = tmp_path / "one", tmp_path / "two"
    train(parse_config(stop_args(shards, one, *hella)))
    rng = random.Random(11)
    stopped_at = 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = torchrun(stop_args(shards, two, *hella), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        after = stopped_at + rng.randint(1, 3)  # a step of this launch; the stop comes at a later boundary
        assert wait_for(lambda: (two / "log.txt").exists() and after in log_events(two / "log.txt"), 240)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0  # torchrun reports the stop as a failure of the job and prints its own traceback
        stop_lines = re.findall(rf"train_gpt2.py: stopped by {signum.name} at step (\d+); checkpoint (\S+);", err)
        assert len(stop_lines) == 1, err  # the master's line, once
        stopped_at = int(stop_lines[0][0])
        assert after < stopped_at < STEPS and stop_lines[0][1] == str(two / f"ckpt_{stopped_at:06d}.pt")
        assert 'train_gpt2.py", line' not in err and leftovers(two) == []  # no traceback of ours

    proc = torchrun(stop_args(shards, two, *hella), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "2 ranks" in out and f"resumed from {two / f'ckpt_{stopped_at:06d}.pt'}" in out
    single, ddp = log_events(one / "log.txt"), log_events(two / "log.txt")
    assert sorted(single) == sorted(ddp) == list(range(STEPS))
    assert max(abs(single[s] - ddp[s]) for s in single) <= 1e-5
    assert log_events(one / "log.txt", "val") == log_events(two / "log.txt", "val")  # world-size independent
    assert sorted(log_events(one / "log.txt", "val")) == [0, 4, 8, 12]
    for kind in ("hella", "hella_harness"):  # both HellaSwag conventions
        assert log_events(one / "log.txt", kind) == log_events(two / "log.txt", kind)
    assert event_lines(two, ("val", "hella")) == event_lines(one, ("val", "hella"))  # each once, none skipped

    # --eval-only under torchrun: the ranks split the windows and examples, and agree with the run's last evaluation
    proc = torchrun(stop_args(shards, two, *hella, "--eval-only"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    val, acc = log_events(one / "log.txt", "val")[STEPS], log_events(one / "log.txt", "hella")[STEPS]
    harness = log_events(one / "log.txt", "hella_harness")[STEPS]
    assert out.count("eval-only") == 1 and f"ckpt_{STEPS:06d}.pt: val loss {val:.4f}" in out
    assert f"HellaSwag acc_norm {acc:.4f} (completion style) | {harness:.4f} (harness style) on 8 examples" in out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the torchrun workers through /proc")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])  # under FSDP2 every forward pass is a collective too
def test_frozen_peer_ends_the_run_within_the_dist_timeout(shards, tmp_path, parallel):
    timeout = 3
    proc = torchrun(tiny_args(shards, tmp_path, "--max-steps", "1000", "--eval-interval", "0",
                              "--checkpoint-interval", "0", "--dist-timeout", str(timeout), "--parallel", parallel),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        assert wait_for(lambda: (tmp_path / "log.txt").exists() and 2 in log_events(tmp_path / "log.txt"), 240)
        workers = children(proc.pid)
        rank0, rank1 = sorted(workers, key=rank_of)
        os.kill(rank1, signal.SIGSTOP)  # a hung peer: alive, silent
        frozen_at = time.time()
        assert wait_for(lambda: not os.path.exists(f"/proc/{rank0}") or
                        open(f"/proc/{rank0}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", timeout + 30)
        ended_after = time.time() - frozen_at
    finally:
        for pid in workers + [proc.pid]:  # torchrun would wait 30 s more for the frozen worker before killing it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        err = proc.communicate(timeout=60)[1]
    assert ended_after < timeout + 10, ended_after
    lines = [line for line in err.splitlines() if line.startswith("train_gpt2.py:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("train_gpt2.py: error: rank 0 of 2: lost contact with the other ranks (Timed out")
    assert f"no answer from a peer within --dist-timeout {timeout} s" in lines[0] and 'train_gpt2.py", line' not in err


def test_distributed_failures_are_one_line_naming_the_rank():
    ranks = Ranks(rank=1, local_rank=1, world_size=4)
    crash = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Connection closed by peer "
                         "[127.0.0.1]:59103. This is typically caused by a remote worker crashing. GLHF!\nmore")
    assert lost_contact(crash, ranks, 300) == (
        "rank 1 of 4: lost contact with the other ranks (Connection closed by peer [127.0.0.1]:59103); torchrun's "
        "summary names the rank that failed first; rerun the same command to continue from the newest checkpoint")
    frozen = RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 300000ms for recv operation "
                          "to complete")
    assert "(Timed out waiting 300000ms for recv operation to complete; no answer from a peer within --dist-timeout " \
           "300 s)" in lost_contact(frozen, ranks, 300)
    assert lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ranks, 300) is None
