"""bench.py runs on CPU at CI size and its MFU arithmetic matches a hand count."""

import json

import pytest
import torch

import bench
from conftest import shape_only
from model import GPT, GPTConfig


def test_flops_per_token_of_124m_by_hand():
    # N without the position embedding: 124,475,904 - 1024 * 768; attention: 12 * n_layer * n_embd * T
    expected = 6 * (124_475_904 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert shape_only(GPTConfig(vocab_size=50304)).flops_per_token(1024) == expected == 855_383_040


def test_train_benchmark_json_with_transformers_beside(capsys):
    bench.main(["train", "--model", "tiny", "-B", "2", "-T", "16", "--warmup", "0", "--repeats", "1",
                "--compare-hf", "--peak-flops", "1e12", "--device", "cpu", "--json"])
    report = json.loads(capsys.readouterr().out)
    ours, hf = report["rows"]
    assert (ours["impl"], hf["impl"]) == ("ours", "transformers")
    assert ours["tokens_per_s"] == pytest.approx(2 * 16 / (ours["ms_per_step"] / 1000))
    flops = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, vocab_size=50304)).flops_per_token(16)
    assert ours["mfu_percent"] == pytest.approx(100 * flops * ours["tokens_per_s"] / 1e12)
    ratio = report["ratios"]["training tokens/s, ours / transformers"]
    assert ratio == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"])


def test_generate_benchmark_prints_every_path(capsys):
    bench.main(["generate", "--model", "tiny", "--tokens", "8", "--batch", "1", "2", "--repeats", "1",
                "--compare-hf", "--device", "cpu"])
    out = capsys.readouterr().out
    for text in ("ours, KV cache", "ours, cache-free", "transformers generate", "batch 2: KV cache / cache-free"):
        assert text in out


def test_data_benchmark_runs_on_the_bundled_corpus(capsys):
    bench.main(["data", "--copies", "1", "--workers", "1", "--batch-size", "2", "--seq-len", "64"])
    out = capsys.readouterr().out
    assert "single-thread encode_ordinary" in out and "ms_per_batch" in out and "pipeline / single-thread" in out


def test_sweep_times_every_lever_interleaved_with_the_same_loss(capsys):
    bench.main(["train", "--sweep", "--model", "tiny", "-B", "2", "-T", "16", "--warmup", "1", "--repeats", "2",
                "--device", "cpu", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = [row["impl"] for row in report["rows"]]
    assert names == ["as given (today's defaults)", "loss in chunks of 4", "loss in chunks of 4, 2x micro-batch",
                     "attention flash", "attention math"]
    assert [row["B"] for row in report["rows"]] == [2, 2, 4, 2, 2]
    for row in report["rows"]:  # fp32: the levers change summation order only
        assert abs(row["loss_vs_first"]) < 1e-5 and row["tokens_per_s"] > 0
    assert set(report["ratios"]) == {f"{name} / first" for name in names[1:]}


def test_contenders_take_turns_in_rotating_order():
    """Each round times every contender once, and each round's order is the previous one's rotated by one (so each
    contender leads one round in every len(contenders)): machine drift reaches them all alike."""
    order = []
    contenders = [bench.Contender(name, 1, lambda name=name: order.append(name), 0.0, 0.0, None, None)
                  for name in "abcd"]
    bench.time_interleaved(contenders, 8, torch.device("cpu"))
    rounds = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    rotations = [(earlier[1:] + earlier[:1], earlier[-1:] + earlier[:-1]) for earlier in rounds]  # either way
    assert all(later in rotated for rotated, later in zip(rotations, rounds[1:]))
    assert all(len(c.times) == 8 for c in contenders)


def test_a_graph_compiled_after_the_first_step_is_a_fault_not_a_figure():
    """A step whose input shape changes every call recompiles (dynamic=False, as bench compiles): counted per
    contender, and its row has no speed."""
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    sizes = iter(range(1, 100))
    fixed = bench.Contender("fixed", 1, lambda: double(torch.ones(7)), 0.0, 1.0, 1, None)
    changing = bench.Contender("changing", 1, lambda: double(torch.ones(next(sizes))), 0.0, 1.0, 1, None)
    double(torch.ones(7))  # the fixed contender's first step
    bench.time_interleaved([fixed, changing], 3, torch.device("cpu"))
    assert (fixed.recompiles, changing.recompiles) == (0, 3)
    args = bench.parse_args(["train", "--compile", "--device", "cpu"])
    assert bench.train_row(fixed, 16, 1000, None, args)["tokens_per_s"] > 0
    row = bench.train_row(changing, 16, 1000, None, args)
    assert row["tokens_per_s"] is None and row["mfu_percent"] is None and row["recompiles"] == 3


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = {0: 10.0, 100: 8.0, 200: 6.0, 300: 6.0}
    assert bench.tokens_to_reach(curve, 7.0) == 150  # halfway from 8 to 6
    assert bench.tokens_to_reach(curve, 8.0) == 100
    assert bench.tokens_to_reach(curve, 5.9) is None


def test_optimizers_benchmark_runs_muon_with_adamws_best_learning_rate(shards, tmp_path, capsys):
    """The sweep picks each optimizer's lowest final val loss; Muon's run is the one train_gpt2.py gives with
    AdamW's best --max-lr beside its --muon-lr (the same val loss, run here on its own)."""
    from train_gpt2 import parse_config, train

    common = ["--preset", "quickstart", "--model", "tiny", "--max-steps", "6"]
    train_args = ["--data-dir", str(shards), "--total-batch-size", "256", "--micro-batch-size", "4", "--seq-len", "32",
                  "--warmup-steps", "2", "--val-tokens", "256"]
    bench.main(["optimizers", *common, "--train-args", " ".join(train_args), "--eval-interval", "2", "--seeds", "5",
                "--adamw-lr", "1e-3", "3e-3", "--muon-lr", "2e-3", "--json"])
    adamw, muon = json.loads(capsys.readouterr().out)["rows"]
    assert (adamw["optimizer"], muon["optimizer"], muon["lr"]) == ("adamw", "muon", 2e-3)
    flags = [*common, *train_args, "--seed", "5", "--eval-interval", "2", "--sample-interval", "0",
             "--checkpoint-interval", "0", "--no-tensorboard"]
    vals = {lr: train(parse_config([*flags, "--run-dir", str(tmp_path / f"adamw{lr}"), "--max-lr", lr]))["val_loss"]
            for lr in ("1e-3", "3e-3")}
    assert adamw["lr"] == float(min(vals, key=vals.get)) and adamw["val_mean"] == min(vals.values())
    alone = train(parse_config([*flags, "--run-dir", str(tmp_path / "muon"), "--optimizer", "muon",
                                "--max-lr", str(adamw["lr"]), "--muon-lr", "2e-3"]))
    assert muon["val_mean"] == alone["val_loss"]  # one process, same seed: the same run, bit for bit
