"""export_hf.py: our checkpoint -> transformers directory -> the same logits, and back through from_pretrained."""

import dataclasses
import subprocess
import sys

import pytest
import torch

import export_hf
from checkpoint import save_checkpoint
from conftest import ROOT, run_cli_main
from model import GPT, GPTConfig
from tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def padded_checkpoint(tmp_path_factory):
    """A trained-looking checkpoint: vocabulary padded to 50,304 rows, non-zero biases and LayerNorms."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=48, vocab_size=50304, n_layer=2, n_head=4, n_embd=64)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "ckpt_000010.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 10})
    return path, model.eval()


@pytest.fixture(scope="module")
def exported(padded_checkpoint, tmp_path_factory):
    return export_hf.export_hf(padded_checkpoint[0], tmp_path_factory.mktemp("export") / "hf")


def test_round_trip_through_transformers_gives_the_same_logits(padded_checkpoint, exported):
    from transformers import GPT2LMHeadModel

    ours, out = padded_checkpoint[1], exported
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.vocab_size == 50257 and hf.lm_head.weight.shape == (50257, 64)
    x = torch.randint(0, 50257, (3, 48))
    with torch.no_grad():
        expected = ours(x)[0][..., :50257]
        got = hf(x).logits
    assert (got - expected).abs().max().item() <= 1e-4  # fp32: summation order only
    back = GPT.from_pretrained(str(out)).eval()  # and our loader reads the export
    with torch.no_grad():
        assert (back(x)[0] - expected).abs().max().item() <= 1e-4


def test_exported_tokenizer_equals_ours(exported):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(exported)
    text = (ROOT / "assets" / "shakespeare" / "tempest.txt").read_text()[:20000]
    text += " Hello, I'm a language model,\n\n  tabs\tand ünïcödé ☃ 🤗 1234567 don't"
    assert hf_tok.encode(text) == get_tokenizer().encode_ordinary(text)
    assert hf_tok.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert hf_tok.convert_tokens_to_ids("<|endoftext|>") == 50256


def test_cli_and_its_errors(padded_checkpoint, tmp_path, capsys):
    ok = subprocess.run([sys.executable, "export_hf.py", str(padded_checkpoint[0]), str(tmp_path / "hf")],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "wrote" in ok.stdout, ok.stderr
    code, _, err = run_cli_main(export_hf.main, [str(tmp_path / "missing.pt"), str(tmp_path / "x")], capsys)
    assert code == 1 and "missing.pt" in err and len(err.strip().splitlines()) == 1


def test_the_readme_pipeline_line_runs_on_a_model_with_a_short_context(padded_checkpoint, tmp_path):
    # transformers' text-generation pipeline asks for 256 new tokens unless the generation config says otherwise:
    # past this model's 48 positions, that was an IndexError. The line is taken from the docs as written.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # where the pipeline line is shown
    line = next(line for page in pages for line in page.read_text().splitlines()
                if "pipeline('text-generation'" in line)
    command = line.strip().removeprefix("python ")
    assert "'hf/my-gpt2'" in command
    export_hf.export_hf(padded_checkpoint[0], tmp_path / "hf" / "my-gpt2")
    result = subprocess.run(f"{sys.executable} {command}", shell=True, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("{'generated_text': 'Hello,")
