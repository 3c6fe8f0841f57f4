"""memory.py's estimate against what torch holds on the CPU: the tensors saved for backward, counted by torch's
saved-tensor hooks, and the parameters, gradients and AdamW state of a real step; the run summary's advice; the
larger presets within an 80 GB GPU on 8 ranks."""

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

import train_gpt2
from memory import GIB, Setting, changes_that_fit, estimate, fit_report, saved_for_backward, total
from model import GPT, GPTConfig, config_from_preset

CONFIG = GPTConfig(block_size=64, vocab_size=2048, n_layer=3, n_head=4, n_embd=128)
B, T = 4, 64


def bytes_saved_for_backward(model, x, y, loss_chunk, low_precision):
    """Bytes of the distinct storages that autograd saves in the forward pass, the parameters' own left out."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=low_precision):
        model(x, y, loss_chunk_size=loss_chunk)
    return sum(saved.values())


@pytest.mark.parametrize("low_precision", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointing"])
@pytest.mark.parametrize("loss_chunk", [0, 96], ids=["whole-logits", "chunked-loss"])
def test_saved_activations_within_10_percent_of_the_hooks(low_precision, checkpointing, loss_chunk):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    if checkpointing:  # as parallelize applies it
        for i, block in enumerate(model.transformer.h):
            model.transformer.h[i] = checkpoint_wrapper(block)
    x, y = torch.randint(0, 2048, (B, T)), torch.randint(0, 2048, (B, T))
    measured = bytes_saved_for_backward(model, x, y, loss_chunk, low_precision)
    estimated = saved_for_backward(Setting(CONFIG, B, T, low_precision, checkpointing=checkpointing,
                                           loss_chunk=loss_chunk))
    assert abs(estimated - measured) <= 0.1 * measured, (estimated, measured)


def test_model_states_are_the_parameters_gradients_and_adamw_state_of_a_real_step():
    model = GPT(CONFIG)
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu", log=None)
    model(torch.randint(0, 2048, (B, T)), torch.randint(0, 2048, (B, T)))[1].backward()
    optimizer.step()
    parts = estimate(Setting(CONFIG, B, T, False))

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    assert parts["weights"] == nbytes(model.parameters())  # the tied wte / lm_head once
    assert parts["gradients"] == nbytes(p.grad for p in model.parameters())
    moments = [s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert parts["optimizer"] == nbytes(moments)


def test_sharding_divides_the_states_and_ddp_adds_its_buckets():
    one = estimate(Setting(CONFIG, B, T, True))
    ddp = estimate(Setting(CONFIG, B, T, True, "ddp", world_size=8))
    fsdp = estimate(Setting(CONFIG, B, T, True, "fsdp", world_size=8))
    assert ddp["copies"] == one["copies"] + one["weights"]  # DDP's fp32 buckets, the size of the weights
    assert fsdp["optimizer"] == one["optimizer"] / 8 and fsdp["weights"] == one["weights"] / 8
    accumulating = estimate(Setting(CONFIG, B, T, True, "fsdp", world_size=8, grad_accum=4))
    assert accumulating["gradients"] == fsdp["gradients"] + one["weights"]  # kept whole between micro-steps


def test_a_run_that_does_not_fit_is_told_which_flags_would_make_it_fit():
    xl = Setting(config_from_preset("gpt2-xl", vocab_size=50304), 64, 1024, True, "ddp", 8, 2)
    lines = fit_report(xl, 80 * GIB)
    assert len(lines) == 2 and "does not fit" in lines[1] and "80.0 GiB" in lines[1]
    flags, fixed = changes_that_fit(xl, 0.9 * 80 * GIB)
    assert flags in lines[1] and total(fixed) <= 0.9 * 80 * GIB < total(xl)
    assert fit_report(xl, None) == lines[:1] and len(fit_report(xl, 400 * GIB)) == 1


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_each_gpt2_preset_fits_an_80_gb_gpu_on_8_ranks(preset):
    """The estimate a run summary prints for `torchrun --nproc_per_node=8 train_gpt2.py --preset ...` in bf16."""
    cfg = train_gpt2.parse_config(["--preset", preset])
    setting = train_gpt2.memory_setting(cfg, 8, torch.bfloat16, train_gpt2.config_for_run(cfg))
    assert setting.world_size == 8 and setting.config.n_layer == config_from_preset(cfg.model or "gpt2").n_layer
    assert total(setting) <= 0.9 * 80 * GIB, (preset, total(setting) / GIB)
