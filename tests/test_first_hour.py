"""A new user's first hour, replayed: the rough edges a fresh clone met (issue 23) each give the right line or just
work."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
import export_hf
import hellaswag
import plot
import sample
import train_gpt2
from checkpoint import load_checkpoint
from conftest import ROOT, log_events, run_cli_main, tiny_args
from train_gpt2 import parse_config, train


def test_eval_only_of_a_checkpoint_takes_its_runs_data_and_shapes(shards, tmp_path, capsys):
    """--eval-only --init-from CKPT with no other flags evaluates as the run did (its data, windows, sequence length
    and micro-batch), where the command's defaults (edu_fineweb10B, T=1024, B=64) took two refusals and three
    flags; a flag given still wins."""
    train(parse_config(tiny_args(shards, tmp_path / "run")))
    argv = ["--eval-only", "--init-from", str(tmp_path / "run" / "ckpt_000006.pt"), "--run-dir", str(tmp_path / "ev"),
            "--hellaswag-interval", "0", "--device", "cpu"]
    capsys.readouterr()
    code, out, err = run_cli_main(train_gpt2.main, argv, capsys)
    assert code == 0, err
    final_val = log_events(tmp_path / "run" / "log.txt", "val")[6]
    assert f"val loss {final_val:.4f} on 256 tokens of {shards}" in out
    code, _, err = run_cli_main(train_gpt2.main, [*argv, "--seq-len", "128", "--val-tokens", "512"], capsys)
    assert code != 0 and "--seq-len 128 is longer than the model's context" in err


def test_the_resume_refusal_comes_before_a_sequence_length_error(shards, tmp_path, capsys):
    """A run of the mini shape (context 128, T=128), rerun with --model tiny (context 64): the resume refusal, which
    names the real problem, not "--seq-len 128 is longer than the model's context"."""
    args = tiny_args(shards, tmp_path, "--model", "mini", "--seq-len", "128", "--micro-batch-size", "2",
                     "--total-batch-size", "256", "--max-steps", "1", "--warmup-steps", "0", "--val-tokens", "256")
    train(parse_config(args))
    capsys.readouterr()
    code, _, err = run_cli_main(train_gpt2.main, [*args, "--model", "tiny", "--max-steps", "2"], capsys)
    assert code == 1 and "cannot resume" in err and "--model tiny" in err, err


def test_no_data_points_to_fineweb_and_the_quickstart(tmp_path, capsys):
    code, _, err = run_cli_main(train_gpt2.main, ["--data-dir", str(tmp_path / "edu_fineweb10B")], capsys)
    assert code == 2 and "python fineweb.py" in err and "--preset quickstart" in err


def test_the_quickstart_directory_is_recognised_however_written(monkeypatch, tmp_path, capsys):
    """./data/shakespeare is the quickstart's directory, made on first use: not refused for its missing shards."""
    monkeypatch.chdir(tmp_path)
    for written in ("./data/shakespeare", str(tmp_path / "data" / "shakespeare")):
        cfg = parse_config(["--preset", "quickstart", "--data-dir", written])
        assert train_gpt2.is_quickstart_data(cfg.data_dir)


