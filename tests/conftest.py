"""What the tests share: the one tiny model shape, its fixtures (a checkpoint, a transformers directory, shards of
the bundled corpus), the tiny training command, log parsing, HellaSwag-format data and an in-process CLI runner."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import save_checkpoint  # noqa: E402
from cli import run_cli  # noqa: E402
from fineweb import Source, build_shards, expand_inputs  # noqa: E402
from model import GPT, PRESETS  # noqa: E402
from tokenizer import N_VOCAB  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped elsewhere); run them alone with -m cuda")
    share_the_cores()


def share_the_cores():
    """Under pytest-xdist (pytest.ini's -n), each worker and the commands it starts get their share of the cores:
    more threads than cores make torch's thread pools wait on each other, and the suite slower than one worker."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def sigint_as_a_terminal_sends_it():
    """The tests send SIGINT (a terminal's Ctrl-C) to themselves and to the commands they start: they must not
    depend on the disposition the test run inherited (`nohup ... &` and a script's `cmd &` start it with SIGINT
    ignored, which a command keeps). Python's own handler here; the commands started get the default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def default_dispositions():
    """preexec_fn of a command that must meet SIGINT and SIGHUP as a terminal's would, whatever the test run's."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


# torch.compile on the CPU (inductor) builds C++ kernels
HAS_CXX = bool(shutil.which("c++") or shutil.which("g++"))
# The one tiny shape of the tests: model.py's "tiny" preset with GPT-2's vocabulary (training pads it instead).
TINY = dict(**PRESETS["tiny"], vocab_size=N_VOCAB)


def shape_only(config):
    """A GPT on the meta device: its parameters have shapes but no storage, for counting (no seconds of init)."""
    with torch.device("meta"):
        return GPT(config)


def make_hf_model(n_layer=TINY["n_layer"], n_head=TINY["n_head"], n_embd=TINY["n_embd"],
                  n_positions=TINY["block_size"], vocab_size=N_VOCAB, seed=0):
    """A random transformers GPT2LMHeadModel with every weight (biases and LayerNorms too) non-trivial."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:  # zero biases / unit LayerNorms would hide mapping bugs
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_hf")
    make_hf_model().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint in this project's format holding a tiny random model."""
    from model import GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    path = tmp_path_factory.mktemp("tiny_ckpt") / "ckpt_000000.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": dict(TINY), "step": 0})
    return path


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """The bundled Shakespeare plays as shards (prefix 's'), about 290K train and 32K val tokens."""
    out = tmp_path_factory.mktemp("shakespeare")
    build_shards(Source("local", files=expand_inputs([str(ROOT / "assets" / "shakespeare")])), out, "s")
    return out


def tiny_args(shards, run_dir, *extra):
    """train_gpt2.py's flags for a 6-step run of the tiny model: 2 micro-batches of 4 x 32 per step, validation
    every 3 steps on 2 windows, a checkpoint every 3 steps; `extra` flags override."""
    return ["--model", "tiny", "--data-dir", str(shards), "--run-dir", str(run_dir), "--total-batch-size", "256",
            "--micro-batch-size", "4", "--seq-len", "32", "--max-lr", "1e-2", "--warmup-steps", "2",
            "--max-steps", "6", "--eval-interval", "3", "--val-tokens", "256", "--hellaswag-interval", "0",
            "--sample-interval", "0", "--checkpoint-interval", "3", "--keep-checkpoints", "0", "--device", "cpu",
            *extra]


def log_events(log_path, kind="train"):
    """{step: value} of one kind of event line ('{step} {kind} {value}') in a run's log.txt, the last one per step."""
    pattern = re.compile(rf"^(\d+) {kind} (\S+)$")
    return {int(m.group(1)): float(m.group(2)) for line in open(log_path) if (m := pattern.match(line.strip()))}


WORDS = "the a man woman dog runs jumps into water then slowly carefully ball kitchen opens door laughs".split()


def make_hellaswag_file(path, n, seed=0):
    """Lines in HellaSwag's exact format (all of its fields), random words as text."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
            ctx_a, ctx_b = words(rng.randint(3, 12)).capitalize() + ".", words(rng.randint(1, 4))
            f.write(json.dumps({
                "ind": i, "activity_label": "Testing", "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx_a + " " + ctx_b,
                "split": "val", "split_type": "indomain", "label": rng.randint(0, 3),
                "endings": [words(rng.randint(1, 10)) + "." for _ in range(4)], "source_id": f"test~{i}",
            }) + "\n")
    return path


def run_cli_main(main, argv, capsys):
    """Run a script's main in-process as its command line does; return (exit code, stdout, stderr)."""
    code = 0
    try:
        run_cli(lambda: main(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def torchrun(args, nproc=2, env=None, **popen):
    """train_gpt2.py under torchrun with `nproc` CPU ranks (gloo), one thread each; `env`: more variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    popen.setdefault("preexec_fn", default_dispositions)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                             "train_gpt2.py", *args], cwd=ROOT, env=env, text=True, **popen)


def wait_for(condition, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def children(pid):
    """The pids whose parent is pid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env[b"RANK"])
