import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import save_checkpoint  # noqa: E402
from cli import run_cli  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# torch.compile on the CPU (inductor) builds C++ kernels
HAS_CXX = bool(shutil.which("c++") or shutil.which("g++"))
TINY = dict(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)


def make_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=50257, seed=0):
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
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    path = tmp_path_factory.mktemp("tiny_ckpt") / "ckpt_000000.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": dict(TINY), "step": 0})
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
