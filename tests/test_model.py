"""The model against independent references: transformers' GPT-2, float64 loss computations, hand counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CXX, make_hf_model, shape_only

from model import GPT, Decoding, GPTConfig, config_from_hf, config_from_preset

# fp32 on CPU: our SDPA attention and transformers' differ only in summation order, ~1e-7 relative on logits
# of magnitude ~1; 1e-4 leaves room for other BLAS builds while still catching any real mapping error.
LOGIT_TOL = 1e-4


def test_parameter_counts_of_124m():
    assert shape_only(GPTConfig()).num_params() == 124_439_808
    assert shape_only(GPTConfig(vocab_size=50304)).num_params() == 124_475_904


def test_presets_match_published_shapes():
    assert config_from_preset("gpt2-medium") == GPTConfig(n_layer=24, n_head=16, n_embd=1024)
    assert config_from_preset("gpt2-large") == GPTConfig(n_layer=36, n_head=20, n_embd=1280)
    assert config_from_preset("gpt2-xl") == GPTConfig(n_layer=48, n_head=25, n_embd=1600)
    with pytest.raises(ValueError, match="unknown model preset"):
        config_from_preset("gpt5")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)


def test_init_loss_of_124m_is_uniform_guess():
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()
    x = torch.randint(0, 50257, (2, 128))
    y = torch.randint(0, 50257, (2, 128))
    with torch.no_grad():
        _, loss = model(x, y)
    assert 10.7 <= loss.item() <= 11.2  # ln(50257) = 10.82


def test_init_loss_of_tiny_model_is_near_ln_vocab():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=500, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        _, loss = model(torch.randint(0, 500, (4, 32)), torch.randint(0, 500, (4, 32)))
    assert abs(loss.item() - math.log(500)) < 0.1


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=1000)
    model = GPT(config)
    h = model.transformer.h[0]
    assert h.attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert h.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert h.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(h.attn.c_attn.bias) == 0
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.bias is None


def test_loss_ignores_minus_one_targets_against_float64_reference():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 97, (3, 16))
    y = torch.randint(0, 97, (3, 16))
    y[0, :5] = -1
    y[2, 10:] = -1
    with torch.no_grad():
        logits, loss = model(x, y)
    logp = torch.log_softmax(logits.double(), dim=-1)
    terms = [-logp[b, t, y[b, t]] for b in range(3) for t in range(16) if y[b, t] != -1]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


def test_input_longer_than_block_size_is_a_clear_error():
    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match=r"a sequence of 9 tokens is longer than the model's context \(block_size 8\)"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_layer=1, n_head=1, n_embd=16, n_positions=16, vocab_size=101),
        dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=50257),
        dict(n_layer=3, n_head=3, n_embd=48, n_positions=24, vocab_size=300),
    ],
)
def test_logits_and_loss_match_transformers(shape, tmp_path):
    hf = make_hf_model(**shape)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    x = torch.randint(0, shape["vocab_size"], (3, shape["n_positions"]))
    with torch.no_grad():
        hf_out = hf(x, labels=x)
        logits, _ = ours(x)
        # transformers shifts labels inside; the same loss in our convention ignores the last position
        targets = torch.cat([x[:, 1:], torch.full((3, 1), -1)], dim=1)
        _, loss = ours(x, targets)
    assert (logits - hf_out.logits).abs().max().item() <= LOGIT_TOL
    assert loss.item() == pytest.approx(hf_out.loss.item(), abs=1e-5)


def test_124m_key_mapping_against_transformers_layout():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config())
    state = hf.state_dict()
    with torch.no_grad():
        for key in state:
            if key.endswith("c_attn.bias"):  # make a dropped bias visible: random values instead of zeros
                state[key] = torch.randn_like(state[key])
    # Older checkpoints also carry the causal-mask buffers; they must be dropped, and only they
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 1024, 1024)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    ours = GPT.from_hf_state_dict(state, config_from_hf(hf.config))
    assert ours.num_params() == 124_439_808
    ours_state = ours.state_dict()
    for i in range(12):
        p = f"transformer.h.{i}."
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert torch.equal(ours_state[p + name + ".weight"], state[p + name + ".weight"].t())
            assert torch.equal(ours_state[p + name + ".bias"], state[p + name + ".bias"])
    assert torch.equal(ours_state["transformer.wpe.weight"], state["transformer.wpe.weight"])
    assert torch.equal(ours_state["lm_head.weight"], state["transformer.wte.weight"])


def test_key_and_shape_mismatches_name_the_key():
    hf = make_hf_model()
    config = config_from_hf(hf.config)
    state = hf.state_dict()
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias"):
        GPT.from_hf_state_dict(state, config)
    state = hf.state_dict()
    state["transformer.h.0.ln_2.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match=r"shape mismatch for transformer\.h\.0\.ln_2\.weight"):
        GPT.from_hf_state_dict(state, config)


def test_unknown_hub_name_and_broken_directory(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        GPT.from_pretrained("gpt3")
    with pytest.raises(ValueError, match="not a readable Hugging Face GPT-2 directory"):
        GPT.from_pretrained(str(tmp_path))


def test_optimizer_groups_decay_only_matrices():
    config = GPTConfig(block_size=16, vocab_size=100, n_layer=3, n_head=2, n_embd=8)
    model = GPT(config)
    messages = []
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, device_type="cpu", log=messages.append)
    decay, no_decay = opt.param_groups
    C, L, V, T = 8, 3, 100, 16
    # by hand: wte, wpe and four weight matrices per block are decayed; biases and LayerNorms are not
    assert len(decay["params"]) == 2 + 4 * L
    assert sum(p.numel() for p in decay["params"]) == V * C + T * C + L * (3 * C * C + C * C + 4 * C * C * 2)
    assert len(no_decay["params"]) == 8 * L + 2
    assert sum(p.numel() for p in no_decay["params"]) == L * (3 * C + C + 4 * C + C + 4 * C) + 2 * C
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert "decayed: 14 tensors" in messages[0]


def test_optimizer_groups_of_124m_match_build_nanogpt_report(capsys):
    model = shape_only(GPTConfig(vocab_size=50304))
    decay, no_decay = model.configure_optimizers(0.1, 6e-4, "cpu").param_groups
    report = capsys.readouterr().out  # printed by default
    assert "decayed: 50 tensors, 124,354,560 parameters" in report and "not decayed: 98 tensors, 121,344" in report
    assert (len(decay["params"]), sum(p.numel() for p in decay["params"])) == (50, 124_354_560)
    assert (len(no_decay["params"]), sum(p.numel() for p in no_decay["params"])) == (98, 121_344)


def test_prefill_then_decoding_steps_equal_the_full_forward():
    """The prompt through the caches, then one step per token at a tensor position, in both forms (the whole cache
    under the step's mask, and the filled positions only): the full forward's logits at every position. The caches
    are reused from an earlier, longer call: what it left behind the mask must not matter."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=80, n_layer=2, n_head=2, n_embd=16)).eval()
    cpu = torch.device("cpu")
    x = torch.randint(0, 80, (2, 24))
    model.generate(torch.randint(0, 80, (2, 20)), 4)  # fills the (2, float32, cpu) caches to the end
    caches = model.setup_caches(2, torch.float32, cpu)
    addresses = [(c.k.data_ptr(), c.v.data_ptr()) for c in caches]
    model.generate(torch.randint(0, 80, (2, 3)), 6)
    assert all(a is b for a, b in zip(caches, model.setup_caches(2, torch.float32, cpu)))  # kept, not remade ...
    assert [(c.k.data_ptr(), c.v.data_ptr()) for c in caches] == addresses  # ... at the same addresses
    assert [block.attn.kv_cache for block in model.transformer.h] == caches  # attached to the attention layers
    with torch.no_grad():
        full = model(x)[0]  # (2, 24, 80)
        for static in (True, False):
            step = model.decoding_step(cpu, compile=False, static=static)
            prefill = model.next_token_logits(x[:, :5], Decoding(torch.arange(5)))
            assert (prefill - full[:, 4]).abs().max().item() < 1e-5
            for t in range(5, 24):
                logits = step(x[:, t : t + 1], torch.tensor([t]), t + 1)
                assert (logits - full[:, t]).abs().max().item() < 1e-5, (static, t)


@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_decoding_compiles_once_per_batch_size_and_gives_the_same_tokens():
    """fp32 CPU: greedy tokens equal across compiled, eager cached and cache-free decoding (also past block_size,
    where the window slides uncompiled), seeded samples equal between compiled and eager; and a later call with
    another prompt length or number of new tokens at a batch size already seen compiles nothing new."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=2, n_head=2, n_embd=32))
    counters.clear()
    first = torch.randint(0, 300, (2, 4))
    greedy = [model.generate(first, 40, temperature=0, compile=True, use_cache=True),
              model.generate(first, 40, temperature=0, use_cache=True),
              model.generate(first, 40, temperature=0, use_cache=False)]
    assert torch.equal(greedy[0], greedy[1]) and torch.equal(greedy[0], greedy[2])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for prompt_len, new_tokens in ((9, 5), (1, 17), (20, 3)):
        prompt = torch.randint(0, 300, (2, prompt_len))
        sampled = [model.generate(prompt, new_tokens, top_k=10, generator=torch.Generator().manual_seed(1),
                                  compile=c) for c in (True, False)]
        assert torch.equal(sampled[0], sampled[1])
    assert counters["stats"]["unique_graphs"] == graphs, "a new prompt length or token count recompiled the step"
    model.generate(torch.randint(0, 300, (3, 4)), 5, compile=True)  # a new batch size: at most its own graph
    with_three = counters["stats"]["unique_graphs"]
    model.generate(torch.randint(0, 300, (3, 7)), 9, compile=True)
    model.generate(torch.randint(0, 300, (2, 7)), 9, compile=True)
    assert counters["stats"]["unique_graphs"] == with_three <= graphs + 1


@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on the CPU needs a C++ compiler")
def test_the_static_step_of_cuda_graphs_compiles_once_for_every_position():
    """The form generate compiles on CUDA (whole cache under a mask, dynamic=False, what a CUDA graph replays),
    compiled here on the CPU: one graph for every position and call, and the full forward's logits."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=80, n_layer=2, n_head=2, n_embd=16)).eval()
    cpu = torch.device("cpu")
    step = model.decoding_step(cpu, compile=True, static=True)  # the form generate compiles on CUDA
    counters.clear()
    model.setup_caches(2, torch.float32, cpu)
    for prompt_len in (3, 11):  # two "generate calls": a prefill, then steps at tensor positions
        x = torch.randint(0, 80, (2, 24))
        with torch.no_grad():
            full = model(x)[0]  # (2, 24, 80)
            model.next_token_logits(x[:, :prompt_len], Decoding(torch.arange(prompt_len)))
            for t in range(prompt_len, 24):
                logits = step(x[:, t : t + 1].contiguous(), torch.tensor([t]), t + 1)
                assert (logits - full[:, t]).abs().max().item() < 1e-5
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prompt_len,new_tokens", [(5, 8), (5, 40), (30, 10)])  # within, across, and past block
def test_kv_cache_generation_equals_cache_free(dtype, prompt_len, new_tokens):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).to(dtype)
    prompt = torch.randint(0, 64, (3, prompt_len))
    greedy = [model.generate(prompt, new_tokens, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = [
        model.generate(prompt, new_tokens, top_k=20, generator=torch.Generator().manual_seed(7), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert sampled[0].shape == (3, prompt_len + new_tokens)
    assert torch.equal(sampled[0][:, :prompt_len], prompt)


def test_greedy_generation_equals_transformers(tmp_path):
    hf = make_hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500, seed=3)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path))
    prompt = torch.randint(0, 500, (2, 6))
    with torch.no_grad():
        expected = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )
    assert torch.equal(ours.generate(prompt, 40, temperature=0), expected)


