"""--parallel fsdp (FSDP2) and --activation-checkpointing on gloo CPU ranks under torchrun: the same training as one
process, sharded checkpoints (DCP directories) that resume exactly at the same world size and within fp32 noise at
another, survive a kill mid-save, and that every reader of a model reads as it reads a file."""

import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_gpt2
from checkpoint import list_checkpoints, load_checkpoint, load_model
from conftest import ROOT, log_events, make_hellaswag_file, run_cli_main, tiny_args, torchrun, wait_for
from train_gpt2 import parse_config, train

STEPS = 6
SHARDED = ["--parallel", "fsdp", "--activation-checkpointing", "block"]
# fp32 on the CPU: the ranks reduce gradients in another order than one process sums them. Losses agree within
# ~3e-6 after 6 steps. Weights within ~2e-6, but for the embedding rows whose gradients are near zero (the padded and
# rare tokens of the tied 50,304-row embedding): AdamW divides each update by the gradient's running RMS, which turns
# that noise into up to ~1% of a learning-rate step there (1.3e-5 at lr 2e-3; the median difference is ~1e-7).
FP32_NOISE = 1e-5
WEIGHT_NOISE = 5e-5


def run_args(shards, run_dir, hellaswag, *extra):
    """6 steps of 512 tokens (4 x 32 micro-batches: 4 micro-steps in one process, 2 on each of 2 ranks),
    validation and HellaSwag every 3 steps, samples at the end, a checkpoint every 3 steps, all kept."""
    return tiny_args(shards, run_dir, "--total-batch-size", "512", "--max-steps", str(STEPS), "--max-lr", "2e-3",
                     "--val-tokens", "384", "--hellaswag-interval", "3", "--hellaswag-path", str(hellaswag),
                     "--sample-interval", str(STEPS), "--no-tensorboard", *extra)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def weights(path):
    return load_model(str(path)).state_dict()


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def full_checkpoint(path, tmp_path):
    """Every tensor of a sharded checkpoint, whole, through DCP's own converter (not this project's reader)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f"{path.parent.name}_{path.name}.pt"
    dcp_to_torch_save(str(path), str(out))
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        elif isinstance(value, torch.Tensor):
            flat[prefix[:-1]] = value

    walk("", torch.load(out, weights_only=True))
    return flat


@pytest.fixture(scope="module")
def hellaswag(tmp_path_factory):
    return make_hellaswag_file(tmp_path_factory.mktemp("hellaswag") / "hs.jsonl", 8)


@pytest.fixture(scope="module")
def reference(shards, hellaswag, tmp_path_factory):
    """One process, unsharded, no activation checkpointing."""
    run_dir = tmp_path_factory.mktemp("one_process")
    train(parse_config(run_args(shards, run_dir, hellaswag)))
    return run_dir


@pytest.fixture(scope="module")
def sharded(shards, hellaswag, tmp_path_factory):
    """2 ranks, FSDP2 with activation checkpointing, unbroken."""
    run_dir = tmp_path_factory.mktemp("fsdp")
    finish(torchrun(run_args(shards, run_dir, hellaswag, *SHARDED), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return run_dir


def test_two_sharded_ranks_train_as_one_process(reference, sharded):
    """Losses and final parameters within fp32 noise, validation and HellaSwag equal, the same samples; checkpoints
    are DCP directories."""
    one, two = log_events(reference / "log.txt"), log_events(sharded / "log.txt")
    assert sorted(one) == sorted(two) == list(range(STEPS))
    assert max(abs(one[s] - two[s]) for s in one) <= FP32_NOISE
    assert log_events(reference / "log.txt", "val") == log_events(sharded / "log.txt", "val")
    assert log_events(reference / "log.txt", "hella") == log_events(sharded / "log.txt", "hella")
    samples = [re.findall(r"(?m)^# step \d+ sample .*$", (run / "log.txt").read_text()) for run in (reference, sharded)]
    assert samples[0] == samples[1] and len(samples[0]) == 4  # every rank sampled; the master logged them
    final = sharded / f"ckpt_{STEPS:06d}"
    assert final.is_dir() and (final / ".metadata").is_file()
    assert [p.name for p in list_checkpoints(sharded)] == ["ckpt_000003", "ckpt_000006"]
    assert max_difference(weights(final), weights(reference / f"ckpt_{STEPS:06d}.pt")) <= WEIGHT_NOISE
    state = load_checkpoint(final)
    assert state["step"] == STEPS and state["train_config"]["parallel"] == "fsdp" and "model" not in state


def test_activation_checkpointing_changes_memory_not_results(shards, hellaswag, tmp_path):
    """One process, with and without recomputing each block in backward: the same losses and weights (fp32 on the
    CPU recomputes the same values), the checkpoint's keys as without the wrapper."""
    args = run_args(shards, tmp_path / "plain", hellaswag, "--max-steps", "3", "--hellaswag-interval", "0",
                    "--sample-interval", "0")
    plain = train(parse_config(args))
    recomputed = train(parse_config([*args, "--run-dir", str(tmp_path / "block"), "--activation-checkpointing",
                                     "block"]))
    assert max(abs(a - b) for a, b in zip(plain["losses"], recomputed["losses"])) <= 1e-6
    a, b = (load_checkpoint(tmp_path / run / "ckpt_000003.pt")["model"] for run in ("plain", "block"))
    assert a.keys() == b.keys() and max_difference(a, b) <= 1e-6


