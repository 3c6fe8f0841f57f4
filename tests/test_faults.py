"""The faults real machines and clusters throw, each through the real command where work is at stake: a full disk
while saving (a plain and a sharded checkpoint), a damaged sharded checkpoint, non-finite state, checkpoint fields
that do not add up, data that changed between stop and resume, torchrun restarting its workers, an agent that dies
under its workers, a wall clock that steps back. Each ends in one line with nothing already written lost, and the
rerun equals an unbroken run: bitwise in one process, within fp32 noise across ranks."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_gpt2
from checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from conftest import ROOT, children, log_events, rank_of, run_cli_main, tiny_args, torchrun, wait_for
from train_gpt2 import parse_config, train

# fp32 on the CPU: 2 ranks reduce the gradients in another order than one process sums them (see test_sharded.py)
FP32_NOISE = 1e-5
ON_CI = os.environ.get("CI") == "true"


def run_command(args, **popen):
    return subprocess.run([sys.executable, "train_gpt2.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **popen)


def our_lines(err):
    """The lines of stderr that train_gpt2.py printed itself (torchrun adds its own report)."""
    return [line for line in err.splitlines() if line.startswith("train_gpt2.py:")]


def assert_same_state(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"] and a["loader"] == b["loader"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """The unbroken 6-step run of tiny_args: checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("reference")
    train(parse_config(tiny_args(shards, run_dir)))
    return run_dir


# ----------------------------------------------------------------------------------------------------------------
# A full disk


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_disk(path, mib):
    """A filesystem of `mib` MiB at path (a tmpfs): a real ENOSPC, from the kernel, once it is full."""
    if not can_mount():
        if ON_CI:
            pytest.fail("the full-disk tests must run on CI: they mount a tmpfs, which needs root")
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(disk, mib):
    subprocess.run(["mount", "-o", f"remount,size={mib}m", str(disk)], check=True)


# A checkpoint of the tiny model is ~40 MB (plain: 13 MB of weights, 27 MB of AdamW state; sharded ~50 MB): this
# disk holds the first one, not a second beside it.
DISK_MIB = 56
FULL_DISK = (r"cannot write checkpoint (\S+): the disk holding \S+ is full \([\d.,]+ MiB free; the checkpoint needs "
             r"about [\d.,]+ MiB\); its partial write is removed; the newest checkpoint, (\S+), is kept as it was; "
             r"once it can be written, rerun the same command to continue")


def test_a_full_disk_ends_the_run_in_one_line_keeps_the_checkpoint_before_and_the_rerun_resumes_exactly(
        shards, tmp_path, reference):
    with small_disk(tmp_path / "disk", DISK_MIB) as disk:
        run = disk / "run"
        result = run_command(tiny_args(shards, run))
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        failed = re.fullmatch("train_gpt2.py: error: " + FULL_DISK, result.stderr.strip())
        assert failed and failed.groups() == (str(run / "ckpt_000006.pt"), str(run / "ckpt_000003.pt"))
        assert sorted(p.name for p in run.iterdir() if "ckpt" in p.name) == ["ckpt_000003.pt"]  # nothing partial
        assert_same_state(run / "ckpt_000003.pt", reference / "ckpt_000003.pt")  # untouched
        assert "cannot write checkpoint" in (run / "log.txt").read_text()

        grow(disk, 4 * DISK_MIB)  # space freed
        result = run_command(tiny_args(shards, run))
        assert result.returncode == 0, result.stderr
        assert f"resumed from {run / 'ckpt_000003.pt'} at step 3" in result.stdout
        assert_same_state(run / "ckpt_000006.pt", reference / "ckpt_000006.pt")
        assert log_events(run / "log.txt") == log_events(reference / "log.txt")


