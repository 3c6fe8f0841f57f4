"""--optimizer muon: torch.optim.Muon for the 2-D weights of the transformer blocks, the recipe's AdamW for the rest,
both on the LR schedule; it trains, resumes bitwise in one process and within fp32 noise across ranks, exports, and is
refused in one line where it cannot work."""

import shutil
import subprocess

import pytest
import torch

import train_gpt2
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import log_events, run_cli_main, tiny_args, torchrun
from model import GPT, GPTConfig
from optim import configure_muon
from train_gpt2 import parse_config, train

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
# 2 ranks against one process: fp32 summation-order noise in the gradients (~1e-7, see test_sharded.py) reaches
# Muon's Newton-Schulz steps, which torch runs in bf16 (8 bits of mantissa): a rounding there may go the other way,
# so the losses drift apart faster than AdamW's do (1.0e-5 after 6 steps, measured; AdamW's stay within 1e-5).
MUON_NOISE = 5e-5
MUON = ["--optimizer", "muon", "--muon-lr", "3e-3"]


def test_the_block_matrices_go_to_muon_and_everything_else_to_adamw():
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16))
    adamw, muon = configure_muon(model, 0.1, 6e-4, 3e-3, 0.9, "cpu", log=None)
    names = {p: name for name, p in model.named_parameters()}
    to_muon = sorted(names[p] for group in muon.param_groups for p in group["params"])
    assert to_muon == sorted(f"transformer.h.{i}.{part}.weight" for i in range(2)
                             for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    to_adamw = {names[p] for group in adamw.param_groups for p in group["params"]}
    assert to_adamw | set(to_muon) == set(names.values()) and not to_adamw & set(to_muon)
    assert "transformer.wte.weight" in to_adamw and "transformer.wpe.weight" in to_adamw  # the tied head too
    decayed = {names[p] for p in adamw.param_groups[0]["params"]}
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"}  # the recipe's decay groups
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw" and muon.param_groups[0]["momentum"] == 0.9


def test_muon_trains_on_the_schedule_and_resumes_bitwise(shards, tmp_path, capsys):
    whole = train(parse_config(tiny_args(shards, tmp_path / "whole", *MUON)))
    adamw = train(parse_config(tiny_args(shards, tmp_path / "adamw")))
    assert whole["losses"][-1] < whole["losses"][0] - 1.0 and whole["losses"] != adamw["losses"]
    saved = load_checkpoint(tmp_path / "whole" / "ckpt_000006.pt")
    assert saved["train_config"]["optimizer"] == "muon" and saved["muon"]["state"]  # Muon's momentum buffers
    assert saved["muon"]["param_groups"][0]["lr"] == pytest.approx(3e-3 * train_gpt2.get_lr(5, 1e-2, 1e-3, 2, 6) / 1e-2)
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    (tmp_path / "split" / "ckpt_000006.pt").unlink()
    resumed = train(parse_config(tiny_args(shards, tmp_path / "split", *MUON)))
    assert resumed["losses"] == whole["losses"][3:]  # bitwise: the same floats
    again = load_checkpoint(tmp_path / "split" / "ckpt_000006.pt")
    assert all(torch.equal(again["model"][k], saved["model"][k]) for k in saved["model"])
    for a, b in zip(again["muon"]["state"].values(), saved["muon"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # --optimizer is guarded on resume; Muon's own settings are not
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "split", "--max-steps", "8"), capsys)
    assert code == 1 and "--optimizer 'muon' -> 'adamw'" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path / "split", "--max-steps", "8", *MUON,
                                                             "--muon-momentum", "0.9"), capsys)
    assert code == 0 and "--muon-momentum 0.95 -> 0.9" in out, err
    # and the weights export as any checkpoint's do
    from export_hf import export_hf
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(export_hf(tmp_path / "split", tmp_path / "hf")).eval()
    ours = model_from_checkpoint(load_checkpoint(tmp_path / "split" / "ckpt_000008.pt")).eval()
    x = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0][..., :50257]).abs().max() < 1e-4


def test_two_ranks_of_muon_train_as_one_process(shards, tmp_path):
    """DDP all-reduces the gradients, so every rank orthogonalizes the same update: the losses of one process within
    the noise of MUON_NOISE."""
    train(parse_config(tiny_args(shards, tmp_path / "one", *MUON)))
    proc = torchrun(tiny_args(shards, tmp_path / "two", *MUON), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    one, two = log_events(tmp_path / "one" / "log.txt"), log_events(tmp_path / "two" / "log.txt")
    assert sorted(one) == sorted(two) == list(range(6)) and max(abs(one[s] - two[s]) for s in one) <= MUON_NOISE


def test_where_muon_cannot_work_it_is_refused_in_one_line(shards, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, *MUON, "--parallel", "fsdp"), capsys)
    assert code == 2 and "--optimizer muon with --parallel fsdp" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delattr(torch.optim, "Muon")  # a torch before 2.9
    code, _, err = run_cli_main(train_gpt2.main, tiny_args(shards, tmp_path, *MUON), capsys)
    assert code == 2 and "--optimizer muon needs torch.optim.Muon (torch >= 2.9)" in err, err
    assert not (tmp_path / "log.txt").exists()