def test_sigterm_then_rerun_continues_the_sharded_run_bitwise(shards, hellaswag, sharded, tmp_path):
    args = run_args(shards, tmp_path, hellaswag, *SHARDED)
    proc = torchrun(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: (tmp_path / "log.txt").exists() and 1 in log_events(tmp_path / "log.txt"), 240)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stop = re.findall(r"train_gpt2.py: stopped by SIGTERM at step (\d+); checkpoint (\S+);", err)
    assert len(stop) == 1 and 1 < int(stop[0][0]) < STEPS, err[-3000:]
    assert stop[0][1] == str(tmp_path / f"ckpt_{int(stop[0][0]):06d}") and not list(tmp_path.glob("*.tmp"))

    finish(torchrun(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for kind in ("train", "val", "hella"):
        assert log_events(tmp_path / "log.txt", kind) == log_events(sharded / "log.txt", kind)
    final = f"ckpt_{STEPS:06d}"
    resumed, unbroken = full_checkpoint(tmp_path / final, tmp_path), full_checkpoint(sharded / final, tmp_path)
    assert resumed.keys() == unbroken.keys() and any(".exp_avg" in k for k in resumed)  # optimizer state too
    assert all(torch.equal(resumed[k], unbroken[k]) for k in resumed)


def test_sharded_checkpoints_resume_at_other_world_sizes(shards, hellaswag, sharded, tmp_path):
    """2 ranks -> 1 process, then 1 process -> 3 ranks (768 tokens a step divide among 1, 2 and 3): the loader's
    position and the optimizer carry over; losses and weights within fp32 noise of an unbroken run."""
    shutil.copytree(sharded, tmp_path / "two_to_one")
    shutil.rmtree(tmp_path / "two_to_one" / f"ckpt_{STEPS:06d}")
    result = train(parse_config(run_args(shards, tmp_path / "two_to_one", hellaswag, *SHARDED)))
    assert len(result["losses"]) == 3
    unbroken = log_events(sharded / "log.txt")
    assert max(abs(result["losses"][i] - unbroken[3 + i]) for i in range(3)) <= FP32_NOISE
    final = f"ckpt_{STEPS:06d}"
    assert max_difference(weights(tmp_path / "two_to_one" / final), weights(sharded / final)) <= WEIGHT_NOISE

    # 1 -> 3: one process writes steps 2, 4, 6; 3 ranks resume from 2 (4 and 6 removed); the same command both times
    batch = ["--total-batch-size", "768", "--checkpoint-interval", "2", "--eval-interval", "2"]
    reference = train(parse_config(run_args(shards, tmp_path / "reference", hellaswag, *batch)))
    chain, args = tmp_path / "chain", run_args(shards, tmp_path / "chain", hellaswag, *SHARDED, *batch)
    train(parse_config(args))
    for path in list_checkpoints(chain):
        if load_checkpoint(path)["step"] > 2:
            shutil.rmtree(path)
    out, _ = finish(torchrun(args, nproc=3, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert f"resumed from {chain / 'ckpt_000002'}" in out and "3 ranks" in out
    losses = log_events(chain / "log.txt")  # the last line of each step: 0-1 of one process, 2-5 of 3 ranks
    assert max(abs(losses[s] - reference["losses"][s]) for s in range(STEPS)) <= FP32_NOISE
    assert max_difference(weights(chain / final), weights(tmp_path / "reference" / f"{final}.pt")) <= WEIGHT_NOISE


def test_a_compiled_sharded_run_has_no_graph_breaks(shards, hellaswag, tmp_path):
    """Blocks compiled one by one under FSDP2 (no accumulation, no activation checkpointing): no graph break, and
    the losses of eager mode within the rounding of inductor's fused kernels."""
    args = run_args(shards, tmp_path / "compiled", hellaswag, "--parallel", "fsdp", "--total-batch-size", "256",
                    "--max-steps", "3", "--hellaswag-interval", "0", "--sample-interval", "0")
    eager = train(parse_config([*args, "--run-dir", str(tmp_path / "eager")]))
    out, err = finish(torchrun([*args, "--compile"], env={"TORCH_LOGS": "graph_breaks"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE), timeout=600)
    assert "compile on" in out and "Graph break" not in err, err[-3000:]
    compiled = log_events(tmp_path / "compiled" / "log.txt")
    assert max(abs(compiled[s] - eager["losses"][s]) for s in range(3)) < 1e-4


def test_a_kill_mid_save_leaves_the_previous_checkpoint_and_the_run_resumes(shards, hellaswag, tmp_path):
    """SIGKILL while a sharded checkpoint is being written (its temporary directory is there): the checkpoints on
    disk all load, and the rerun removes the unfinished one and finishes the run."""
    args = run_args(shards, tmp_path, hellaswag, *SHARDED, "--checkpoint-interval", "1", "--keep-checkpoints", "2",
                    "--max-steps", "20", "--hellaswag-interval", "0", "--sample-interval", "0", "--eval-interval", "0")
    proc = subprocess.Popen([sys.executable, "train_gpt2.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not any(tmp_path.glob("ckpt_*.tmp")):  # a save lasts a fraction of a second
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=60)
    assert any(tmp_path.glob("ckpt_*.tmp")), "no save was caught in progress"
    checkpoints = list_checkpoints(tmp_path)
    for path in checkpoints:
        load_model(str(path))  # complete, or not listed at all
    result = train(parse_config(args))
    assert not list(tmp_path.glob("*.tmp")) and load_checkpoint(tmp_path / "ckpt_000020")["step"] == 20
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000019", "ckpt_000020"]  # --keep-checkpoints 2
    assert len(result["losses"]) == 20 - (load_checkpoint(checkpoints[-1])["step"] if checkpoints else 0)


def test_every_reader_of_a_model_reads_a_sharded_checkpoint_as_its_file(shards, sharded, hellaswag, tmp_path,
                                                                        capsys):
    """sample.py, hellaswag.py, --eval-only and export_hf.py on the 2-rank run's sharded checkpoint, and on a file
    holding the same weights (converted by DCP's own tool): the same outputs."""
    import export_hf
    import hellaswag as hellaswag_cli
    import sample
    from checkpoint import save_checkpoint

    final = sharded / f"ckpt_{STEPS:06d}"
    model = {k[len("model."):]: v for k, v in full_checkpoint(final, tmp_path).items() if k.startswith("model.")}
    as_file = tmp_path / f"ckpt_{STEPS:06d}.pt"
    save_checkpoint(as_file, {"model": model, "config": load_checkpoint(final)["config"]})
    readers = (
        (sample.main, ["-n", "2", "-m", "8", "--device", "cpu", "--init"]),
        (hellaswag_cli.main, ["--data", str(hellaswag), "--device", "cpu", "-m"]),
        (train_gpt2.main, [*tiny_args(shards, tmp_path / "eval", "--hellaswag-interval", "3", "--hellaswag-path",
                                      str(hellaswag)), "--eval-only", "--init-from"]),
    )
    for main, argv in readers:
        (code_a, out_a, err_a), (code_b, out_b, err_b) = (run_cli_main(main, [*argv, str(path)], capsys)
                                                          for path in (final, as_file))
        assert code_a == code_b == 0, (err_a, err_b)
        assert out_a.replace(str(final), "CHECKPOINT") == out_b.replace(str(as_file), "CHECKPOINT")
    exports = [export_hf.export_hf(path, tmp_path / f"hf_{i}") for i, path in enumerate((final, as_file))]
    from safetensors.torch import load_file

    a, b = (load_file(out / "model.safetensors") for out in exports)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
