"""HellaSwag harness style against the real lm-evaluation-harness (a test dependency, requirements-test.txt), offline:
a tiny model exported by export_hf.py, a synthetic HellaSwag file in the Hugging Face export's format (string labels,
WikiHow's bracketed artifacts), the harness's own hellaswag preprocessing as a local task. Our harness-style scores
equal the harness's on every example: its log-likelihoods, its choices, its aggregate."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

import export_hf
import hellaswag
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT, WORDS
from tokenizer import get_tokenizer

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a test dependency: requirements-test.txt")

TASK = """task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
# the harness's own HellaSwag preprocessing, not a copy of it
UTILS = "from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n"


def write_hf_hellaswag(path, n, seed=0):
    """Lines as the Hugging Face export of HellaSwag has them: every field, labels as strings, and WikiHow's
    artifacts ("[header]", "[title]", "[step]") in some contexts and endings."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(path, "w") as f:
        for i in range(n):
            wikihow = i % 3 == 0
            ctx_a = (f"[header] How to {words(2)} [title] {words(3).capitalize()}." if wikihow
                     else words(rng.randint(3, 10)).capitalize() + ".")
            ctx_b = words(rng.randint(1, 4))
            endings = [(f"[step] {words(rng.randint(1, 6))}." if wikihow and j % 2 else words(rng.randint(1, 8)) + ".")
                       for j in range(4)]
            f.write(json.dumps({"ind": i, "activity_label": "Testing things" if wikihow else "Running",
                                "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx_a + " " + ctx_b, "endings": endings,
                                "source_id": f"test~{i}", "split": "val", "split_type": "indomain",
                                "label": str(rng.randint(0, 3))}) + "\n")
    return path


def local_task(tmp_path):
    """The synthetic file and a task directory holding the harness's hellaswag task over it."""
    data = write_hf_hellaswag(tmp_path / "hellaswag_val.jsonl", 40)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hellaswag_local.yaml").write_text(TASK.format(data=data))
    (tasks / "utils.py").write_text(UTILS)
    return data, tasks


def offline(tmp_path):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds"),
            "TOKENIZERS_PARALLELISM": "false"}


def test_harness_style_equals_lm_evaluation_harness_example_for_example(tiny_checkpoint, tmp_path):
    data, tasks = local_task(tmp_path)
    model_dir = export_hf.export_hf(tiny_checkpoint, tmp_path / "hf")
    env = offline(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
         "--tasks", "hellaswag_local", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "8",
         "--log_samples", "--output_path", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [json.loads(line) for path in (tmp_path / "out").rglob("samples_hellaswag_local_*.jsonl")
               for line in path.read_text().splitlines()]
    samples.sort(key=lambda sample: sample["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(40))

    examples = hellaswag.load_examples(path=str(data))
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint)).eval()
    judged = hellaswag.judge_examples(model, examples, torch.device("cpu"), batch_size=7)
    requests = [hellaswag.harness_rows(example) for example in examples]
    with torch.no_grad():
        ours = hellaswag.ending_log_likelihoods(model, requests, model.config.block_size, torch.device("cpu"))
    for sample, judgement, lls in zip(samples, judged, ours.tolist()):
        theirs = [response[0] for response in sample["filtered_resps"]]  # (log-likelihood, is_greedy) per ending
        assert max(abs(a - float(b)) for a, b in zip(lls, theirs)) < 1e-4, sample["doc_id"]  # fp32, other batching
        assert (judgement.harness_acc, judgement.harness_acc_norm) == (bool(sample["acc"]), bool(sample["acc_norm"]))
    report = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["hellaswag_local"]
    counts = hellaswag.score_examples(model, examples, torch.device("cpu"))
    assert report["acc,none"] == pytest.approx(counts["harness_acc_correct"] / 40)
    assert report["acc_norm,none"] == pytest.approx(counts["harness_acc_norm_correct"] / 40)


def test_harness_py_runs_the_repositorys_example_task_as_the_readme_says(tiny_checkpoint, tmp_path):
    """harness.py exports the checkpoint and runs lm_eval on the example task shipped in assets/harness/ (the
    README's command): the harness's log-likelihood of every choice is our model's own, computed here."""
    result = subprocess.run([sys.executable, "harness.py", "--init", str(tiny_checkpoint), "--tasks",
                             "shakespeare_next_line", "--include-path", "assets/harness", "--limit", "12",
                             "--output-path", str(tmp_path / "out")],
                            cwd=ROOT, env=offline(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shakespeare_next_line" in result.stdout and "acc_norm" in result.stdout  # the harness's own table
    samples = sorted((json.loads(line) for path in (tmp_path / "out").rglob("samples_shakespeare_next_line_*.jsonl")
                      for line in path.read_text().splitlines()), key=lambda sample: sample["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(12))
    import datasets

    sys.path.insert(0, str(ROOT / "assets" / "harness"))
    from shakespeare_next_line import process_docs

    docs = process_docs(datasets.load_dataset("text", data_files={"test": str(ROOT / "assets" / "shakespeare" /
                                                                               "hamlet.txt")})["test"])
    enc, model = get_tokenizer(), model_from_checkpoint(load_checkpoint(tiny_checkpoint)).eval()
    for sample, doc in zip(samples, docs):
        context = enc.encode(doc["context"])  # then a newline (the task's target delimiter) and the choice
        continuations = [enc.encode(doc["context"] + "\n" + choice)[len(context):] for choice in doc["choices"]]
        with torch.no_grad():
            ours = hellaswag.ending_log_likelihoods(model, [(context, continuations, [])], 64, torch.device("cpu"))
        theirs = [float(response[0]) for response in sample["filtered_resps"]]
        assert max(abs(a - b) for a, b in zip(ours[0].tolist(), theirs)) < 1e-4, sample["doc_id"]
        assert int(sample["target"]) == doc["label"]


def test_harness_py_names_an_unknown_task_in_one_line_before_it_exports_anything(tiny_checkpoint, tmp_path):
    result = subprocess.run([sys.executable, "harness.py", "--init", str(tiny_checkpoint), "--tasks",
                             "hellaswag,hellaswagg"], cwd=ROOT, env=offline(tmp_path), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1 and "exported" not in result.stdout, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "harness.py: error: --tasks: lm-evaluation-harness has no task 'hellaswagg'; did you mean hellaswag"), lines


def test_a_failure_of_lm_eval_is_one_line_naming_its_error(capfd):
    """What lm_eval prints before its traceback is shown as it comes; the traceback becomes the one line of its
    error (a stand-in command that fails as lm_eval does, with a task whose data file is not there)."""
    from cli import Exit
    from harness import run_harness

    failing = [sys.executable, "-c", "import sys; print('loading tasks', file=sys.stderr); "
                                     "open('/no/such/hellaswag_val.jsonl')"]
    with pytest.raises(Exit) as e:
        run_harness(failing)
    assert e.value.code == 1 and str(e.value) == (
        "error: lm_eval failed (exit code 1): FileNotFoundError: [Errno 2] No such file or directory: "
        "'/no/such/hellaswag_val.jsonl'")
    err = capfd.readouterr().err
    assert "loading tasks" in err and "Traceback" not in err
    run_harness([sys.executable, "-c", "print('fine')"])  # a success says nothing of its own
