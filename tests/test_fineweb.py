"""fineweb.py: shard format, determinism across workers, crash-safe resume, local formats, errors."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fineweb
from conftest import ROOT
from fineweb import Source, build_shards, expand_inputs
from tokenizer import EOT_ID, get_tokenizer

SHAKESPEARE = ROOT / "assets" / "shakespeare"


def read_stream(out_dir):
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    return np.concatenate([np.load(Path(out_dir) / s["name"]) for s in manifest["shards"]]), manifest


def split_documents(tokens):
    starts = np.flatnonzero(tokens == EOT_ID)
    assert starts[0] == 0  # every document starts with <|endoftext|>
    return [tokens[a + 1 : b] for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def make_jsonl(path, n_docs, seed=0):
    lines = (SHAKESPEARE / "hamlet.txt").read_text().splitlines()
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            start = int(rng.integers(0, len(lines) - 40))
            f.write(json.dumps({"text": "\n".join(lines[start : start + int(rng.integers(1, 40))]), "id": 1}) + "\n")
    return path


def test_round_trip_of_txt_files(tmp_path):
    docs = ["First document.\nWith two lines.", "Second: émigré, naïve — unicode!", "Third " * 50]
    for i, text in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    build_shards(Source("local", files=expand_inputs([str(tmp_path / "*.txt")])), out, "x", shard_size=7, val_tokens=10)
    tokens, manifest = read_stream(out)
    enc = get_tokenizer()
    assert [enc.decode(d.tolist()) for d in split_documents(tokens)] == docs
    names = [s["name"] for s in manifest["shards"]]
    # the first 10 tokens are val (shards of at most 7), then train; one running index, build-nanogpt's names
    assert names[:3] == ["x_val_000000.npy", "x_val_000001.npy", "x_train_000002.npy"]
    assert [s["tokens"] for s in manifest["shards"]][:3] == [7, 3, 7]
    for s in manifest["shards"]:
        arr = np.load(out / s["name"])
        assert arr.dtype == np.uint16 and arr.ndim == 1 and len(arr) == s["tokens"]
        assert s["sha256"] == hashlib.sha256((out / s["name"]).read_bytes()).hexdigest()
    assert manifest["complete"] and manifest["total_tokens"] == len(tokens) and manifest["documents"] == 3


def test_jsonl_and_parquet_give_the_same_tokens(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = make_jsonl(tmp_path / "d.jsonl", 50)
    texts = [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    pq.write_table(pa.table({"body": texts}), tmp_path / "d.parquet")
    build_shards(Source("local", files=[str(jsonl)]), tmp_path / "a", "a", shard_size=1000, val_tokens=100)
    build_shards(Source("local", files=[str(tmp_path / "d.parquet")], text_field="body"), tmp_path / "b", "a",
                 shard_size=1000, val_tokens=100)
    a, _ = read_stream(tmp_path / "a")
    b, _ = read_stream(tmp_path / "b")
    assert np.array_equal(a, b)
    assert [get_tokenizer().decode(d.tolist()) for d in split_documents(a)] == texts


def test_output_is_identical_for_one_and_two_workers(tmp_path):
    jsonl = make_jsonl(tmp_path / "d.jsonl", 400)
    for workers in (1, 2):
        fineweb.main(["--input", str(jsonl), "--out", str(tmp_path / f"w{workers}"), "--shard-size", "5000",
                      "--workers", str(workers)])
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir()) and len(files) > 5
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_crash_mid_run_then_resume_is_byte_identical(tmp_path, monkeypatch):
    jsonl = make_jsonl(tmp_path / "d.jsonl", 300)
    source = Source("local", files=[str(jsonl)])
    build_shards(source, tmp_path / "whole", "c", shard_size=3001, val_tokens=5000)

    real_write = fineweb.write_shard
    calls = {"n": 0}

    def crashing_write(path, tokens):
        calls["n"] += 1
        if calls["n"] == 4:
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        return real_write(path, tokens)

    monkeypatch.setattr(fineweb, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards(source, tmp_path / "resumed", "c", shard_size=3001, val_tokens=5000)
    monkeypatch.setattr(fineweb, "write_shard", real_write)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert len(partial["shards"]) == 3 and not partial["complete"]
    build_shards(source, tmp_path / "resumed", "c", shard_size=3001, val_tokens=5000)
    assert_same_shards(tmp_path / "whole", tmp_path / "resumed")


def assert_same_shards(a, b):
    shards = sorted(p.name for p in Path(a).glob("*.npy"))
    assert shards == sorted(p.name for p in Path(b).glob("*.npy"))
    for name in shards:
        assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
    assert json.loads((Path(a) / "manifest.json").read_text()) == json.loads((Path(b) / "manifest.json").read_text())


def test_sigkilled_process_resumes_byte_identical(tmp_path):
    jsonl = make_jsonl(tmp_path / "d.jsonl", 6000)
    cmd = [sys.executable, "fineweb.py", "--input", str(jsonl), "--shard-size", "4000", "--workers", "1"]
    subprocess.run(cmd + ["--out", str(tmp_path / "whole")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text() or "{}").get("shards", [])) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"], "the run finished before it could be killed; make the input larger"
    subprocess.run(cmd + ["--out", str(tmp_path / "killed")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert_same_shards(tmp_path / "whole", tmp_path / "killed")


def test_rerun_of_a_finished_directory_changes_nothing_and_other_settings_are_refused(tmp_path, capsys):
    jsonl = make_jsonl(tmp_path / "d.jsonl", 20)
    out = tmp_path / "out"
    fineweb.main(["--input", str(jsonl), "--out", str(out), "--val-tokens", "50"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fineweb.main(["--input", str(jsonl), "--out", str(out), "--val-tokens", "50"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ValueError, match=r"other settings \(--val-tokens: 50 before, 60 now\); choose another"):
        fineweb.main(["--input", str(jsonl), "--out", str(out), "--val-tokens", "60"])


def test_a_failed_run_does_not_block_the_corrected_command(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("a few words, " * 20)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="nothing is left for train"):  # val takes everything: shards are written
        fineweb.main(["--input", str(small), "--out", str(out), "--val-tokens", "1000", "--shard-size", "10"])
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    fineweb.main(["--input", str(small), "--out", str(out), "--val-tokens", "20", "--shard-size", "10"])
    assert "--val-tokens: 1000 before, 20 now" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    fineweb.main(["--input", str(small), "--out", str(fresh), "--val-tokens", "20", "--shard-size", "10"])
    assert_same_shards(fresh, out)  # the corrected command's output, as if the failed run had never been


def test_an_error_starts_its_own_line_and_leaves_no_empty_directory(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' * 3 + '{"text": oops}\n')
    out = tmp_path / "new" / "out"
    result = subprocess.run([sys.executable, "fineweb.py", "--input", str(bad), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    error = [line for line in result.stderr.replace("\r", "\n").splitlines() if "fineweb.py: error" in line]
    assert len(error) == 1 and error[0].startswith("fineweb.py: error: ") and "bad.jsonl:4: bad JSON" in error[0]
    assert not (tmp_path / "new").exists()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand_inputs([str(tmp_path / "*.txt")])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        expand_inputs([str(tmp_path / "x.csv")])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: bad JSON"):
        build_shards(Source("local", files=[str(tmp_path / "bad.jsonl")]), tmp_path / "o1", val_tokens=1)
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"nofield.jsonl:1: no string field 'text'"):
        build_shards(Source("local", files=[str(tmp_path / "nofield.jsonl")]), tmp_path / "o2", val_tokens=1)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no documents"):
        build_shards(Source("local", files=[str(tmp_path / "empty.jsonl")]), tmp_path / "o3", val_tokens=1)
    (tmp_path / "small.txt").write_text("just a few words")
    with pytest.raises(ValueError, match="nothing is left for train"):
        build_shards(Source("local", files=[str(tmp_path / "small.txt")]), tmp_path / "o4", val_tokens=100)


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "fineweb.py", "--input", str(tmp_path / "none*.txt"), "--out",
                             str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no files match" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "fineweb.py", "--shard-size", "0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--shard-size" in result.stderr


def test_bundled_corpus_tokenizes_to_hundreds_of_thousands_of_tokens(tmp_path):
    manifest = build_shards(Source("local", files=expand_inputs([str(SHAKESPEARE)])), tmp_path, "s", workers=1)
    assert 200_000 < manifest["total_tokens"] < 500_000
    assert manifest["documents"] == 8
    splits = [s["split"] for s in manifest["shards"]]
    assert splits == ["val", "train"]


def test_progress_total_comes_from_the_stated_dataset_size():
    assert fineweb.expected_tokens(Source("hub", dataset="HuggingFaceFW/fineweb-edu", config="sample-10BT")) == 10**10
    assert fineweb.expected_tokens(Source("hub", dataset="HuggingFaceFW/fineweb-edu", config="default")) is None
    assert fineweb.expected_tokens(Source("local", files=["a.txt"])) is None
