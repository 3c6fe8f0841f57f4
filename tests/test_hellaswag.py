"""HellaSwag scoring against a float64 example-by-example reference; rank splits; the CLI; malformed input."""

import json

import pytest
import torch

import hellaswag
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import make_hellaswag_file, run_cli_main
from hellaswag import load_examples, score_examples
from tokenizer import get_tokenizer


def reference_counts(model, examples):
    """Independent reference: one example and one ending at a time, unpadded, in float64."""
    enc = get_tokenizer()
    model = model.double()
    acc = acc_norm = 0
    for ex in examples:
        ctx = enc.encode(ex["ctx"])
        sums, means = [], []
        for ending in ex["endings"]:
            end = enc.encode(" " + ending)
            tokens = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = torch.log_softmax(model(tokens)[0].double()[0], dim=-1)
            nll = [-logp[len(ctx) + j - 1, end[j]].item() for j in range(len(end))]
            sums.append(sum(nll))
            means.append(sum(nll) / len(nll))
        acc += min(range(4), key=sums.__getitem__) == ex["label"]
        acc_norm += min(range(4), key=means.__getitem__) == ex["label"]
    model.float()
    return acc, acc_norm


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return load_examples(path=str(make_hellaswag_file(tmp_path_factory.mktemp("hs") / "hs.jsonl", 40)))


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return model_from_checkpoint(load_checkpoint(tiny_checkpoint)).eval()


def test_scores_equal_float64_reference(model, examples):
    counts = score_examples(model, examples, torch.device("cpu"), batch_size=7)
    assert counts["total"] == 40
    assert (counts["acc_correct"], counts["acc_norm_correct"]) == reference_counts(model, examples)


def test_rank_split_summed_equals_single_process(model, examples):
    whole = score_examples(model, examples, torch.device("cpu"))
    world = 3
    parts = [score_examples(model, examples[r::world], torch.device("cpu"), batch_size=5) for r in range(world)]
    assert {k: sum(p[k] for p in parts) for k in whole} == whole


def test_scores_under_bf16_autocast_stay_close(model, examples):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        counts = score_examples(model, examples, torch.device("cpu"))
    exact = score_examples(model, examples, torch.device("cpu"))
    # bf16 rounds logits at ~1e-2 relative; only near-ties can flip
    assert abs(counts["acc_norm_correct"] - exact["acc_norm_correct"]) <= 4


def test_cli_end_to_end(tiny_checkpoint, tmp_path, capsys):
    data = make_hellaswag_file(tmp_path / "hs.jsonl", 12)
    hellaswag.main(["-m", str(tiny_checkpoint), "--data", str(data), "--limit", "10", "--device", "cpu"])
    out = capsys.readouterr().out
    acc, acc_norm = reference_counts(model_from_checkpoint(load_checkpoint(tiny_checkpoint)),
                                     load_examples(path=str(data), limit=10))
    assert "(10 examples)" in out and f"({acc}/10)" in out and f"acc_norm {acc_norm / 10:.4f} ({acc_norm}/10)" in out
    completion, harness = [line for line in out.splitlines() if "style" in line]
    assert completion.split()[:2] == ["completion", "style"] and harness.split()[:2] == ["harness", "style"]
    assert "OpenAI GPT-2 124M: acc 0.2859, acc_norm 0.2955" in completion  # each beside its own kind
    assert "OpenAI GPT-2 124M: acc 0.2892, acc_norm 0.3114" in harness


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "bad JSON"),
        ('{"endings": ["a", "b", "c", "d"], "label": 1}', "missing field 'ctx'"),
        ('{"ctx": "x", "endings": ["a", "b", "c"], "label": 1}', "exactly 4"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}', "0..3"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": "one"}', "0..3"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": ""}', "test split hides its labels"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"]}', "test split hides its labels"),
    ],
)
def test_malformed_input_names_the_line(tmp_path, line, message):
    good = '{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 0}'
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{message}"):
        load_examples(path=str(path))


def test_string_labels_of_the_hugging_face_export_are_read(tmp_path):
    # Rowan/hellaswag on the Hugging Face hub stores the label as a string ("3"); the GitHub jsonl as an integer.
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": "3"}) + "\n")
    assert load_examples(path=str(path))[0]["label"] == 3


def test_the_test_split_is_refused_up_front(capsys):
    code, _, err = run_cli_main(hellaswag.main, ["-m", "no-such-model", "--split", "test"], capsys)
    assert code == 2 and "labels" in err and "use val" in err
    with pytest.raises(ValueError, match="hides its labels"):
        load_examples("test")


def test_offline_without_a_file_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache" / "hellaswag"
    monkeypatch.setenv("HELLASWAG_CACHE", str(cache))

    def offline(*args, **kwargs):
        raise hellaswag.urllib.error.URLError("no network")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    with pytest.raises(OSError, match=r"no network.*put hellaswag_val.jsonl in .*cache"):
        load_examples("val")
    code, _, err = run_cli_main(hellaswag.main, ["-m", "gpt2"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--data" in err
    assert not (tmp_path / "cache").exists()  # nothing created for a download that could not start


def test_a_failed_download_leaves_no_directory(tmp_path, monkeypatch):
    cache = tmp_path / "new" / "hellaswag"
    monkeypatch.setenv("HELLASWAG_CACHE", str(cache))
    monkeypatch.setattr(hellaswag, "unreachable", lambda url: None)  # the probe answers, the download then fails

    def broken(*args, **kwargs):
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", broken)
    with pytest.raises(OSError, match="reset by peer"):
        load_examples("val")
    assert not (tmp_path / "new").exists()


def test_cached_file_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path))
    make_hellaswag_file(tmp_path / "hellaswag_val.jsonl", 3)
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    assert len(load_examples("val")) == 3
