"""train_gpt2.py on tiny configs: LR schedule, accumulation, the golden loss curve, exact resume and what it refuses,
--init-from, compile, flags and their errors. Stops, signals and torchrun: test_lifecycle.py."""

import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_gpt2
from checkpoint import list_checkpoints, load_checkpoint, model_from_checkpoint
from conftest import HAS_CXX, ROOT, log_events, make_hellaswag_file, run_cli_main, tiny_args
from hellaswag import load_examples, score_examples
from model import GPT, GPTConfig
from train_gpt2 import get_lr, parse_config, train


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
    val = log_events(tmp_path / "whole" / "log.txt", "val")
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
    assert set(a) >= {"model", "optimizer", "config", "train_config", "step", "loader", "rng", "val_loss",
                      "evaluated"}


def test_the_checkpoint_keys_documented_in_checkpoint_py_are_what_a_run_saves(shards, tmp_path):
    import checkpoint

    documented = re.findall(r"(?m)^  (\w+) {2,}\S", checkpoint.__doc__)  # the key list, documented once
    train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "1", "--warmup-steps", "0")))
    saved = load_checkpoint(tmp_path / "ckpt_000001.pt")
    assert len(documented) >= 10 and set(saved) == set(documented) - {"scaler", "muon"}  # fp16, Muon runs only


# The first 20 train losses of a fixed tiny run (seed 1337, one CPU thread), stored so that any silent change to the
# initialisation, data order, LR schedule, loss or optimizer fails here. At max LR 2e-3 the curve is smooth enough
# that summation-order noise (~1e-7: other thread counts, other CPUs) stays below the 1e-5 tolerance; at 1e-2 it
# does not. When a change of those is intended, regenerate: run this test's command with --max-steps 20 and paste
# result["losses"]. These values came from the code before the train_gpt2.py refactor of issue 10 (commit 5bb3a42).
GOLDEN_LOSSES = [
    10.82737922668457, 10.78788948059082, 10.695679664611816, 10.613617897033691, 10.564351081848145,
    10.419692993164062, 10.236408233642578, 10.146676063537598, 10.02028751373291, 9.799503326416016,
    9.694210052490234, 9.565698623657227, 9.438562393188477, 9.318097114562988, 9.446382522583008,
    9.445337295532227, 9.276290893554688, 9.39498519897461, 9.250234603881836, 9.1815185546875,
]


def test_golden_loss_curve(shards, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "20", "--max-lr", "2e-3",
                                              "--warmup-steps", "5", "--eval-interval", "0",
                                              "--checkpoint-interval", "0")))
    finally:
        torch.set_num_threads(threads)
    assert len(result["losses"]) == 20
    assert max(abs(a - b) for a, b in zip(result["losses"], GOLDEN_LOSSES)) <= 1e-5, result["losses"]


def test_resume_refuses_another_model_or_data_and_logs_other_changes(shards, tmp_path, capsys):
    train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "3")))
    ckpt = tmp_path / "ckpt_000003.pt"
    other_data = shutil.copytree(shards, tmp_path / "other_data")
    # --model mini over tiny checkpoints used to train the tiny model while the summary printed "mini"
    refusals = [
        (["--model", "mini"], ["--model mini"]),
        (["--seq-len", "16", "--total-batch-size", "128"], ["--seq-len 32 -> 16", "--total-batch-size 256 -> 128"]),
        (["--vocab-size", "50257"], ["--vocab-size 50257"]),
        (["--data-dir", str(other_data)], [f"--data-dir '{shards}' -> '{other_data}'"]),
        (["--shuffle"], ["--shuffle False -> True"]),
    ]
    for extra, flags in refusals:
        code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--max-steps", "4", *extra), capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and f"cannot resume {ckpt}" in err, err
        assert all(f in err for f in flags), err
    assert list_checkpoints(tmp_path) == [ckpt]  # nothing was trained or written

    # learning rate, steps and intervals may change: logged, and the run goes on
    result = train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "4", "--max-lr", "5e-3",
                                          "--eval-interval", "2")))
    assert len(result["losses"]) == 1
    log = (tmp_path / "log.txt").read_text()
    assert "# changed since the checkpoint: --max-lr 0.01 -> 0.005, --max-steps 6 -> 4, --eval-interval 3 -> 2" \
        in log.replace("--max-steps 3 -> 4", "--max-steps 6 -> 4")