def test_top_k_one_is_greedy_and_vocab_limit_is_respected():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    prompt = torch.randint(0, 64, (2, 3))
    assert torch.equal(model.generate(prompt, 10, top_k=1), model.generate(prompt, 10, temperature=0))
    with torch.no_grad():  # make the last 14 ids (a "padded" vocabulary) the most likely ones
        model.lm_head.weight[50:] *= 50
    out = model.generate(prompt, 20, temperature=2.0, vocab_limit=50)
    assert out[:, 3:].max().item() < 50
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 1, top_k=51, vocab_limit=50)


def test_sampling_distribution_follows_softmax_with_temperature():
    from generate import sample_next

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    draws = sample_next(logits, temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=4).double() / 20000
    expected = F.softmax(torch.tensor([2.0, 1.0, 0.0]).double() / 0.5, dim=0)
    assert freq[3] == 0
    assert torch.allclose(freq[:3], expected, atol=0.015)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_equals_full_logits_in_value_and_gradients(chunk):
    """Against F.cross_entropy over the full logits in float64, -1 targets ignored; fp32 within 1e-5 (summation
    order), float64 within 1e-12."""
    torch.manual_seed(0)
    from model import chunked_cross_entropy

    hidden64, weight64 = torch.randn(64, 16, dtype=torch.float64), torch.randn(90, 16, dtype=torch.float64)
    targets = torch.randint(0, 90, (64,))
    targets[::5] = -1
    reference = ()
    cases = (("ref", torch.float64, None), ("fp64", torch.float64, 1e-12), ("fp32", torch.float32, 1e-5))
    for name, dtype, tol in cases:
        h = hidden64.to(dtype).clone().requires_grad_()
        w = weight64.to(dtype).clone().requires_grad_()
        if name == "ref":
            loss = F.cross_entropy(h @ w.t(), targets, ignore_index=-1)
        else:
            loss = chunked_cross_entropy(h, w, targets, chunk)
        (2.5 * loss).backward()  # a non-unit incoming gradient
        got = (loss.double(), h.grad.double(), w.grad.double())
        if name == "ref":
            reference = got
            continue
        assert loss.dtype == dtype
        for a, b in zip(got, reference):
            assert (a - b).abs().max().item() < tol


