"""train_gpt2.py on tiny configs: LR schedule, accumulation, torchrun parity, exact resume, crash safety, errors."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_gpt2
from checkpoint import list_checkpoints, load_checkpoint
from conftest import HAS_CXX, ROOT
from test_hellaswag import make_hellaswag_file
from fineweb import Source, build_shards, expand_inputs
from model import GPT, GPTConfig
from train_gpt2 import get_lr, parse_config, train


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare")
    build_shards(Source("local", files=expand_inputs([str(ROOT / "assets" / "shakespeare")])), out, "s")
    return out


def tiny_args(shards, run_dir, *extra):
    return ["--model", "tiny", "--data-dir", str(shards), "--run-dir", str(run_dir), "--total-batch-size", "256",
            "--micro-batch-size", "4", "--seq-len", "32", "--max-lr", "1e-2", "--warmup-steps", "2",
            "--max-steps", "6", "--eval-interval", "3", "--val-steps", "2", "--hellaswag-interval", "0",
            "--sample-interval", "0", "--checkpoint-interval", "3", "--keep-checkpoints", "0", "--device", "cpu",
            *extra]


def train_lines(log_path, kind="train"):
    pattern = re.compile(rf"^(\d+) {kind} (\S+)$")
    return {int(m.group(1)): float(m.group(2)) for line in open(log_path) if (m := pattern.match(line.strip()))}


def test_get_lr_corners():
    kw = dict(max_lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=100)
    assert get_lr(0, **kw) == pytest.approx(6e-4 / 10)
    assert get_lr(9, **kw) == pytest.approx(6e-4)  # the end of warmup reaches max_lr
    assert get_lr(10, **kw) == pytest.approx(6e-4)  # the cosine starts at max_lr
    assert get_lr(55, **kw) == pytest.approx((6e-4 + 6e-5) / 2)  # halfway through the decay
    assert get_lr(100, **kw) == pytest.approx(6e-5)
    assert get_lr(1000, **kw) == pytest.approx(6e-5)
    lrs = [get_lr(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 100, (8, 16)), torch.randint(0, 100, (8, 16))
    _, loss = model(x, y)
    loss.backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    k = 4
    for xs, ys in zip(x.chunk(k), y.chunk(k)):
        _, loss = model(xs, ys)
        (loss / k).backward()
    for a, b in zip(big, [p.grad for p in model.parameters()]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)  # fp32 summation order only


def test_tiny_model_overfits_a_single_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=128, n_layer=2, n_head=2, n_embd=64))
    opt = model.configure_optimizers(0.0, 3e-3, "cpu", log=None)
    x, y = torch.randint(0, 128, (4, 16)), torch.randint(0, 128, (4, 16))
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_loss_falls_and_resume_is_bitwise_exact(shards, tmp_path):
    whole = train(parse_config(tiny_args(shards, tmp_path / "whole")))
    assert whole["losses"][-1] < whole["losses"][0] - 1.0, whole["losses"]
    val = train_lines(tmp_path / "whole" / "log.txt", "val")
    assert sorted(val) == [0, 3, 6] and val[6] < val[0] - 1.0

    # the same run stopped after its step-3 checkpoint, then resumed by rerunning the same command
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    (tmp_path / "split" / "ckpt_000006.pt").unlink()
    log_before = (tmp_path / "split" / "log.txt").read_text()
    resumed = train(parse_config(tiny_args(shards, tmp_path / "split")))
    assert resumed["losses"] == whole["losses"][3:]  # bitwise: same floats
    a = load_checkpoint(tmp_path / "whole" / "ckpt_000006.pt")
    b = load_checkpoint(tmp_path / "split" / "ckpt_000006.pt")
    assert a["loader"] == b["loader"] and a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log_after = (tmp_path / "split" / "log.txt").read_text()
    assert log_after.startswith(log_before) and "resumed from" in log_after  # appended, never truncated
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in a["model"])
    assert set(a) >= {"model", "optimizer", "config", "train_config", "step", "loader", "rng", "val_loss"}


def test_torchrun_two_ranks_match_one_process_with_accumulation(shards, tmp_path):
    one = tmp_path / "one"
    hella = ["--hellaswag-interval", "3", "--hellaswag-path", str(make_hellaswag_file(tmp_path / "hs.jsonl", 30))]
    train(parse_config(tiny_args(shards, one, *hella)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_gpt2.py",
         *tiny_args(shards, tmp_path / "two", *hella)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 ranks" in result.stdout and "run summary" in result.stdout
    assert "projected after 5 timed steps" in result.stdout and "ETA" in result.stdout
    single, ddp = train_lines(one / "log.txt"), train_lines(tmp_path / "two" / "log.txt")
    assert sorted(single) == sorted(ddp) == list(range(6))
    assert max(abs(single[s] - ddp[s]) for s in single) <= 1e-5
    val1, val2 = train_lines(one / "log.txt", "val"), train_lines(tmp_path / "two" / "log.txt", "val")
    # each rank evaluates its own val_steps micro-batches (build-nanogpt's semantics), so 2 ranks see twice the
    # val tokens: the losses are close but not equal
    assert sorted(val1) == sorted(val2) == [0, 3, 6] and abs(val1[0] - val2[0]) < 0.05
    # HellaSwag split across the ranks, counts all-reduced: the same accuracy as one process
    hella1, hella2 = train_lines(one / "log.txt", "hella"), train_lines(tmp_path / "two" / "log.txt", "hella")
    assert sorted(hella1) == [0, 3, 6] and hella1 == hella2


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(shards, tmp_path):
    args = tiny_args(shards, tmp_path / "run", "--max-steps", "40", "--checkpoint-interval", "2",
                     "--keep-checkpoints", "2", "--eval-interval", "0")
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.name >= "ckpt_000008.pt" for p in list_checkpoints(tmp_path / "run")):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    newest = list_checkpoints(tmp_path / "run")[-1]
    state = load_checkpoint(newest)  # never corrupt, whenever the kill came
    killed_at = state["step"]
    assert 8 <= killed_at < 40
    logged = train_lines(tmp_path / "run" / "log.txt")
    assert max(logged) + 1 - killed_at <= 2  # lost at most the steps since the last checkpoint
    result = train(parse_config(args))
    assert len(result["losses"]) == 40 - killed_at
    reference = train(parse_config(tiny_args(shards, tmp_path / "ref", "--max-steps", "40", "--eval-interval", "0",
                                             "--checkpoint-interval", "0")))
    assert result["losses"] == reference["losses"][killed_at:]


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(shards, tmp_path):
    args = tiny_args(shards, tmp_path, "--max-lr", "1e35", "--warmup-steps", "0", "--checkpoint-interval", "1",
                     "--max-steps", "20")
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(parse_config(args))
    for path in list_checkpoints(tmp_path):
        assert torch.isfinite(load_checkpoint(path)["model"]["transformer.wte.weight"]).all()
    # the command line says the same in one line, no traceback
    result = subprocess.run([sys.executable, "train_gpt2.py", *args, "--run-dir", str(tmp_path / "cli")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "non-finite" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--total-batch-size", "1000"], "--total-batch-size 1000 is not divisible"),
        (["--warmup-steps", "50"], "--warmup-steps 50 is longer than the run"),
        (["--seq-len", "128", "--total-batch-size", "512"], "--seq-len 128 is longer than the model's context"),
        (["--model", "gpt9"], "--model 'gpt9'"),
        (["--micro-batch-size", "0"], "--micro-batch-size must be positive"),
        (["--max-lr", "fast"], "--max-lr"),
    ],
)
def test_bad_flags_give_one_line_errors(shards, tmp_path, extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(tiny_args(shards, tmp_path, *extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_data_dir_without_shards_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--data-dir", str(tmp_path)])
    assert e.value.code == 2 and "--data-dir: no 'train' shards" in capsys.readouterr().err


def test_quickstart_preset_and_explicit_resume(tmp_path, capsys):
    cfg = parse_config(["--preset", "quickstart", "--max-steps", "30"])
    assert (cfg.model, cfg.max_steps, cfg.hellaswag_interval, cfg.seq_len) == ("mini", 30, 0, 128)
    cfg = parse_config(["--preset", "quickstart", "--run-dir", str(tmp_path), "--resume"])
    with pytest.raises(ValueError, match="no checkpoint"):
        train_gpt2.find_resume_checkpoint(cfg)


@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_run_evaluates_samples_and_saves_plain_keys(shards, tmp_path):
    """--compile on the CPU (inductor): validation, HellaSwag and samples run, and the losses match eager mode."""
    examples = make_hellaswag_file(tmp_path / "hs.jsonl", 12)
    extra = ["--max-steps", "4", "--eval-interval", "2", "--sample-interval", "4", "--hellaswag-interval", "4",
             "--hellaswag-path", str(examples), "--checkpoint-interval", "0"]
    eager = train(parse_config(tiny_args(shards, tmp_path / "eager", *extra)))
    result = subprocess.run([sys.executable, "train_gpt2.py", *tiny_args(shards, tmp_path / "compiled", *extra),
                             "--compile"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compile on" in result.stdout and "sample 1:" in result.stdout
    compiled = train_lines(tmp_path / "compiled" / "log.txt")
    # inductor fuses kernels, so the rounding differs from eager mode: equal within fp32 noise, not bitwise
    assert max(abs(compiled[s] - eager["losses"][s]) for s in range(4)) < 1e-4
    val_e = train_lines(tmp_path / "eager" / "log.txt", "val")
    val_c = train_lines(tmp_path / "compiled" / "log.txt", "val")
    assert sorted(val_c) == [0, 2, 4] and max(abs(val_c[s] - val_e[s]) for s in val_c) < 1e-3
    state = load_checkpoint(tmp_path / "compiled" / "ckpt_000004.pt")
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    # the logged HellaSwag accuracy is the standalone scorer's on the same weights
    from checkpoint import model_from_checkpoint
    from hellaswag import load_examples, score_examples

    counts = score_examples(model_from_checkpoint(state), load_examples(path=str(examples)), torch.device("cpu"))
    assert train_lines(tmp_path / "compiled" / "log.txt", "hella")[4] == round(counts["acc_norm_correct"] / 12, 4)


def test_missing_hellaswag_file_is_said_once_and_the_run_goes_on(shards, tmp_path):
    args = tiny_args(shards, tmp_path, "--max-steps", "2", "--hellaswag-interval", "1", "--hellaswag-path",
                     str(tmp_path / "absent.jsonl"))
    result = train(parse_config(args))
    assert len(result["losses"]) == 2
    log = (tmp_path / "log.txt").read_text()
    assert log.count("HellaSwag is off") == 1 and " hella " not in log
