"""Per-GPU memory of a training step, estimated before it runs: the model states by parallel mode, the activations by
micro-batch, sequence length and activation checkpointing, and the loss by its form. Printed in the run summary (with
the change that would make a run fit when its GPU is too small) and by bench.py.

The per-token constants are this model's tensors saved for backward, as torch's saved-tensor hooks count them: per
layer 64 x n_embd bytes in fp32, 36 x n_embd under 16-bit autocast (the inputs of both LayerNorms in fp32, of the
four Linear layers, q, k, v and the attention output, GELU's input), plus attention's logsumexp and the LayerNorm
statistics. tests/test_memory.py checks the estimate against those hooks and the optimizer's real state on the CPU.
Not counted: the allocator's fragmentation (5-15% on a GPU), CUDA's context (~0.5 GiB) and what torch.compile saves.
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional

from model import GPTConfig

GIB = 2**30
FITS = 0.9  # of a GPU's memory: what the estimate may use and leave room for fragmentation and the CUDA context
SAVED_PER_LAYER = {True: 36, False: 64}  # bytes per token per n_embd, by 16-bit autocast (True) or fp32
LOSS_BACKWARD = 8  # bytes per token per vocabulary entry that backward adds: log_softmax's fp32 gradients, in and out


@dataclass(frozen=True)
class Setting:
    """What the memory of a training step depends on."""

    config: GPTConfig
    micro_batch: int
    seq_len: int
    low_precision: bool  # bf16 or fp16 autocast; fp32 otherwise
    parallel: str = "ddp"  # or "fsdp"
    world_size: int = 1
    grad_accum: int = 1
    checkpointing: bool = False  # activation checkpointing per block
    loss_chunk: int = 0  # 0: the whole logits at once

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


def parameter_counts(config: GPTConfig) -> tuple[int, int, int]:
    """(all parameters, one block's, the root's: embeddings and final LayerNorm), the tied wte/lm_head once."""
    C = config.n_embd
    block = 12 * C * C + 13 * C  # attention 4C^2 + 4C, MLP 8C^2 + 5C, two LayerNorms 4C
    root = config.vocab_size * C + config.block_size * C + 2 * C
    return config.n_layer * block + root, block, root


def estimate(s: Setting) -> dict[str, float]:
    """Bytes per GPU at the peak of a step (the start of backward), by part: weights, gradients and optimizer
    (AdamW's two moments), the copies of the weights that DDP, autocast or FSDP2 hold beside them, the activations
    and the loss (each what is saved for backward, and what backward adds)."""
    c = s.config
    n, block, root = parameter_counts(c)
    sharded = s.parallel == "fsdp" and s.world_size > 1
    share = s.world_size if sharded else 1
    parts = {"weights": 4 * n / share, "gradients": 4 * n / share, "optimizer": 8 * n / share}
    if sharded:  # the blocks gathered for compute (the current one, the next, prefetched) and the root
        parts["copies"] = (2 if s.low_precision else 4) * (2 * block + root)
        if s.grad_accum > 1:  # gradients kept whole, in fp32, between micro-steps: no reduce-scatter on each
            parts["gradients"] += 4 * n
    else:  # DDP's gradient buckets, autocast's 16-bit weights
        parts["copies"] = (4 * n if s.world_size > 1 else 0) + sum(autocast_copies(s))
    parts["activations"] = sum(activations(s))
    parts["loss"] = sum(loss(s))
    return parts


def activations(s: Setting) -> tuple[float, float]:
    """(saved for backward, more during backward) by the blocks and the head: with activation checkpointing each
    block keeps only its input, and recomputes its activations, one block at a time, in backward."""
    c = s.config
    per_layer = SAVED_PER_LAYER[s.low_precision] * c.n_embd + 4 * c.n_head + 16
    head = 4 * c.n_embd + 24 + (0 if s.loss_chunk else (2 if s.low_precision else 4) * c.n_embd)  # ln_f, lm_head in
    if s.checkpointing:
        return s.tokens * (c.n_layer * 4 * c.n_embd + head), s.tokens * per_layer
    return s.tokens * (c.n_layer * per_layer + head), 0.0


def loss(s: Setting) -> tuple[float, float]:
    """(saved for backward, more during backward) by the loss: the whole logits (log_softmax's fp32 output, then
    the logits' gradients), or in chunks (the gradients made in the forward pass, one chunk's logits at a time)."""
    c = s.config
    if s.loss_chunk:
        return (s.tokens * 4 * c.n_embd + 4 * c.vocab_size * c.n_embd,
                min(s.loss_chunk, s.tokens) * LOSS_BACKWARD * c.vocab_size)
    return s.tokens * 4 * c.vocab_size, s.tokens * LOSS_BACKWARD * c.vocab_size


def autocast_copies(s: Setting) -> tuple[float, float]:
    """(saved for backward, more during backward) by autocast's 16-bit copies of the weights: the blocks' (under
    activation checkpointing, one block's, in backward) and lm_head's (the loss in chunks keeps none); none in fp32 or
    under FSDP2, which gathers 16-bit weights itself."""
    if not s.low_precision or (s.parallel == "fsdp" and s.world_size > 1):
        return 0.0, 0.0
    _, block, _ = parameter_counts(s.config)
    head = 0 if s.loss_chunk else 2 * s.config.vocab_size * s.config.n_embd
    if s.checkpointing:
        return head, 2 * block
    return head + 2 * s.config.n_layer * block, 0.0


def saved_for_backward(s: Setting) -> float:
    """The part of the estimate that saved-tensor hooks see during the forward pass, beside the parameters."""
    return activations(s)[0] + loss(s)[0] + autocast_copies(s)[0]


def total(s: Setting) -> float:
    return sum(estimate(s).values())


def describe(s: Setting, per: str = "GPU") -> str:
    """'~12.3 GiB per GPU (weights 0.5, gradients 0.5, optimizer 0.9, copies 0.7, activations 7.6, loss 2.1)'; per:
    what each rank runs on ("GPU", or "process" on the CPU)."""
    parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in estimate(s).items())
    return f"~{total(s) / GIB:.1f} GiB per {per} ({parts})"


def changes_that_fit(s: Setting, budget: float) -> Optional[tuple[str, Setting]]:
    """The first change that brings the estimate under budget bytes, each adding to the one before in the order of
    what it costs in speed: the loss in chunks, activation checkpointing, FSDP (on several ranks), then ever smaller
    micro-batches; (its flags, the setting they give), or None if none does."""
    steps = []
    if not s.loss_chunk:
        steps.append(("--loss-chunk-size 4096", dict(loss_chunk=4096)))
    if not s.checkpointing:
        steps.append(("--activation-checkpointing block", dict(checkpointing=True)))
    if s.parallel != "fsdp" and s.world_size > 1:
        steps.append(("--parallel fsdp", dict(parallel="fsdp")))
    flags, candidates = [], []
    for flag, change in steps:
        s = dataclasses.replace(s, **change)
        flags.append(flag)
        candidates.append((" ".join(flags), s))
    batch = s.micro_batch
    while batch > 1:
        batch //= 2
        smaller = dataclasses.replace(s, micro_batch=batch, grad_accum=s.grad_accum * s.micro_batch // batch)
        candidates.append((" ".join([*flags, f"--micro-batch-size {batch}"]), smaller))
    return next(((flags, setting) for flags, setting in candidates if total(setting) <= budget), None)


def fit_report(s: Setting, device_bytes: Optional[int], per: str = "GPU") -> list[str]:
    """The run summary's memory lines: the estimate (per: see describe) and, when the GPU's memory is known and too
    small for it, one line saying so, with the flags that would make the run fit."""
    lines = [f"  memory      {describe(s, per)}, estimated"]
    if device_bytes and total(s) > FITS * device_bytes:
        fix = changes_that_fit(s, FITS * device_bytes)
        advice = f"{fix[0]} would need ~{total(fix[1]) / GIB:.1f} GiB" if fix else "no flag here makes it fit"
        lines.append(f"  memory      does not fit: ~{total(s) / GIB:.1f} GiB estimated, this GPU has "
                     f"{device_bytes / GIB:.1f} GiB; {advice}")
    return lines