def test_a_missing_checkpoint_lists_what_the_directory_holds(tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for step in (50, 100):
        (run / f"ckpt_{step:06d}.pt").write_bytes(tiny_checkpoint.read_bytes())
    code, _, err = run_cli_main(sample.main, ["--init", str(run / "ckpt_000150.pt"), "--device", "cpu"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    missing = run / "ckpt_000150.pt"
    assert f"no such checkpoint or directory: {missing}; {run} holds ckpt_000050.pt, ckpt_000100.pt" in err


def test_files_where_directories_belong_and_directories_to_make(shards, tiny_checkpoint, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, a_file), capsys)
    assert code == 2 and f"--run-dir {a_file} is a file, not a directory" in err
    result = subprocess.run([sys.executable, "fineweb.py", "--input", str(ROOT / "assets" / "shakespeare"), "--out",
                             str(a_file)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"fineweb.py: error: --out {a_file} is a file, not a " \
                                                               f"directory"
    code, _, err = run_cli_main(export_hf.main, [str(tiny_checkpoint), str(a_file)], capsys)
    assert code == 1 and "is a file, not a directory" in err and "Errno" not in err
    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run)))
    capsys.readouterr()
    out = tmp_path / "charts" / "new" / "loss.png"  # plot.py makes the directories
    code, _, err = run_cli_main(plot.main, [str(run), "-o", str(out)], capsys)
    assert code == 0 and out.is_file(), err


def test_hellaswag_data_that_is_a_directory_or_not_text(tiny_checkpoint, tmp_path, capsys):
    binary = tmp_path / "weights.jsonl"
    binary.write_bytes(np.arange(256, dtype=np.uint8).tobytes() * 4)
    for data, message in ((tmp_path, "is a directory; expected a HellaSwag .jsonl file"),
                          (binary, "is not a HellaSwag .jsonl file: not UTF-8 text (near line 1)")):
        code, _, err = run_cli_main(hellaswag.main, ["-m", str(tiny_checkpoint), "--data", str(data), "--device",
                                                     "cpu"], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_help_and_usage_lines(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([])
    assert e.value.code == 2 and "required: {train,generate,data,optimizers}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["data", "-h"])
    data_help = capsys.readouterr().out
    assert all(f"{flag} " in data_help and "tokenizer processes" in data_help
               for flag in ("--workers", "--batch-size", "--seq-len"))
    with pytest.raises(SystemExit) as e:
        parse_config(["--no-eval-only"])
    assert e.value.code == 2 and "unrecognized arguments: --no-eval-only" in capsys.readouterr().err
    for main in (sample.main, hellaswag.main):
        with pytest.raises(SystemExit):
            main(["-h"])
        assert "scaler" not in capsys.readouterr().out


def test_bench_generate_on_the_cpu_is_small_by_default_and_shows_progress(capsys):
    """The CPU defaults (the small shape, 64 new tokens; GPT-2 124M and 256 on CUDA) finish in seconds, a line on
    stderr as each row is done."""
    bench.main(["generate", "--device", "cpu", "--batch", "1", "--repeats", "1", "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["rows"]
    assert {(row["model"], row["new_tokens"]) for row in rows} == {("small", 64)}
    assert captured.err.count("tokens/s") == len(rows) == 2


# What users of nanoGPT and transformers expect


def test_shape_flags_and_dropout_are_recorded_and_guarded_on_resume(shards, tmp_path, capsys):
    args = tiny_args(shards, tmp_path, "--n-layer", "1", "--n-embd", "32", "--block-size", "32", "--dropout", "0.1",
                     "--max-steps", "3")
    train(parse_config(args))
    state = load_checkpoint(tmp_path / "ckpt_000003.pt")
    assert state["config"] == dict(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=32, dropout=0.1)
    assert state["model"]["transformer.wpe.weight"].shape == (32, 32)
    assert "transformer.h.1.ln_1.weight" not in state["model"]
    capsys.readouterr()
    for changed, named in ((["--n-layer", "2"], "--n-layer 2"), (["--dropout", "0.2"], "--dropout 0.1 -> 0.2")):
        code, _, err = run_cli_main(train_gpt2.main, [*args, "--max-steps", "4", *changed], capsys)
        assert code == 1 and "cannot resume" in err and named in err, err
    assert len(train(parse_config([*args, "--max-steps", "4"]))["losses"]) == 1


def test_dropout_is_active_in_training_only():
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
    plain, dropping = GPT(config), GPT(GPTConfig(**{**config.__dict__, "dropout": 0.3}))
    dropping.load_state_dict(plain.state_dict())
    x = torch.randint(0, 64, (2, 16))
    assert not torch.equal(dropping(x)[0], dropping(x)[0])  # a new mask each pass
    plain.eval(), dropping.eval()
    assert torch.equal(dropping(x)[0], plain(x)[0])
    hf = dropping.to_hf()
    assert (hf.config.resid_pdrop, hf.config.embd_pdrop, hf.config.attn_pdrop) == (0.3, 0.3, 0.3)


def test_resume_from_a_chosen_checkpoint_sets_the_later_ones_aside(shards, tmp_path, capsys):
    """--resume-from the step-3 checkpoint of a finished 6-step run: the step-6 one is set aside, the run continues
    from step 3 exactly as it went the first time, and its stop advice drops the flag."""
    whole = tmp_path / "whole"
    train(parse_config(tiny_args(shards, whole)))
    first = load_checkpoint(whole / "ckpt_000006.pt")
    result = train(parse_config(tiny_args(shards, whole, "--resume-from", str(whole / "ckpt_000003.pt"))))
    assert len(result["losses"]) == 3
    aside = list(whole.glob("previous_run_*"))
    assert len(aside) == 1 and [p.name for p in aside[0].iterdir()] == ["ckpt_000006.pt"]
    again = load_checkpoint(whole / "ckpt_000006.pt")
    assert all(torch.equal(again["model"][k], first["model"][k]) for k in first["model"])
    chosen = parse_config(tiny_args(shards, whole, "--resume-from", str(whole / "ckpt_000003.pt")))
    assert train_gpt2.rerun_advice(chosen) == "rerun the same command without --resume-from"
    capsys.readouterr()
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, whole, "--resume-from", str(whole / "nope.pt")),
                                capsys)
    assert code == 2 and "no such checkpoint" in err and "ckpt_000003.pt" in err


def test_prompt_from_a_file_and_stop_at_end_of_text(tiny_checkpoint, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("First Citizen:\nBefore we proceed", encoding="utf-8")
    argv = ["--init", str(tiny_checkpoint), "-n", "2", "-m", "6", "--seed", "1", "--device", "cpu"]
    code, from_file, err = run_cli_main(sample.main, [*argv, "--prompt-file", str(prompt)], capsys)
    assert code == 0, err
    assert from_file == run_cli_main(sample.main, [*argv, "-p", prompt.read_text()], capsys)[1]
    from tokenizer import EOT_ID, get_tokenizer

    enc = get_tokenizer()
    ids = enc.encode("Hello")
    generated = enc.encode(" world") + [EOT_ID] + enc.encode(" more")

    class Scripted:  # a model that writes a chosen continuation, <|endoftext|> inside
        def generate(self, idx, max_new_tokens, on_token=None, **settings):
            new = torch.tensor([generated[:max_new_tokens]] * idx.size(0))
            for i in range(new.size(1)):
                if on_token is not None:
                    on_token(new[:, i : i + 1])
            return torch.cat([idx, new], dim=1)

    n = len(generated)
    assert sample.sample_texts(Scripted(), "Hello", 2, n, torch.device("cpu"), stop_at_eot=True) == ["Hello world"] * 2
    assert sample.sample_texts(Scripted(), "Hello", 1, n, torch.device("cpu")) == [enc.decode(ids + generated)]
    pieces = []
    sample.sample_texts(Scripted(), "Hello", 1, n, torch.device("cpu"), stop_at_eot=True, write=pieces.append)
    assert "".join(pieces) == "Hello world"


def test_export_in_bf16_and_a_weights_only_checkpoint(shards, tmp_path, capsys):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run, "--max-steps", "3")))
    capsys.readouterr()
    assert run_cli_main(export_hf.main, [str(run), str(tmp_path / "hf"), "--dtype", "bfloat16"], capsys)[0] == 0
    assert {t.dtype for t in load_file(tmp_path / "hf" / "model.safetensors").values()} == {torch.bfloat16}
    small = tmp_path / "tiny-weights.pt"
    code, out, err = run_cli_main(export_hf.main, [str(run), str(small), "--weights-only"], capsys)
    assert code == 0 and str(small) in out, err
    full = run / "ckpt_000003.pt"
    assert small.stat().st_size < full.stat().st_size / 2  # no AdamW moments
    assert set(load_checkpoint(small)) == {"model", "config", "train_config"}
    argv = ["-n", "1", "-m", "6", "--temperature", "0", "--device", "cpu"]
    assert run_cli_main(sample.main, ["--init", str(small), *argv], capsys)[1] == \
        run_cli_main(sample.main, ["--init", str(full), *argv], capsys)[1]
    code, _, err = run_cli_main(export_hf.main, [str(run), str(tmp_path / "ckpt_000009.pt"), "--weights-only"], capsys)
    assert code == 1 and "not ckpt_NNNNNN.pt" in err


def test_fineweb_refuses_a_bad_input_in_one_line_without_an_empty_progress_bar(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "hello"}\n')
    result = subprocess.run([sys.executable, "fineweb.py", "--input", str(bad), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == f"fineweb.py: error: {bad}:1: no string field 'text'\n"


def test_the_divergence_line_names_what_was_not_finite(shards, tmp_path, monkeypatch):
    """An infinite gradient norm with a finite loss: the line says the gradient norm, not the loss."""
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda parameters, max_norm: torch.tensor(float("inf")))
    with pytest.raises(FloatingPointError) as e:
        train(parse_config(tiny_args(shards, tmp_path)))
    assert str(e.value).startswith("step 0: non-finite gradient norm inf; stopped before the update")