def test_init_from_weights_and_a_model_flag_that_disagrees(shards, tiny_hf_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--model mini \(n_layer 4, n_head 4, n_embd 256, block_size 128\): not the "
                                         r"shape of --init-from .*'s weights \(n_layer 2, n_head 2, n_embd 64"):
        train(parse_config(tiny_args(shards, tmp_path / "a", "--init-from", str(tiny_hf_dir), "--model", "mini")))
    with pytest.raises(ValueError, match=r"--vocab-size 50304: not the shape .* vocab_size 50257\)"):
        train(parse_config(tiny_args(shards, tmp_path / "b", "--init-from", str(tiny_hf_dir), "--vocab-size", "50304")))
    # the matching preset, or none, trains the weights' shape (GPT-2's unpadded vocabulary)
    for run, model_flag in (("c", ["--model", "tiny"]), ("d", [])):
        args = tiny_args(shards, tmp_path / run, "--init-from", str(tiny_hf_dir), "--max-steps", "1",
                         "--warmup-steps", "0")
        args = model_flag + args[2:]  # tiny_args starts with --model tiny
        result = train(parse_config(args))
        state = load_checkpoint(tmp_path / run / "ckpt_000001.pt")
        assert state["config"]["vocab_size"] == 50257 and len(result["losses"]) == 1


def test_a_fine_tune_resumes_in_the_shape_of_its_weights(shards, tiny_hf_dir, tmp_path):
    """--init-from's weights (GPT-2's unpadded vocabulary), stopped after the step-3 checkpoint and rerun by the same
    command: the rerun continues them bitwise; it used to rebuild the default gpt2 shape and fail to load."""
    args = tiny_args(shards, tmp_path / "whole", "--init-from", str(tiny_hf_dir), "--max-steps", "5")[2:]  # no --model
    whole = train(parse_config(args))
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    (tmp_path / "split" / "ckpt_000005.pt").unlink()
    resumed = train(parse_config([*args, "--run-dir", str(tmp_path / "split")]))
    assert resumed["losses"] == whole["losses"][3:]
    a, b = (load_checkpoint(tmp_path / run / "ckpt_000005.pt") for run in ("whole", "split"))
    assert a["config"]["vocab_size"] == b["config"]["vocab_size"] == 50257
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(shards, tmp_path, capsys):
    args = tiny_args(shards, tmp_path, "--max-lr", "1e35", "--warmup-steps", "0", "--checkpoint-interval", "1",
                     "--max-steps", "20")
    with pytest.raises(FloatingPointError, match="non-finite") as e:
        train(parse_config(args))
    newest = list_checkpoints(tmp_path)[-1]
    assert f"The newest checkpoint, {newest}, is intact" in str(e.value)
    for path in list_checkpoints(tmp_path):
        assert torch.isfinite(load_checkpoint(path)["model"]["transformer.wte.weight"]).all()
    # with no checkpoint yet, the message does not pretend there is one; the command line says it in one line
    code, _, err = run_cli_main(train_gpt2.main, [*args, "--run-dir", str(tmp_path / "cli"), "--checkpoint-interval",
                                                  "0"], capsys)
    assert code == 1 and "non-finite" in err and "Traceback" not in err
    assert "No checkpoint had been written yet" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--total-batch-size", "1000"], "--total-batch-size 1000 is not divisible"),
        (["--warmup-steps", "50"], "--warmup-steps 50 is longer than the run"),
        (["--seq-len", "128", "--total-batch-size", "512", "--val-tokens", "512"],
         "--seq-len 128 is longer than the model's context"),
        (["--model", "gpt9"], "--model 'gpt9'"),
        (["--micro-batch-size", "0"], "--micro-batch-size must be positive"),
        (["--max-lr", "fast"], "--max-lr"),
        (["--min-lr-ratio", "1.5"], "--min-lr-ratio must be in [0, 1]"),
        (["--val-tokens", "100"], "--val-tokens 100 is less than one micro-batch"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
        (["--dtype", "float16"], "--dtype float16 on cpu: float16 needs a GPU"),
        (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
        (["--dist-timeout", "0"], "--dist-timeout must be positive"),
        # tiny_args accumulates 2 micro-steps: CUDA graphs would overwrite the first one's outputs
        (["--compile", "--compile-mode", "reduce-overhead"], "use --compile-mode max-autotune-no-cudagraphs"),
        (["--compile", "--compile-mode", "max-autotune"], "--compile-mode max-autotune replays CUDA graphs"),
    ],
)
def test_bad_flags_give_one_line_errors(shards, tmp_path, extra, message, capsys):
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "run", *extra), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_cuda_graph_modes_are_accepted_with_one_micro_step_and_a_mode_without_compilation_is_refused(
        shards, tmp_path, capsys):
    one_micro_step = ["--total-batch-size", "128", "--compile", "--compile-mode", "reduce-overhead"]
    assert parse_config(tiny_args(shards, tmp_path, *one_micro_step)).compile_mode == "reduce-overhead"
    for off, why in ([], "compile is off by default on cpu"), (["--no-compile"], "--no-compile is given"):
        code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--compile-mode", "max-autotune",
                                                               *off), capsys)
        assert code == 2 and f"--compile-mode max-autotune does nothing: {why}" in err, err