def test_a_full_disk_during_a_sharded_save_on_two_ranks(shards, tmp_path, reference):
    """DCP's failure (a CheckpointException on every rank, which derives from BaseException) is one line of the
    master's; the partial ckpt_000006.tmp/ is gone at once; the rerun resumes from step 3 within fp32 noise."""
    args = ["--parallel", "fsdp"]
    with small_disk(tmp_path / "disk", DISK_MIB) as disk:
        run = disk / "run"
        proc = torchrun(tiny_args(shards, run, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode != 0 and 'train_gpt2.py", line' not in err and "CheckpointException" not in err, err
        lines = our_lines(err)
        assert len(lines) == 1 and re.fullmatch("train_gpt2.py: error: " + FULL_DISK, lines[0]), err
        assert sorted(p.name for p in run.iterdir() if "ckpt" in p.name) == ["ckpt_000003"]
        grow(disk, 4 * DISK_MIB)
        proc = torchrun(tiny_args(shards, run, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert f"resumed from {run / 'ckpt_000003'} at step 3" in out
        ours, theirs = log_events(run / "log.txt"), log_events(reference / "log.txt")
        assert sorted(ours) == sorted(theirs) and max(abs(ours[s] - theirs[s]) for s in ours) <= FP32_NOISE


# ----------------------------------------------------------------------------------------------------------------
# Damaged sharded checkpoints


@pytest.fixture(scope="module")
def sharded_run(shards, tmp_path_factory):
    """Two FSDP2 ranks, 6 steps: DCP checkpoints at steps 3 and 6, each rank's shard file in them."""
    run_dir = tmp_path_factory.mktemp("sharded")
    proc = torchrun(tiny_args(shards, run_dir, "--parallel", "fsdp"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    return run_dir


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "a rank's shard file missing": (lambda ckpt: (ckpt / "__1_0.distcp").unlink(), "its shard __1_0.distcp is missing"),
    ".metadata cut short": (lambda ckpt: cut_short(ckpt / ".metadata"), "its .metadata is damaged"),
    "a shard cut short": (lambda ckpt: cut_short(ckpt / "__0_0.distcp"), "its shard __0_0.distcp is cut short"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_sharded_checkpoint_is_named_with_what_is_damaged(sharded_run, tmp_path, damage):
    from checkpoint import load_model

    ckpt = tmp_path / "ckpt_000006"
    shutil.copytree(sharded_run / "ckpt_000006", ckpt)
    harm, why = DAMAGES[damage]
    harm(ckpt)
    with pytest.raises(ValueError) as e:
        load_checkpoint(ckpt)
    assert str(e.value) == f"{ckpt}: {why}" or str(e.value).startswith(f"{ckpt}: {why} (")
    with pytest.raises(ValueError, match=re.escape(why)):
        load_model(str(ckpt))  # every reader of a model


def test_a_damaged_newest_sharded_checkpoint_is_skipped_in_one_line_for_the_one_before(shards, sharded_run, tmp_path):
    """Resumed in one process (DCP reshards to any world size): the damaged ckpt_000006/ is named with why, the
    run goes on from ckpt_000003/ and trains steps 3-5 again as the two ranks did, within fp32 noise, and writes
    ckpt_000006/ whole again."""
    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    (run / "ckpt_000006" / "__1_0.distcp").unlink()
    result = run_command(tiny_args(shards, run, "--parallel", "fsdp"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (f"skipped {run / 'ckpt_000006'}: {run / 'ckpt_000006'}: its shard __1_0.distcp is missing"
            in result.stdout)
    assert f"resumed from {run / 'ckpt_000003'} at step 3" in result.stdout
    before, after = log_events(sharded_run / "log.txt"), log_events(run / "log.txt")
    assert max(abs(before[s] - after[s]) for s in (3, 4, 5)) <= FP32_NOISE
    assert load_checkpoint(run / "ckpt_000006")["step"] == 6 and (run / "ckpt_000006" / "__0_0.distcp").is_file()
    result = run_command(tiny_args(shards, run, "--parallel", "fsdp"))  # and it loads: the run is finished
    assert result.returncode == 0 and "already finished at step 6" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Non-finite state


def test_nan_in_the_optimizer_state_is_never_saved_and_the_checkpoint_before_is_called_intact(shards, tmp_path,
                                                                                           monkeypatch, capsys):
    """NaN in AdamW's exp_avg after step 4: step 5's update makes the weights NaN while its loss is still finite. The
    step-6 checkpoint is refused, naming the tensor, and the step-3 one, checked when written, is called intact."""
    from checkpoint import TrainState

    real = TrainState.next_step

    def poisoned(self):
        if self.step == 4:
            slots = next(iter(self.optimizer.state.values()))
            slots["exp_avg"].view(-1)[0] = float("nan")
        real(self)

    monkeypatch.setattr(TrainState, "next_step", poisoned)
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert re.fullmatch(rf"\S+: error: step 6: non-finite values in transformer\.\S+ \(nan\); the "
                        rf"checkpoint is not written\. The newest checkpoint, {re.escape(str(tmp_path))}/ckpt_000003"
                        rf"\.pt, is intact \(its values were checked finite\); try a lower --max-lr or more warmup",
                        err.strip()), err
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000003.pt"]
    assert "non-finite values in" in (tmp_path / "log.txt").read_text()


def poison(path, out, where, value):
    """A copy of a checkpoint with one value replaced: in the model ("model", key) or the optimizer state
    ("exp_avg", index)."""
    state = load_checkpoint(path)
    kind, key = where
    tensor = state["model"][key] if kind == "model" else state["optimizer"]["state"][key][kind]
    tensor.view(-1)[0] = value
    save_checkpoint(out, state)


def test_a_checkpoint_with_non_finite_values_is_refused_naming_the_tensor_and_the_one_to_go_back_to(
        shards, reference, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    poison(reference / "ckpt_000003.pt", run / "ckpt_000003.pt", ("model", "transformer.h.0.mlp.c_fc.weight"),
           float("inf"))
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, run), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(f": error: {run / 'ckpt_000003.pt'} holds non-finite values: "
                                f"transformer.h.0.mlp.c_fc.weight (inf); it is not resumed: pass --no-resume to "
                                f"start over")

    shutil.copy(reference / "ckpt_000003.pt", run / "ckpt_000003.pt")
    poison(reference / "ckpt_000006.pt", run / "ckpt_000006.pt", ("exp_avg", 0), float("nan"))
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, run, "--max-steps", "8"), capsys)
    assert code == 1 and f"{run / 'ckpt_000006.pt'} holds non-finite values: exp_avg of " in err, err
    assert f"pass --resume-from {run / 'ckpt_000003.pt'} to go back to the one before" in err
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run, "--max-steps", "8", "--resume-from",
                                                             str(run / "ckpt_000003.pt")), capsys)
    assert code == 0 and f"resumed from {run / 'ckpt_000003.pt'} at step 3" in out, err


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint fields


def rewrite(path, out, **fields):
    state = load_checkpoint(path)
    state.update(fields)
    save_checkpoint(out, state)


@pytest.mark.parametrize("bad,why", [
    (dict(step="6"), "its step '6' is not a whole number >= 0"),
    (dict(step=-5), "its step -5 is not a whole number >= 0"),
    (dict(loader={"epoch": 0, "shard": "0", "position": 12}), "its data loader position"),
])
def test_a_newest_checkpoint_whose_fields_do_not_add_up_is_skipped_for_the_one_before(shards, reference, tmp_path,
                                                                                      capsys, bad, why):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "ckpt_000003.pt", run)
    rewrite(reference / "ckpt_000006.pt", run / "ckpt_000006.pt", **bad)
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run), capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"skipped {run / 'ckpt_000006.pt'}: {run / 'ckpt_000006.pt'}: {why}" in out
    assert f"resumed from {run / 'ckpt_000003.pt'} at step 3" in out
    assert_same_state(run / "ckpt_000006.pt", reference / "ckpt_000006.pt")
    # asked for by name, it is an error of one line
    bad_file = tmp_path / "bad.pt"
    rewrite(reference / "ckpt_000006.pt", bad_file, **bad)
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "other", "--resume-from",
                                                           str(bad_file)), capsys)
    assert code == 1 and why in err and len(err.strip().splitlines()) == 1, err


def test_a_checkpoint_whose_name_says_another_step_is_skipped(shards, reference, tmp_path, capsys):
    """ckpt_000100.pt holding step 3 beside the real ckpt_000006.pt: resumed, it sent every rerun back to step 3."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "ckpt_000006.pt", run)
    shutil.copy(reference / "ckpt_000003.pt", run / "ckpt_000100.pt")
    skipped = f"skipped {run / 'ckpt_000100.pt'}: {run / 'ckpt_000100.pt'} holds step 3, not the step 100 of its name"
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run, "--max-steps", "7"), capsys)
    assert code == 0 and skipped in out and f"resumed from {run / 'ckpt_000006.pt'} at step 6" in out, err
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run, "--max-steps", "7"), capsys)
    assert code == 0 and skipped in out and "already finished at step 7" in err, err  # the rerun: not back to 3
    assert sorted(log_events(run / "log.txt")) == [6]


# ----------------------------------------------------------------------------------------------------------------
# Changed data


@pytest.fixture
def data(shards, tmp_path):
    """A copy of the shards with a second train shard (the first's tokens again), so that one can go."""
    copy = tmp_path / "data"
    shutil.copytree(shards, copy)
    train_shard = next(copy.glob("s_train_*.npy"))
    shutil.copy(train_shard, copy / "s_train_000002.npy")
    return copy


def change_other_tokens(path):
    tokens = np.load(path)
    np.save(path, tokens[::-1].copy())  # the same size, other content


CHANGES = {
    "a train shard replaced by one of the same size": (
        lambda d: change_other_tokens(d / "s_train_000001.npy"), "s_train_000001.npy replaced (other content, the "
                                                                  "same size)"),
    "a train shard removed": (lambda d: (d / "s_train_000002.npy").unlink(), "s_train_000002.npy removed"),
    "a train shard added": (lambda d: shutil.copy(d / "s_train_000002.npy", d / "s_train_000003.npy"),
                            "s_train_000003.npy added"),
    "the val shard replaced": (lambda d: change_other_tokens(d / "s_val_000000.npy"), "s_val_000000.npy replaced"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_resuming_on_changed_data_is_refused_naming_the_shard_unless_allowed(data, tmp_path, change, capsys):
    run = tmp_path / "run"
    args = tiny_args(data, run, "--max-steps", "3")
    train(parse_config(args))
    alter, said = CHANGES[change]
    alter(data)
    longer = tiny_args(data, run, "--max-steps", "5")
    code, _, err = run_cli_main(train_gpt2.main, longer, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"cannot resume {run / 'ckpt_000003.pt'}: the shards in {data} changed since it was saved ({said}" in err
    assert "--allow-data-change" in err and len(list_checkpoints(run)) == 1
    code, out, err = run_cli_main(train_gpt2.main, [*longer, "--allow-data-change"], capsys)
    assert code == 0, err
    allowed = f"--allow-data-change: resuming on other shards than the checkpoint's: {said}"
    assert allowed in out and allowed in (run / "log.txt").read_text()
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(data, run, "--max-steps", "6"), capsys)
    assert code == 0 and "--allow-data-change" not in out, err  # the checkpoints since record the data as it is


# ----------------------------------------------------------------------------------------------------------------
# Restarts by torchrun, and an agent that dies


def test_a_torchrun_restart_resumes_the_run_instead_of_acting_on_no_resume_again(shards, tmp_path, reference):
    """torchrun --max-restarts 1, the run started with --no-resume over an old run: rank 1 is killed after the new
    run's step-3 checkpoint. The restarted workers resume it (they neither set it aside too nor start at step 0),
    and the whole equals one unbroken process within fp32 noise. Each rank's generator states are saved."""
    run, one = tmp_path / "run", tmp_path / "one"
    train(parse_config(tiny_args(shards, one, "--max-steps", "9")))
    shutil.copytree(reference, run)  # the old run, 6 steps
    args = tiny_args(shards, run, "--max-steps", "9", "--no-resume")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--max-restarts=1", "train_gpt2.py", *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def new_run_past_step(step):
            sections = (run / "log.txt").read_text().split("# run started ")
            return len(sections) > 2 and re.search(rf"(?m)^{step} train ", sections[2])

        assert wait_for(lambda: new_run_past_step(4), 240)
        rank1 = next(pid for pid in children(proc.pid) if rank_of(pid) == 1)
        os.kill(rank1, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    log = (run / "log.txt").read_text()
    assert "torchrun's restart 1 of the workers: --no-resume acts on the run's first start only" in log
    assert re.search(rf"resumed from {re.escape(str(run))}/ckpt_00000[36]\.pt", log)
    assert len(list(run.glob("previous_run_*"))) == 1  # set aside once, at the first start
    ours, unbroken = log_events(run / "log.txt"), log_events(one / "log.txt")
    assert sorted(ours) == sorted(unbroken) and max(abs(ours[s] - unbroken[s]) for s in ours) <= FP32_NOISE
    assert len(load_checkpoint(run / "ckpt_000009.pt")["rng"]) == 2  # one entry per rank


def test_a_restart_with_resume_from_continues_the_run_instead_of_going_back(shards, reference, tmp_path, capsys,
                                                                           monkeypatch):
    """What torchrun's restart (TORCHELASTIC_RESTART_COUNT > 0) of a --resume-from command does in one process: it
    continues from the run directory's newest checkpoint, not from the --resume-from one again."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    args = tiny_args(shards, run, "--max-steps", "8", "--resume-from", str(run / "ckpt_000003.pt"))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    code, out, err = run_cli_main(train_gpt2.main, args, capsys)
    assert code == 0, err
    assert "--resume-from acts on the run's first start only" in out
    assert f"resumed from {run / 'ckpt_000006.pt'} at step 6" in out
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first start goes back, as asked
    code, out, err = run_cli_main(train_gpt2.main, [*args, "--max-steps", "9"], capsys)
    assert code == 0 and f"resumed from {run / 'ckpt_000003.pt'} at step 3" in out, err


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the torchrun workers through /proc")
def test_workers_whose_torchrun_agent_is_killed_stop_with_a_checkpoint_and_say_why(shards, tmp_path, reference):
    run = tmp_path / "run"
    args = tiny_args(shards, run, "--max-steps", "400", "--checkpoint-interval", "0", "--checkpoint-minutes", "0",
                     "--eval-interval", "0")
    agent = torchrun(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = []
    try:
        assert wait_for(lambda: (run / "log.txt").exists() and 2 in log_events(run / "log.txt"), 240)
        ranks = children(agent.pid)
        assert len(ranks) == 2
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        assert wait_for(lambda: not any(alive(pid) for pid in ranks), 60), "the orphaned workers went on training"
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    log = (run / "log.txt").read_text()
    stopped = re.search(rf"# stopped by the end of its parent process \(pid {agent.pid}, torchrun's agent\) at step "
                        rf"(\d+); checkpoint (\S+); rerun the same command to continue", log)
    assert stopped, log[-2000:]
    step = int(stopped.group(1))
    assert load_checkpoint(stopped.group(2))["step"] == step and step > 2
    from files import hold_directory

    with hold_directory(run, "the test"):  # the run directory is free again
        pass


# ----------------------------------------------------------------------------------------------------------------
# The clock


def test_a_wall_clock_that_steps_back_changes_no_interval(shards, tmp_path, monkeypatch, capsys):
    """time.time() an hour earlier at every call (NTP, a VM resumed): checkpoints by time still come at every
    boundary, and no step line shows a negative time, speed or ETA."""
    clock = [time.time()]

    def stepping_back():
        clock[0] -= 3600
        return clock[0]

    monkeypatch.setattr(time, "time", stepping_back)
    args = tiny_args(shards, tmp_path, "--max-steps", "4", "--checkpoint-interval", "4", "--checkpoint-minutes",
                     "1e-6", "--no-tensorboard")
    code, out, err = run_cli_main(train_gpt2.main, args, capsys)
    assert code == 0, err
    saved = re.findall(r"# saved checkpoint \S+(ckpt_\d+\.pt)", (tmp_path / "log.txt").read_text())
    assert saved == ["ckpt_000001.pt", "ckpt_000002.pt", "ckpt_000003.pt", "ckpt_000004.pt"]
    steps = re.findall(r"(?m)^step +\d+ \| loss .*$", out)
    assert len(steps) == 4 and not any("-" in line.split("| dt ")[1] for line in steps), steps


# ----------------------------------------------------------------------------------------------------------------
# Generator states, per rank and per device


def test_each_rank_keeps_its_own_devices_generator_state(monkeypatch):
    """With a fake CUDA of 8 devices, this process on device 3: only that device's state is saved; an older
    checkpoint's list of every device's states restores device 3's, and on a machine with fewer devices none
    (before: IndexError in torch.cuda.set_rng_state_all). Rank r of a run resumes rank r's states."""
    import checkpoint

    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([device], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update({device: int(state[0])}))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every device's state was saved"))
    state = checkpoint.rng_state()
    assert torch.equal(state["cuda"], torch.tensor([3], dtype=torch.uint8))
    checkpoint.set_rng_state(state)
    assert restored == {3: 3}
    older = {**state, "cuda": [torch.tensor([10 + d], dtype=torch.uint8) for d in range(8)]}
    restored.clear()
    checkpoint.set_rng_state(older)
    assert restored == {3: 13}
    restored.clear()
    checkpoint.set_rng_state({**state, "cuda": older["cuda"][:2]})  # saved where there were 2 GPUs
    assert restored == {}
    per_rank = [{"rank": 0}, {"rank": 1}]
    assert checkpoint.rank_rng_state(per_rank, 1) == {"rank": 1} and checkpoint.rank_rng_state(per_rank, 3) == \
        {"rank": 0} and checkpoint.rank_rng_state({"rank": "old"}, 1) == {"rank": "old"}


# ----------------------------------------------------------------------------------------------------------------
# One line for the rest


def test_document_shuffling_of_data_without_document_boundaries_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x_train_000001.npy", np.arange(100, 5100, dtype=np.uint16))  # no <|endoftext|> anywhere
    np.save(data / "x_val_000000.npy", np.arange(100, 1100, dtype=np.uint16))
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(data, tmp_path / "run", "--shuffle-documents"), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "is one document (no <|endoftext|> after its first token)" in err and "--shuffle" in err


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "4294967296"])
def test_a_seed_out_of_range_is_one_line_naming_the_range(shards, tmp_path, capsys, seed):
    import sample

    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--seed", seed), capsys)
    assert code == 2 and f"--seed must be in 0..4294967295 (numpy's seeds), got {seed}" in err, err
    code, _, err = run_cli_main(sample.main, ["--init", "gpt2", "--seed", seed], capsys)
    assert code == 2 and "--seed" in err and "0..4294967295" in err, err
    assert parse_config(tiny_args(shards, tmp_path, "--seed", "4294967295")).seed == 2**32 - 1
