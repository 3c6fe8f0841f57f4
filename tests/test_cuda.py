"""The GPU paths, where a CUDA GPU is: CUDA-graph decoding, compiled bf16 training, fp16 with the gradient scaler and
the chunked loss, each attention kernel, the CUDA-graph refusal, bench.py's GPU columns. Skipped elsewhere; alone:

    python3 -m pytest -q -m cuda tests
"""

import json

import pytest
import torch

import bench
from devices import compile_model, graphs_compiled
from model import GPT, config_from_preset

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = dict(vocab_size=50304)  # the "small" preset (6 layers, 384 wide, 256 positions) at training's vocabulary


@pytest.fixture
def cuda(monkeypatch):
    """The GPU, its fp32 matmuls in fp32 (not TF32: the fp32 comparisons below assume fp32)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return torch.device("cuda")


def small_model(device, seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("small", **SMALL)).to(device)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_cuda_graph_decoding_gives_the_eager_tokens_with_one_graph_per_batch_size(cuda):
    """The static form under CUDA graphs against eager decoding, fp32, greedy. The embedding is scaled up so that the
    greedy choice has a clear margin (a random model's logits are nearly tied). Two calls per batch size with
    different prompt lengths: the second compiles nothing and records no new graph."""
    model = small_model(cuda).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)
    from torch._dynamo.utils import counters

    for batch in (1, 4):
        for prompt_len in (5, 11):
            prompt = torch.randint(0, 50257, (batch, prompt_len), device=cuda)
            before, skips = graphs_compiled(), counters["inductor"]["cudagraph_skips"]
            compiled = model.generate(prompt, 24, temperature=0, compile=True)
            assert graphs_compiled() - before == (1 if prompt_len == 5 else 0)
            assert counters["inductor"]["cudagraph_skips"] == skips  # replayed as a CUDA graph, not skipped
            assert torch.equal(compiled, model.generate(prompt, 24, temperature=0))


def test_compiled_bf16_training_step_matches_eager(cuda):
    """Loss and gradient norm of one bf16 step, compiled (inductor) against eager: within 2e-2 (bf16 keeps 8 bits;
    fusion changes where it rounds)."""
    x, y = (torch.randint(0, 50257, (4, 256), device=cuda) for _ in range(2))
    results = []
    for compiled in (False, True):
        model = small_model(cuda)
        forward = compile_model(model, "default") if compiled else model
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(x, y)[1]
        loss.backward()
        results.append((loss.item(), torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()))
    (eager_loss, eager_norm), (loss, norm) = results
    assert abs(loss - eager_loss) <= 2e-2 * eager_loss and abs(norm - eager_norm) <= 2e-2 * eager_norm


def test_fp16_with_the_gradient_scaler_chunked_loss_matches_the_whole_logits(cuda):
    """fp16 autocast, GradScaler, 4 x 1024 positions: the chunked loss's unscaled gradients within 1e-2 of the
    whole-logits loss's (fp16 keeps 11 bits; both round the products alike, the sums differ)."""
    x, y = (torch.randint(0, 50257, (4, 256), device=cuda) for _ in range(2))
    grads = []
    for chunk in (0, 256):
        model = small_model(cuda)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x, y, loss_chunk_size=chunk)[1]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.isfinite(grads[1]).all() and relative(grads[1], grads[0]) < 1e-2


SDPA_OPS = {"flash": "_scaled_dot_product_flash_attention", "efficient": "_scaled_dot_product_efficient_attention",
            "cudnn": "_scaled_dot_product_cudnn_attention"}


@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn", "math"])
def test_each_attention_kernel_is_compiled_in_and_agrees_with_math(cuda, kernel):
    """Each --attention kernel becomes the op of the compiled graph (math: no fused op), and its bf16 loss is the math
    kernel's within 1e-2."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(graph_module, example_inputs):
        graphs.append(str(graph_module.graph))
        return make_boxed_func(graph_module.forward)

    x = torch.randint(0, 50257, (2, 256), device=cuda)
    losses = {}
    for name in {kernel, "math"}:
        model = small_model(cuda).set_attention(name)
        graphs.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses[name] = torch.compile(model, backend=aot_autograd(fw_compiler=keep), dynamic=False)(x, x)[1]
        text = "".join(graphs)
        for other, op in SDPA_OPS.items():
            assert (op in text) == (other == name), (name, op)
    assert abs(losses[kernel].item() - losses["math"].item()) <= 1e-2 * losses["math"].item()


def test_cuda_graph_modes_are_refused_with_gradient_accumulation(shards, tmp_path, capsys):
    from conftest import tiny_args
    from train_gpt2 import parse_config

    args = [a for a in tiny_args(shards, tmp_path) if a not in ("--device", "cpu")]  # auto: this GPU
    with pytest.raises(SystemExit) as e:
        parse_config([*args, "--compile-mode", "reduce-overhead"])
    assert e.value.code == 2 and "max-autotune-no-cudagraphs" in capsys.readouterr().err


def test_bench_generate_reports_gpu_busy_time_and_host_time(cuda, capsys):
    bench.main(["generate", "--model", "tiny", "--tokens", "16", "--batch", "1", "--repeats", "1", "--compile",
                "--json"])
    rows = {row["impl"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    for impl in ("ours, KV cache", "ours, KV cache, compiled"):
        assert 0 < rows[impl]["gpu_busy_ms_per_token"] and 0 < rows[impl]["host_ms_per_call"]
        assert rows[impl]["gpu_busy_ms_per_token"] < rows[impl]["ms_per_token"] * 1.05


def test_bf16_weights_give_the_logits_of_fp32_weights_within_bf16_tolerance(cuda):
    """bf16 weights (sample.py's) against fp32 weights under autocast: next-token logits within 2e-2."""
    model = small_model(cuda).eval()
    prompt = torch.randint(0, 50257, (2, 9), device=cuda)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = model.next_token_logits(prompt)
        got = small_model(cuda).eval().cast_for_inference(torch.bfloat16).next_token_logits(prompt)
    assert relative(got, want) < 2e-2