def test_validation_computes_the_loss_as_training_does(shards, tmp_path, monkeypatch):
    """--loss-chunk-size reaches every loss of a run, validation's included (whose whole logits would otherwise take
    more memory than training's), and the chunked val loss is the whole-logits one."""
    chunk_sizes = []
    forward = GPT.forward

    def recording(self, idx, targets=None, loss_chunk_size=0):
        if targets is not None:
            chunk_sizes.append((torch.is_grad_enabled(), loss_chunk_size))
        return forward(self, idx, targets, loss_chunk_size)

    monkeypatch.setattr(GPT, "forward", recording)
    extra = ["--max-steps", "3", "--checkpoint-interval", "0"]
    chunked = train(parse_config(tiny_args(shards, tmp_path / "chunked", *extra, "--loss-chunk-size", "48")))
    assert {size for _, size in chunk_sizes} == {48} and {grad for grad, _ in chunk_sizes} == {False, True}
    whole = train(parse_config(tiny_args(shards, tmp_path / "whole", *extra)))
    assert chunked["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-5)  # fp32, another summation order


def test_help_lists_every_model_shape_and_shows_a_presets_values_once(capsys):
    for argv, expected in ((["-h"], "(default: 19073)"), (["--preset", "quickstart", "-h"], "(default: 150)")):
        with pytest.raises(SystemExit) as e:
            parse_config(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and expected in " ".join(out.split())
        assert "gpt2, gpt2-medium, gpt2-large, gpt2-xl, small, mini, tiny" in " ".join(out.split())
        options = re.split(r"\n  (?=-)", out.split("options:")[1])
        assert all(option.count("(default:") <= 1 for option in options)
    assert "(default: mini)" in " ".join(out.split())


def test_data_dir_without_shards_is_named(tmp_path, capsys):
    """A usage error when the run starts: parsing the command line touches no disk."""
    assert parse_config(["--data-dir", str(tmp_path)]).data_dir == str(tmp_path)
    code, _, err = run_cli_main(train_gpt2.main, ["--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "--data-dir: no 'train' shards" in err


def test_quickstart_preset_and_explicit_resume(shards, tmp_path, capsys):
    cfg = parse_config(["--preset", "quickstart", "--max-steps", "30"])
    assert (cfg.model, cfg.max_steps, cfg.hellaswag_interval, cfg.seq_len) == ("mini", 30, 0, 128)
    with pytest.raises(ValueError, match="no checkpoint"):
        train(parse_config(tiny_args(shards, tmp_path, "--resume")))


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
    compiled = log_events(tmp_path / "compiled" / "log.txt")
    # inductor fuses kernels, so the rounding differs from eager mode: equal within fp32 noise, not bitwise
    assert max(abs(compiled[s] - eager["losses"][s]) for s in range(4)) < 1e-4
    val_e = log_events(tmp_path / "eager" / "log.txt", "val")
    val_c = log_events(tmp_path / "compiled" / "log.txt", "val")
    assert sorted(val_c) == [0, 2, 4] and max(abs(val_c[s] - val_e[s]) for s in val_c) < 1e-3
    state = load_checkpoint(tmp_path / "compiled" / "ckpt_000004.pt")
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    # the logged HellaSwag accuracy is the standalone scorer's on the same weights
    counts = score_examples(model_from_checkpoint(state), load_examples(path=str(examples)), torch.device("cpu"))
    assert log_events(tmp_path / "compiled" / "log.txt", "hella")[4] == round(counts["acc_norm_correct"] / 12, 4)


def test_hellaswag_out_of_reach_is_said_once_and_the_run_goes_on(shards, tmp_path, monkeypatch):
    import hellaswag

    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setattr(hellaswag, "unreachable", lambda url: "no answer (offline)")
    result = train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "2", "--hellaswag-interval", "1")))
    assert len(result["losses"]) == 2
    log = (tmp_path / "log.txt").read_text()
    assert log.count("HellaSwag   off for this run") == 1 and " hella " not in log and "--hellaswag-path" in log


@pytest.mark.parametrize("content,message", [(None, "not found"), ('{"ctx": "x"}\n', "absent.jsonl:1: missing field")])
def test_a_hellaswag_file_that_was_asked_for_and_cannot_be_read_stops_the_run(shards, tmp_path, content, message):
    path = tmp_path / "absent.jsonl"
    if content is not None:
        path.write_text(content)
    args = tiny_args(shards, tmp_path, "--max-steps", "2", "--hellaswag-interval", "1", "--hellaswag-path", str(path))
    with pytest.raises((OSError, ValueError), match=f"--hellaswag-path: .*{message}"):
        train(parse_config(args))
    assert not list(tmp_path.glob("ckpt_*.pt"))

def test_eval_only_of_a_transformers_model_equals_a_float64_reference(shards, tiny_hf_dir, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    from dataloader import list_shards

    args = tiny_args(shards, tmp_path, "--eval-only", "--init-from", str(tiny_hf_dir), "--val-tokens", "384")
    code, out, err = run_cli_main(train_gpt2.main, args, capsys)
    assert code == 0, err
    # the first 3 windows of 4 x 32 tokens of the val split, each target the next token, scored by transformers
    tokens = torch.from_numpy(np.load(list_shards(shards, "val")[0]).astype(np.int64))
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).double().eval()
    losses = []
    with torch.no_grad():
        for w in range(3):
            window = tokens[w * 128 : w * 128 + 129]
            logits = hf(window[:-1].view(4, 32)).logits  # (4, 32, V)
            losses.append(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), window[1:]).item())
    reported = float(re.search(r"val loss (\S+) on 384 tokens", out).group(1))
    assert reported == pytest.approx(sum(losses) / 3, abs=1e-4)  # printed with 4 decimals; fp32 vs float64 ~1e-6
    assert f"# eval-only {tiny_hf_dir}: val loss {reported:.4f}" in (tmp_path / "log.txt").read_text()
    assert not list(tmp_path.glob("ckpt_*.pt"))


