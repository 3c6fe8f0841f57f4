"""A run directory never loses or mixes work: --no-resume sets the previous run aside and its own checkpoints are
kept, one training run at a time holds the directory (an OS-level lock, released by SIGKILL too), a corrupt newest
checkpoint falls back to the one before, files that are not checkpoints are named in one line, an export never lands
in a run directory, and a rerun of a finished run writes nothing. Real processes and signals where work is at stake."""

import pickle
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import export_hf
import sample
import train_gpt2
from checkpoint import list_checkpoints, load_checkpoint
from conftest import ROOT, log_events, run_cli_main, tiny_args, wait_for
from train_gpt2 import parse_config, train


def start(args):
    return subprocess.Popen([sys.executable, "train_gpt2.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def train_lines(run_dir, since_header=0):
    """Train event lines in log.txt after the `since_header`-th run header (0: all)."""
    path = run_dir / "log.txt"
    text = path.read_text() if path.exists() else ""
    sections = text.split("# run started ")
    return len(re.findall(r"(?m)^\d+ train ", "".join(sections[since_header:])))


def headers(run_dir):
    return (run_dir / "log.txt").read_text().count("# run started ")


def long_run(shards, run_dir, *extra):
    """The tiny run, long enough to be stopped in the middle, no periodic checkpoints."""
    return tiny_args(shards, run_dir, "--max-steps", "400", "--warmup-steps", "2", "--checkpoint-interval", "0",
                     "--checkpoint-minutes", "0", "--eval-interval", "0", *extra)


def test_no_resume_sets_the_previous_run_aside_and_keeps_its_own_checkpoint(shards, tmp_path):
    """An old run with checkpoints at steps 3 and 6; --no-resume with --keep-checkpoints 1, stopped by SIGINT after
    a step or two: its own checkpoint stays (newest-K pruning by step number deleted it for the old run's step 6),
    the old files are in one previous_run_*/ directory, the stop line's advice is true, and following it resumes the
    new run, not the old one."""
    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run)))  # steps 0-5: ckpt_000003.pt, ckpt_000006.pt
    proc = start(long_run(shards, run, "--no-resume", "--keep-checkpoints", "1"))
    assert wait_for(lambda: train_lines(run, since_header=2) >= 1 or proc.poll() is not None, 120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    stopped = re.fullmatch(r"train_gpt2.py: stopped by SIGINT at step (\d+); checkpoint (\S+); rerun the same "
                           r"command without --no-resume to continue", err.strip())
    assert proc.returncode == 130 and stopped, err
    step = int(stopped.group(1))
    assert step < 6 and list_checkpoints(run) == [run / f"ckpt_{step:06d}.pt"]
    assert stopped.group(2) == str(run / f"ckpt_{step:06d}.pt")
    aside = list(run.glob("previous_run_*"))
    assert len(aside) == 1 and sorted(p.name for p in list_checkpoints(aside[0])) == ["ckpt_000003.pt",
                                                                                      "ckpt_000006.pt"]
    assert "set aside in" in out
    proc = start(long_run(shards, run, "--max-steps", str(step + 2), "--keep-checkpoints", "1"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"resumed from {run / f'ckpt_{step:06d}.pt'} at step {step}" in out
    assert list_checkpoints(run) == [run / f"ckpt_{step + 2:06d}.pt"]


def test_one_training_run_at_a_time_in_a_run_directory(shards, tmp_path, capsys):
    """A second run of the same command is refused in one line naming the first's pid, having written nothing;
    sampling reads the directory meanwhile; SIGKILL releases the lock, and the next run goes on."""
    run = tmp_path / "run"
    args = long_run(shards, run, "--checkpoint-interval", "2", "--keep-checkpoints", "1")
    first = start(args)
    try:
        assert wait_for(lambda: list_checkpoints(run) or first.poll() is not None, 120) and first.poll() is None
        second = start(args)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1 and len(err.strip().splitlines()) == 1, err
        assert f"is in use by a training run (pid {first.pid} on " in err and "--run-dir" in err
        assert headers(run) == 1  # the refused run wrote nothing
        code, samples, err = run_cli_main(sample.main, ["--init", str(run), "-n", "1", "-m", "4", "--device", "cpu"],
                                          capsys)
        assert code == 0 and samples.startswith("sample 1:"), err
    finally:
        first.kill()
        first.wait()
    third = start([*args, "--max-steps", str(load_checkpoint(list_checkpoints(run)[-1])["step"] + 1)])
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0 and "resumed from" in out, err


def test_the_lock_is_refused_in_process_too_and_leaves_no_directory_when_nothing_came_of_it(shards, tmp_path):
    from files import hold_directory

    run = tmp_path / "new" / "run"
    with hold_directory(run, "a training run"):
        with pytest.raises(ValueError, match=r"--run-dir .* is in use by a training run \(pid \d+"):
            train(parse_config(tiny_args(shards, run)))
    assert not (tmp_path / "new").exists()


def corrupt(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_corrupt_newest_checkpoint_is_skipped_in_one_line_and_the_one_before_is_used(shards, tmp_path, capsys):
    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run)))  # ckpt_000003.pt, ckpt_000006.pt
    corrupt(run / "ckpt_000006.pt")
    capsys.readouterr()
    skipped = f"skipped {run / 'ckpt_000006.pt'}: {run / 'ckpt_000006.pt'} is damaged"
    # sampling from the run directory: the step-3 weights, said on stderr
    code, out, err = run_cli_main(sample.main, ["--init", str(run), "-n", "1", "-m", "4", "--device", "cpu",
                                                "--temperature", "0"], capsys)
    assert code == 0 and skipped in err and f"using {run / 'ckpt_000003.pt'}" in err, err
    assert out == run_cli_main(sample.main, ["--init", str(run / "ckpt_000003.pt"), "-n", "1", "-m", "4", "--device",
                                             "cpu", "--temperature", "0"], capsys)[1]
    # an explicit path to it stays an error
    code, _, err = run_cli_main(sample.main, ["--init", str(run / "ckpt_000006.pt"), "--device", "cpu"], capsys)
    assert code == 1 and "ckpt_000006.pt is damaged" in err and len(err.strip().splitlines()) == 1
    # --eval-only of the run directory, then the real command resumes from step 3
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run, "--eval-only"), capsys)
    assert code == 0 and skipped in out and "eval-only " + str(run / "ckpt_000003.pt") in out, err
    proc = start(tiny_args(shards, run, "--max-steps", "7"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and skipped in out and f"resumed from {run / 'ckpt_000003.pt'} at step 3" in out, err
    assert sorted(log_events(run / "log.txt")) == list(range(7))  # steps 3-6 again, after the first run's 0-5
    assert skipped in (run / "log.txt").read_text()


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_files_that_are_not_checkpoints_get_one_line_and_never_the_advice_to_unpickle(tmp_path, capsys):
    files = {"log.txt": b"# run started\n0 train 10.9\n", "text.pt": b"not a checkpoint\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "shard.npy", np.zeros(8, dtype=np.uint16))
    (tmp_path / "bare.pt").write_bytes(pickle.dumps({"model": 1, "config": {}}, protocol=4))
    torch.save({"model": {}, "config": {}, "payload": Payload()}, tmp_path / "code.pt")
    expected = {"log.txt": "is not a checkpoint: not a file that torch.save wrote",
                "text.pt": "is not a checkpoint: not a file that torch.save wrote",
                "shard.npy": "is not a checkpoint: not a file that torch.save wrote",
                "bare.pt": "is not a checkpoint: not a file that torch.save wrote",
                "code.pt": "holds Python objects other than tensors and plain values, which are never loaded"}
    for name, message in expected.items():
        code, out, err = run_cli_main(sample.main, ["--init", str(tmp_path / name), "--device", "cpu"], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        assert "weights_only" not in err and "code ran" not in out + err


def test_export_refuses_a_run_directory_and_a_directory_that_holds_files(tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt_000010.pt").write_bytes(tiny_checkpoint.read_bytes())
    code, _, err = run_cli_main(export_hf.main, [str(run), str(run)], capsys)
    assert code == 1 and "is a run directory" in err and not (run / "config.json").exists()
    out = tmp_path / "hf"
    assert run_cli_main(export_hf.main, [str(run), str(out)], capsys)[0] == 0
    code, _, err = run_cli_main(export_hf.main, [str(run), str(out)], capsys)
    assert code == 1 and "is not empty; pass --overwrite" in err
    assert run_cli_main(export_hf.main, [str(run), str(out), "--overwrite"], capsys)[0] == 0


def test_a_rerun_of_a_finished_run_says_so_in_one_line_and_writes_nothing(shards, tmp_path, capsys):
    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run)))
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, run), capsys)
    assert code == 0 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "already finished at step 6" in err and "nothing to do" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"} == before