def test_model_loss_in_chunks_equals_the_whole_logits_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=96, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 96, (3, 16)), torch.randint(0, 96, (3, 16))
    logits, full = model(x, y)
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    none, chunked = model(x, y, loss_chunk_size=10)
    chunked.backward()
    assert none is None and abs(full.item() - chunked.item()) < 1e-5
    for n, p in model.named_parameters():  # the tied wte / lm_head weight gets both of its gradients
        assert (p.grad - grads[n]).abs().max().item() < 1e-5, n


def test_chunked_loss_under_fp16_and_the_gradient_scaler_matches_the_whole_logits_loss():
    """fp16 autocast with the gradient scaler's factor, at 8,192 positions (a micro-batch of 8 x 1024) and a vocabulary
    of 4,096: the chunked loss's gradients within 2e-3 of float64's, as the whole-logits loss's are (its error here
    is ~4e-4: fp16 products). Scaling by 1 / positions before the fp16 products underflowed: 2-3% error."""
    from model import chunked_cross_entropy

    torch.manual_seed(0)
    hidden, weight = torch.randn(8192, 64), 0.1 * torch.randn(4096, 64)
    targets = torch.randint(0, 4096, (8192,))
    targets[::7] = -1
    scale = 65536.0  # GradScaler's initial factor

    def gradients(loss_of, dtype=torch.float32):
        h, w = hidden.to(dtype).clone().requires_grad_(), weight.to(dtype).clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16, enabled=dtype == torch.float32):
            loss = loss_of(h, w)
        (scale * loss).backward()
        return h.grad.double() / scale, w.grad.double() / scale

    reference = gradients(lambda h, w: F.cross_entropy(h @ w.t(), targets, ignore_index=-1), torch.float64)
    whole = gradients(lambda h, w: F.cross_entropy(h @ w.t(), targets, ignore_index=-1))
    chunked = gradients(lambda h, w: chunked_cross_entropy(h, w, targets, 4096))
    for got, want in zip(whole + chunked, reference + reference):
        assert ((got - want).norm() / want.norm()).item() < 2e-3