def test_eval_only_of_a_run_directory_repeats_its_final_evaluations(shards, tmp_path, capsys):
    hella = ["--hellaswag-interval", "3", "--hellaswag-path", str(make_hellaswag_file(tmp_path / "hs.jsonl", 8))]
    train(parse_config(tiny_args(shards, tmp_path / "run", *hella)))
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "run", *hella, "--eval-only"), capsys)
    assert code == 0, err
    val, acc = log_events(tmp_path / "run" / "log.txt", "val")[6], log_events(tmp_path / "run" / "log.txt", "hella")[6]
    harness = log_events(tmp_path / "run" / "log.txt", "hella_harness")[6]  # both conventions, side by side
    assert f"ckpt_000006.pt: val loss {val:.4f} on 256 tokens" in out
    assert f"HellaSwag acc_norm {acc:.4f} (completion style) | {harness:.4f} (harness style) on 8 examples" in out
    examples = load_examples(path=str(tmp_path / "hs.jsonl"))
    counts = score_examples(model_from_checkpoint(load_checkpoint(tmp_path / "run" / "ckpt_000006.pt")), examples,
                            torch.device("cpu"))
    expected = (counts["acc_norm_correct"] / 8, counts["harness_acc_norm_correct"] / 8)
    assert (acc, harness) == tuple(round(value, 4) for value in expected)
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "empty", "--eval-only"), capsys)
    assert code == 1 and "nothing to evaluate" in err and not (tmp_path / "empty").exists()


