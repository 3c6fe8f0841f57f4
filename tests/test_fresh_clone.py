"""The rough edges of a second fresh-clone pass (issue 27): each gives the right line, or just works."""

import os
import re
import subprocess


import sample
import train_gpt2
from conftest import run_cli_main, tiny_args, torchrun
from export_hf import export_hf
from train_gpt2 import parse_config, train


def test_resume_from_a_run_directory_takes_its_newest_checkpoint(shards, tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    train(parse_config(tiny_args(shards, old)))
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, new, "--max-steps", "8", "--resume-from",
                                                             str(old)), capsys)
    assert code == 0, err
    assert f"--resume-from {old}: its newest checkpoint, {old / 'ckpt_000006.pt'}" in out
    assert f"resumed from {old / 'ckpt_000006.pt'} at step 6" in out and (new / "ckpt_000008.pt").is_file()
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, new, "--resume-from", str(tmp_path / "none")),
                                capsys)
    assert code == 2 and "no such checkpoint" in err, err


def test_eval_only_of_a_run_directory_without_checkpoints_says_so_not_that_data_is_missing(tmp_path, capsys):
    code, _, err = run_cli_main(train_gpt2.main, ["--eval-only", "--run-dir", str(tmp_path / "empty"), "--device",
                                                  "cpu"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"nothing to evaluate: {tmp_path / 'empty'} holds no checkpoint" in err and "data" not in err.lower()


def test_a_presets_model_is_not_held_against_the_weights_of_init_from(shards, tiny_hf_dir, tmp_path, capsys):
    """The quickstart's --model mini comes from the preset: with --init-from, the weights' shape is the run's."""
    args = ["--preset", "quickstart", "--init-from", str(tiny_hf_dir), "--data-dir", str(shards), "--run-dir",
            str(tmp_path), "--seq-len", "32", "--max-steps", "1", "--warmup-steps", "0", "--sample-interval", "0",
            "--device", "cpu"]
    assert parse_config(args).model is None
    code, out, err = run_cli_main(train_gpt2.main, args, capsys)
    assert code == 0 and "--model" not in err, err
    code, _, err = run_cli_main(train_gpt2.main, [*args, "--model", "mini", "--no-resume"], capsys)  # typed: checked
    assert code == 1 and "--model mini" in err and "not the shape of --init-from" in err, err


def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path, capsys):
    path = tmp_path / "shards.npy"
    path.write_bytes(b"not a directory")
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(path, tmp_path / "run"), capsys)
    assert code == 2 and f"--data-dir {path} is a file, not a directory of shards" in err, err


def test_flags_are_never_abbreviated_and_a_near_miss_is_answered_with_the_flag(shards, tmp_path, capsys):
    code, _, err = run_cli_main(train_gpt2.main, [*tiny_args(shards, tmp_path), "--max-step", "5"], capsys)
    assert code == 2 and "unrecognized arguments: --max-step 5; did you mean --max-steps?" in err, err
    code, _, err = run_cli_main(sample.main, ["--init", "gpt2", "--temp", "0.5"], capsys)
    assert code == 2 and "did you mean --temperature?" in err, err


def test_a_usage_error_under_torchrun_is_said_once(shards, tmp_path):
    proc = torchrun(tiny_args(shards, tmp_path, "--max-lr", "-1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=120)[1]
    lines = [line for line in err.splitlines() if line.startswith("train_gpt2.py:")]
    assert lines == ["train_gpt2.py: error: --max-lr must be positive, got -1.0"], err[-2000:]


def test_the_eval_only_record_in_log_txt_is_of_the_evaluated_checkpoint(shards, tmp_path, capsys):
    run = tmp_path / "run"
    train(parse_config(tiny_args(shards, run)))
    code, _, err = run_cli_main(train_gpt2.main, ["--eval-only", "--run-dir", str(run), "--device", "cpu",
                                                  "--hellaswag-interval", "0"], capsys)
    assert code == 0, err
    record = [line for line in (run / "log.txt").read_text().splitlines() if line.startswith("# eval-only at")]
    assert len(record) == 1 and f"of {run / 'ckpt_000006.pt'}: model " in record[0]
    assert '"n_layer": 2, "n_head": 2, "n_embd": 64' in record[0] and '"model": "tiny"' in record[0]
    assert f'"data_dir": "{shards}"' in record[0] and '"n_layer": 12' not in record[0]


def test_the_run_summary_says_what_the_memory_estimate_is_per(shards, tmp_path, capsys):
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, "--max-steps", "1", "--warmup-steps",
                                                             "0"), capsys)
    assert code == 0, err
    memory = re.search(r"(?m)^  memory +~[\d.]+ GiB per (.+?) \(", out)
    assert memory and memory.group(1) == "CPU process", out


def test_an_export_is_readable_by_all_as_every_other_file_written(tiny_checkpoint, tmp_path):
    umask = os.umask(0o022)
    try:
        out = export_hf(tiny_checkpoint, tmp_path / "hf")
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_the_quickstart_keeps_no_time_checkpoint_beside_its_final_one(shards, tmp_path):
    """What the quickstart did after 15 minutes (a 386 MB time checkpoint kept beside the final one), in small."""
    from checkpoint import list_checkpoints

    train(parse_config(tiny_args(shards, tmp_path, "--checkpoint-interval", "3", "--checkpoint-minutes", "1e-6")))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000003.pt", "ckpt_000006.pt"]