def test_two_models_with_different_attention_kernels_compile_two_graphs_calling_different_kernels():
    """The kernel is a setting of the model that torch.compile guards on: a second model set to another kernel gets a
    graph of its own (an ambient sdpa_kernel context reused the first graph, and its kernel). On the CPU: flash
    attention's op against the math kernel's softmax."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from devices import graphs_compiled

    aten_graphs = []  # what the forward of each model compiled to

    def keep_forward_graph(graph_module, example_inputs):
        aten_graphs[-1] += str(graph_module.graph)
        return make_boxed_func(graph_module.forward)

    backend = aot_autograd(fw_compiler=keep_forward_graph)
    config = GPTConfig(block_size=16, vocab_size=96, n_layer=1, n_head=2, n_embd=32)
    x = torch.randint(0, 96, (2, 16))
    logits = []
    for kernel in ("flash", "math"):
        torch.manual_seed(0)
        model = GPT(config).set_attention(kernel)
        aten_graphs.append("")
        before = graphs_compiled()
        logits.append(torch.compile(model, backend=backend, dynamic=False)(x)[0])  # no loss: no log_softmax
        logits[-1].sum().backward()
        assert graphs_compiled() - before == 1
    flash, math = aten_graphs
    assert "flash_attention" in flash and "softmax" not in flash
    assert "flash_attention" not in math and "softmax" in math
    assert (logits[0] - logits[1]).abs().max().item() < 1e-5  # fp32: the same attention, another summation order


def test_decoding_from_bf16_weights_is_within_bf16_tolerance_of_fp32():
    """The KV-cached decoding path on weights cast for inference (bf16 caches too), teacher-forced so both see the
    same tokens: every step's logits within 2% of the logits' largest magnitude (bf16 keeps 8 bits: ~0.4% per
    rounding, a few roundings per layer; measured 0.4% here). float32 leaves the model as it is."""
    import copy

    from generate import decode_with_cache

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32)).eval()
    tokens, T = torch.randint(0, 96, (2, 20)), 5

    def step_logits(m, dtype):
        steps = []

        def emit(length, logits):
            steps.append(logits)
            return tokens[:, length : length + 1]

        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            decode_with_cache(m, tokens[:, :T], 20 - T, emit, compile=False)
        return torch.stack(steps)  # (steps, B, V)

    assert model.cast_for_inference(torch.float32) is model
    want = step_logits(model, torch.float32)
    cast = copy.deepcopy(model).cast_for_inference(torch.bfloat16)
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    got = step_logits(cast, torch.bfloat16)
    assert got.dtype == torch.float32 and (got - want).abs().max() <= 0.02 * want.abs().max()


@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_decoding_keeps_a_graph_per_batch_size_past_the_recompile_limit():
    """With torch.compile's recompile limit at 1, three batch sizes (three graphs on the CPU: a batch of one, then
    two others whose size differs from the first's compiled shape) still decode compiled, with the eager tokens.
    Before, the second one failed (torch 2.13, fullgraph: "recompile limit exceeded") or ran eagerly."""
    from devices import graphs_compiled

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    before = graphs_compiled()
    # torch's own scoped patch, which restores the value it found: pytest 9.2's monkeypatch undoes a setattr on
    # torch's config module by deleting the attribute, and every later compiled decode then failed
    with torch._dynamo.config.patch(recompile_limit=1):
        for batch in (1, 2, 3):
            prompt = torch.randint(0, 64, (batch, 3))
            eager = model.generate(prompt, 4, temperature=0)
            assert torch.equal(model.generate(prompt, 4, temperature=0, compile=True), eager)
        assert graphs_compiled() - before >= 2 and torch._dynamo.config.recompile_limit == 1


def test_recompile_room_leaves_torchs_limit_where_this_torch_has_no_such_setting(monkeypatch):
    """A torch whose config has neither recompile_limit nor cache_size_limit (or one whose attribute a test tool
    deleted): the room is a no-op, not an AttributeError in every compiled decode."""
    from types import SimpleNamespace

    from devices import recompile_room

    monkeypatch.setattr(torch._dynamo, "config", SimpleNamespace(patch=None))
    with recompile_room(64):
        pass
    # torch < 2.7's name: the patch asked for is of that setting (this fake's patch returns what it was asked)
    monkeypatch.setattr(torch._dynamo, "config", SimpleNamespace(cache_size_limit=8, patch=lambda **changes: changes))
    assert recompile_room(64) == {"cache_size_limit": 64}