def test_speed_levers_train_the_same_model(shards, tmp_path, capsys):
    """The loss in chunks and another attention kernel change summation order only: fp32 losses within 1e-5 of the
    default run's, step for step. A kernel the device lacks is a usage error."""
    plain = train(parse_config(tiny_args(shards, tmp_path / "plain", "--max-steps", "4")))
    levers = ["--loss-chunk-size", "48", "--attention", "math"]
    fast = train(parse_config(tiny_args(shards, tmp_path / "levers", "--max-steps", "4", *levers)))
    assert len(fast["losses"]) == 4
    assert max(abs(a - b) for a, b in zip(plain["losses"], fast["losses"])) < 1e-5
    assert abs(plain["val_loss"] - fast["val_loss"]) < 1e-5
    assert "attention math, loss in chunks of 48" in (tmp_path / "levers" / "log.txt").read_text()
    if not torch.cuda.is_available():
        code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--attention", "cudnn"), capsys)
        assert code == 2 and "needs CUDA" in err


def test_ctrl_c_during_eval_only_records_nothing(shards, tmp_path, monkeypatch, capsys):
    from dataloader import ShardLoader

    train(parse_config(tiny_args(shards, tmp_path, "--max-steps", "2")))
    before = (tmp_path / "log.txt").read_text()
    next_batch = ShardLoader.next_batch

    def interrupted(self):  # Ctrl-C arrives while the first window is being read
        os.kill(os.getpid(), signal.SIGINT)
        return next_batch(self)

    monkeypatch.setattr(ShardLoader, "next_batch", interrupted)
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--eval-only"), capsys)
    assert code == 130 and "stopped by SIGINT during the evaluation; nothing recorded" in err
    assert "eval-only" not in out and (tmp_path / "log.txt").read_text() == before


def test_document_shuffle_trains_resumes_bitwise_and_is_guarded(shards, tmp_path, capsys):
    """--shuffle-documents end to end: a run stopped after its step-3 checkpoint and resumed ends bitwise where the
    unbroken one does, on another stream than the unshuffled run's; the flag cannot change on resume, nor be
    combined with --shuffle."""
    extra = ["--shuffle-documents", "--seed", "7"]
    whole = train(parse_config(tiny_args(shards, tmp_path / "whole", *extra)))
    plain = train(parse_config(tiny_args(shards, tmp_path / "plain")))
    assert whole["losses"][0] != plain["losses"][0]  # another first batch
    train(parse_config(tiny_args(shards, tmp_path / "split", *extra, "--max-steps", "3")))
    resumed = train(parse_config(tiny_args(shards, tmp_path / "split", *extra)))
    assert resumed["losses"] == whole["losses"][3:]
    a, b = (load_checkpoint(tmp_path / run / "ckpt_000006.pt") for run in ("whole", "split"))
    assert a["loader"] == b["loader"] and set(a["loader"]) == {"epoch", "document", "position"}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    capsys.readouterr()
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "whole", "--max-steps", "8"), capsys)
    assert code == 1 and "--shuffle-documents True -> False" in err
    with pytest.raises(SystemExit):
        parse_config(tiny_args(shards, tmp_path / "x", "--shuffle", "--shuffle-documents"))
    assert "pick one" in capsys.readouterr().err


def test_a_run_directorys_config_toml_repeats_its_run_and_a_config_file_resumes_as_the_command_line(shards,
                                                                                                 tmp_path):
    import tomllib

    first = train(parse_config(tiny_args(shards, tmp_path / "a", "--max-lr", "3e-3", "--no-resume")))
    saved = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert saved["max_lr"] == 3e-3 and saved["run_dir"] == str(tmp_path / "a") and "resume" not in saved
    again = train(parse_config(["--config", str(tmp_path / "a" / "config.toml"), "--run-dir", str(tmp_path / "b")]))
    assert again["losses"] == first["losses"]  # bitwise: the same run
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    (tmp_path / "c" / "ckpt_000006.pt").unlink()
    args = ["--config", str(tmp_path / "a" / "config.toml"), "--run-dir", str(tmp_path / "c")]
    assert train(parse_config(args))["losses"] == first["losses"][3:]  # resumed as the command line would
