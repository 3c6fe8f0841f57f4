"""sample.py end to end and its one-line errors."""

import pickle
import subprocess
import sys

import pytest
import torch

import sample
from checkpoint import load_checkpoint, load_model, model_from_checkpoint
from conftest import ROOT, run_cli_main


def run_main(argv, capsys):
    return run_cli_main(sample.main, argv, capsys)


def test_cli_samples_from_a_hf_directory_offline(tiny_hf_dir):
    result = subprocess.run(
        [sys.executable, "sample.py", "--init", str(tiny_hf_dir), "-n", "3", "-m", "5", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("sample ")]
    assert [line.split(":")[0] for line in lines] == ["sample 1", "sample 2", "sample 3"]
    assert all("Hello, I'm a language model," in line for line in lines)


def test_cli_samples_from_our_checkpoint_and_is_seeded(tiny_checkpoint, capsys):
    argv = ["--init", str(tiny_checkpoint), "-n", "2", "-m", "8", "--seed", "3", "--device", "cpu", "-p", ""]
    code, first, _ = run_main(argv, capsys)
    assert code == 0
    assert first.count("sample ") == 2 and first.startswith("sample 1: <|endoftext|>")
    assert run_main(argv, capsys)[1] == first
    assert run_main(argv + ["--no-cache"], capsys)[1] == first  # the cache does not change the samples


def test_greedy_samples_equal_transformers_text(tiny_hf_dir, capsys):
    from transformers import GPT2LMHeadModel

    from tokenizer import get_tokenizer

    enc = get_tokenizer()
    # fp32 on the CPU, as transformers runs below: greedy text compared token for token
    code, out, _ = run_main(["--init", str(tiny_hf_dir), "-n", "1", "-m", "12", "--temperature", "0", "--device", "cpu",
                             "--dtype", "float32"], capsys)
    prompt = torch.tensor([enc.encode("Hello, I'm a language model,")])
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir)
    ids = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                      pad_token_id=0, eos_token_id=None)
    assert out.strip() == "sample 1: " + enc.decode(ids[0].tolist())


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--init", "missing/ckpt.pt"], 1, "no such checkpoint"),
        (["--init", "gpt-7"], 1, "unknown model 'gpt-7'"),
        (["-n", "0"], 2, "--num-samples"),
        (["-m", "-3"], 2, "--max-new-tokens"),
        (["--top-k", "0"], 2, "--top-k"),
        (["--temperature", "-1"], 2, "--temperature"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], 2, "argument --device"),
        (["--dtype", "fp8"], 2, "argument --dtype: invalid choice"),
        (["--device", "cpu", "--dtype", "float16"], 2, "--dtype float16 on cpu: float16 needs a GPU"),
    ],
)
def test_bad_inputs_give_one_line_errors(argv, code, message, capsys):
    got, _, err = run_main(argv, capsys)
    assert got == code
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_top_k_larger_than_vocab_and_corrupt_checkpoint(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run_main(["--init", str(tiny_checkpoint), "--top-k", "60000", "--device", "cpu"], capsys)
    assert code == 1 and "larger than the vocabulary" in err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    code, _, err = run_main(["--init", str(broken), "--device", "cpu"], capsys)
    assert code == 1 and "broken.pt is damaged" in err and len(err.strip().splitlines()) == 1


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_checkpoints_are_loaded_without_unpickling_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Exploit()}, path)
    with pytest.raises(ValueError, match="holds Python objects other than tensors"):
        load_checkpoint(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as f:
        pickle.dump({"model": 1}, f)
    with pytest.raises(ValueError):
        load_model(str(plain))


def test_checkpoint_with_wrong_config_is_a_clear_error(tiny_checkpoint):
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["n_embd"] = 32
    with pytest.raises(ValueError, match="do not fit"):
        model_from_checkpoint(state)
    state["config"]["bogus"] = 1
    with pytest.raises(ValueError, match="bad model config"):
        model_from_checkpoint(state)


def test_one_sample_streams_piece_by_piece_and_adds_up_to_the_whole_text(tiny_checkpoint):
    model = load_model(str(tiny_checkpoint))
    pieces = []
    texts = sample.sample_texts(model, "Hello", 1, 24, torch.device("cpu"), seed=5, write=pieces.append)
    assert len(pieces) >= 12  # the prompt, then most new tokens as they come (a split character waits)
    assert "".join(pieces) == texts[0] == sample.sample_texts(model, "Hello", 1, 24, torch.device("cpu"), seed=5)[0]


def test_the_text_stream_holds_a_character_until_its_last_byte():
    from tokenizer import get_tokenizer

    enc = get_tokenizer()
    text = "snow ☃ and 🤗 and ünïcödé"
    ids = enc.encode(text)
    assert any(not enc.decode_bytes([i]).decode("utf-8", errors="ignore") for i in ids)  # some split characters
    pieces = []
    stream = sample.TextStream(pieces.append)
    for i in ids:
        stream.feed([i])
    stream.close()
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_init_takes_a_run_directory_and_defaults_to_the_newest_checkpoint_of_log(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch, capsys):
    run = tmp_path / "log"
    run.mkdir()
    (run / "ckpt_000005.pt").write_bytes(b"not a checkpoint: the newest one must be taken")
    (run / "ckpt_000010.pt").write_bytes(tiny_checkpoint.read_bytes())
    argv = ["-n", "1", "-m", "6", "--seed", "2", "--device", "cpu"]
    code, from_dir, err = run_main(["--init", str(run), *argv], capsys)
    assert code == 0, err
    assert from_dir == run_main(["--init", str(run / "ckpt_000010.pt"), *argv], capsys)[1]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv, capsys)
    assert out == from_dir and err.strip() == "using log/ckpt_000010.pt"  # which checkpoint, on stderr
    monkeypatch.chdir(run)  # no log/ here
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "no checkpoint in log/" in err and "--init" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_decodes_from_weights_in_the_compute_dtype(tiny_checkpoint, monkeypatch, capsys, dtype):
    """--dtype bfloat16: the weights themselves are bf16 while decoding (not fp32 cast again at every step under
    autocast); float32 decodes from the checkpoint's weights, the same greedy tokens as generate on them."""
    from model import GPT

    seen = []
    generate = GPT.generate

    def recording(self, idx, *args, **kwargs):
        seen.append({p.dtype for p in self.parameters()})
        return generate(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", recording)
    name = str(dtype).split(".")[-1]
    code, out, err = run_main(["--init", str(tiny_checkpoint), "-n", "2", "-m", "8", "--temperature", "0",
                               "--device", "cpu", "--dtype", name, "-p", "Hello"], capsys)
    assert code == 0, err
    assert seen == [{dtype}]
    if dtype == torch.float32:
        expected = sample.sample_texts(model_from_checkpoint(load_checkpoint(tiny_checkpoint)), "Hello", 2, 8,
                                       torch.device("cpu"), temperature=0)
        assert out.splitlines() == [f"sample {i}: {text}" for i, text in enumerate(expected, start=1)]


@pytest.mark.parametrize("temperature,top_k,top_p,penalty", [
    (1.0, None, 0.9, 1.0), (0.7, 50, 0.5, 1.3), (1.3, 200, 0.95, 0.8), (1.0, None, 1.0, 1.5), (0.0, None, 1.0, 1.2),
])
def test_top_p_and_the_repetition_penalty_are_transformers_own_on_the_same_logits(temperature, top_k, top_p,
                                                                                penalty):
    """Our filtered logits against transformers' own logits processors, in the order its generate applies them
    (repetition penalty, then temperature, top-k, top-p): the same tokens left out, the same values for the rest
    (fp32, ~1e-6 of rounding in the division by the temperature)."""
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    from generate import filter_logits

    torch.manual_seed(0)
    logits = 3 * torch.randn(6, 500)
    previous = torch.randint(0, 500, (6, 40))  # the prompt and the tokens generated so far
    ours = filter_logits(logits, temperature, top_k, top_p, penalty, previous)
    theirs = logits.clone()
    if penalty != 1.0:
        theirs = RepetitionPenaltyLogitsProcessor(penalty)(previous, theirs)
    if temperature:
        theirs = TemperatureLogitsWarper(temperature)(previous, theirs)
        if top_k:
            theirs = TopKLogitsWarper(top_k)(previous, theirs)
        if top_p < 1.0:
            theirs = TopPLogitsWarper(top_p)(previous, theirs)
    left_out = torch.isinf(theirs)
    assert torch.equal(torch.isinf(ours), left_out)
    assert (top_p == 1.0 and not top_k) or left_out.any()
    assert torch.allclose(ours[~left_out], theirs[~left_out], atol=1e-6, rtol=0)


def test_top_p_samples_only_within_the_nucleus_and_the_flags_are_checked(tiny_checkpoint, capsys):
    from generate import sample_next

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    draws = sample_next(logits, 1.0, None, torch.Generator().manual_seed(0), top_p=0.8)
    probs = torch.softmax(logits[0], dim=0)  # 0.64, 0.24, 0.09, ...: the first two hold 0.88 >= 0.8
    assert set(draws.flatten().tolist()) == {0, 1}
    share = (draws == 0).double().mean().item()
    assert abs(share - probs[0] / (probs[0] + probs[1])) < 0.03
    args = ["--init", str(tiny_checkpoint), "-n", "2", "-m", "6", "--device", "cpu"]
    code, nucleus, err = run_main([*args, "--top-p", "0.5", "--repetition-penalty", "1.3"], capsys)
    assert code == 0 and nucleus == run_main([*args, "--top-p", "0.5", "--repetition-penalty", "1.3"], capsys)[1]
    for flag, value in (("--top-p", "0"), ("--top-p", "1.5"), ("--repetition-penalty", "0")):
        code, _, err = run_main([*args, flag, value], capsys)
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
