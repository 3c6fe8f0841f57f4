"""GPT-2 in one module: the config and its presets, the model, Hugging Face weight loading, the loss in chunks and
KV-cached decoding (its loop and sampling: generate.py; the optimizers: optim.py). Module names mirror the Hugging
Face GPT-2 checkpoint keys.

This file knows nothing about ranks, logs, run directories or command lines.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from devices import attention_backend
from tokenizer import EOT_ID, N_VOCAB

# GPT-2's vocabulary padded up to a multiple of 128 (50,304): the extra rows are never a target, and the matmuls
# on the padded size run faster on GPUs. The training default.
PADDED_VOCAB_SIZE = -(-N_VOCAB // 128) * 128


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, also the number of learned positions
    vocab_size: int = N_VOCAB  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # of embeddings, attention weights and residual branches while training (GPT-2's was 0.1)

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def shape(self) -> tuple[int, ...]:
        """What the weights' shapes depend on (not dropout): for comparing two configs' weights."""
        return self.block_size, self.vocab_size, self.n_layer, self.n_head, self.n_embd

    def describe(self, vocab: bool = True) -> str:
        """'n_layer 12, n_head 12, n_embd 768, block_size 1024, vocab_size 50304', for messages."""
        shape = f"n_layer {self.n_layer}, n_head {self.n_head}, n_embd {self.n_embd}, block_size {self.block_size}"
        return shape + (f", vocab_size {self.vocab_size}" if vocab else "")

    def check_context(self, length: int, what: str = "") -> None:
        """The one check that a sequence fits the learned positions; `what` names the sequence in the error."""
        if length > self.block_size:
            what = what or f"a sequence of {length} tokens"
            raise ValueError(f"{what} is longer than the model's context (block_size {self.block_size})")


# The four published GPT-2 sizes (Hugging Face names) and two small ones for CPU work.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # ~30M
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),  # ~16M, the CPU quickstart
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),  # ~3.3M, tests
}
HF_MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
DEFAULT_MODEL = "gpt2"  # the shape a run trains when none is named

# Hugging Face's GPT-2 stores these Linear layers as Conv1D, whose weight is (in_features, out_features).
HF_CONV1D_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# Non-parameter buffers of older Hugging Face GPT-2 checkpoints (the causal mask). Matched by exact suffix:
# a substring test like `"attn.bias" in key` would also drop `attn.c_attn.bias`.
HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
RESIDUAL_PROJECTIONS = (".attn.c_proj.weight", ".mlp.c_proj.weight")


def config_from_preset(name: str, **overrides) -> GPTConfig:
    """The config of a named shape (PRESETS), with fields overridden (vocab_size, block_size)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


class KVCache:
    """Keys and values of one attention layer, preallocated for the whole context and for the largest batch decoded
    so far (a smaller batch uses the first rows): the one cache design, told in generate.py. Its memory never moves
    while batches fit, so a CUDA graph replays its reads and writes at the addresses it recorded."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        torch._dynamo.mark_static_address(self.k)  # CUDA graphs use them in place instead of copying them in and out
        torch._dynamo.mark_static_address(self.v)

    def fits(self, batch: int, dtype: torch.dtype, device: torch.device) -> bool:
        device = torch.device(device)
        same_device = self.k.device.type == device.type and device.index in (None, self.k.device.index)
        return self.k.size(0) >= batch and self.k.dtype == dtype and same_device

    def update(self, decoding: "Decoding", k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's k, v (B, nh, T, hd) at decoding.positions; return the cache's keys and values of this
        batch, as far as the pass looks (the mask's width): (B, nh, visible, hd) x 2."""
        B, visible = k.size(0), decoding.mask.size(-1)
        self.k[:B].index_copy_(2, decoding.positions, k)
        self.v[:B].index_copy_(2, decoding.positions, v)
        return self.k[:B, :, :visible], self.v[:B, :, :visible]


class Decoding(NamedTuple):
    """One forward pass of decoding, built once and handed to every layer: where its T tokens sit in the cache and,
    for each, which of the first `visible` cache positions it attends to."""

    positions: torch.Tensor  # (T,) device tensor
    mask: Optional[torch.Tensor] = None  # (1, 1, T, visible) bool: j visible to token t when j <= positions[t];
    # None: a prefill from position 0 (see at)

    @classmethod
    def at(cls, positions: torch.Tensor, visible: Optional[int] = None) -> "Decoding":
        """The pass of tokens at `positions`, attending to the first `visible` cache positions (by default the
        filled ones of a prefill from 0: as many as the tokens)."""
        visible = positions.numel() if visible is None else visible
        mask = torch.arange(visible, device=positions.device)[None, :] <= positions[:, None]  # (T, visible)
        return cls(positions, mask[None, None])


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.kv_cache: Optional[KVCache] = None  # attached by generate.setup_caches; used only when decoding
        self.kernel = "auto"  # SDPA kernel of whole-sequence passes (GPT.set_attention)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, decoding: Optional[Decoding] = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), causal. When decoding, the keys and values also go into the cache, and a step
        attends to the cache (see KVCache)."""
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        if decoding is None:  # a whole sequence: training and evaluation
            p = self.dropout if self.training else 0.0
            with attention_backend(self.kernel):  # inside forward: torch.compile guards on it and compiles it in
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:  # decoding, the prompt or a new token alike: the cache under the pass's mask
            k, v = self.kv_cache.update(decoding, k, v)  # (B, nh, visible, hd) x 2
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=decoding.mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hd) -> (B, T, C)
        return dropout(self.c_proj(y), self.dropout, self.training)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, and nothing at all (no kernel, no mask) where it would change nothing: p = 0 or evaluation."""
    return F.dropout(x, p, training=True) if p and training else x


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2 used the tanh approximation
        return dropout(x, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, decoding: Optional[Decoding] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), decoding)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # Each block adds two projections to the residual stream; scale them so its variance stays ~constant.
        residual_std = 0.02 * (2 * config.n_layer) ** -0.5
        for name, p in self.named_parameters():
            if name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_attention(self, kernel: str) -> "GPT":
        """The SDPA kernel of training and evaluation passes (devices.ATTENTION_BACKENDS; "auto": PyTorch's pick), a
        setting of the model: a compiled model compiles the kernel set at its first call, and another setting makes
        another graph. Decoding keeps PyTorch's pick (its masks are not every kernel's)."""
        for module in self.modules():  # through wrappers (activation checkpointing) too
            if isinstance(module, CausalSelfAttention):
                module.kernel = kernel
        return self

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied wte/lm_head counted once; non_embedding leaves out the position embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs (forward + backward) per token: 6N for the weights plus 12*L*H*hd*T for attention."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T

    def hidden_states(self, idx: torch.Tensor, decoding: Optional[Decoding] = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of idx (B, T): from position 0, or when decoding at decoding.positions."""
        if decoding is None:
            self.config.check_context(idx.size(1))
            positions = torch.arange(idx.size(1), device=idx.device)  # (T,)
        else:
            positions = decoding.positions  # (T,), within block_size by generate
            decoding = decoding if decoding.mask is not None else Decoding.at(positions)
        x = dropout(self.transformer.wte(idx) + self.transformer.wpe(positions), self.config.dropout,
                    self.training)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, decoding)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, loss_chunk_size: int = 0
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """idx (B, T) token ids -> logits (B, T, vocab); loss is the mean cross-entropy where targets != -1.

        loss_chunk_size > 0 (with targets): the loss is computed loss_chunk_size positions at a time, fused with the
        output projection (chunked_cross_entropy), and the logits, never materialised, are returned as None."""
        x = self.hidden_states(idx)  # (B, T, C)
        if targets is not None and loss_chunk_size > 0:
            loss = chunked_cross_entropy(x.view(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                         loss_chunk_size)
            return None, loss
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ----------------------------------------------------------------------------------------------------------
    # Hugging Face weights

    @classmethod
    def from_pretrained(cls, name_or_path: str, local_files_only: bool = False) -> "GPT":
        """Load GPT-2 weights: a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a save_pretrained dir;
        local_files_only: a hub name from the Hugging Face cache only.

        A failed hub download raises transformers' own exception; checkpoint.load_model turns it into advice."""
        from transformers import GPT2LMHeadModel  # heavy import, only needed here

        path = Path(name_or_path)
        if path.is_dir():
            try:
                hf = GPT2LMHeadModel.from_pretrained(path)
            except Exception as e:  # transformers raises several types for a broken directory
                raise ValueError(f"{path} is not a readable Hugging Face GPT-2 directory: {e}") from None
        elif name_or_path in HF_MODEL_NAMES:
            hf = GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=local_files_only)  # hub or cache
        else:
            raise ValueError(
                f"unknown model {name_or_path!r}: expected one of {', '.join(HF_MODEL_NAMES)} "
                f"or a directory written by transformers' save_pretrained"
            )
        return cls.from_hf_state_dict(hf.state_dict(), config_from_hf(hf.config))

    @classmethod
    def from_hf_state_dict(cls, hf_state: dict[str, torch.Tensor], config: GPTConfig) -> "GPT":
        """Build a GPT from a transformers GPT2LMHeadModel state dict, checking every key and shape."""
        hf_state = {k: v for k, v in hf_state.items() if not k.endswith(HF_BUFFER_SUFFIXES)}
        model = cls(config)
        ours = model.state_dict()
        hf_state.setdefault("lm_head.weight", hf_state.get("transformer.wte.weight"))  # tied; may be omitted
        missing = sorted(ours.keys() - hf_state.keys())
        unexpected = sorted(hf_state.keys() - ours.keys())
        if missing or unexpected:
            raise ValueError(
                f"checkpoint keys do not match GPT-2: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        with torch.no_grad():
            for key, value in hf_state.items():
                if key.endswith(HF_CONV1D_SUFFIXES):
                    value = value.t()  # Conv1D (in, out) -> Linear (out, in)
                if value.shape != ours[key].shape:
                    raise ValueError(
                        f"shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[key].shape)}"
                    )
                ours[key].copy_(value)
        return model

    def to_hf_state_dict(self, vocab_size: Optional[int] = None) -> dict[str, torch.Tensor]:
        """Our weights under Hugging Face GPT-2 keys (Conv1D transposed), the vocabulary cut to vocab_size rows."""
        vocab_size = vocab_size or self.config.vocab_size
        out = {}
        for key, value in self.state_dict().items():
            if key.endswith(HF_CONV1D_SUFFIXES):
                value = value.t()
            if key in ("transformer.wte.weight", "lm_head.weight"):
                value = value[:vocab_size]
            out[key] = value.detach().clone().contiguous()
        return out

    def to_hf(self, vocab_size: Optional[int] = None, attn_implementation: Optional[str] = None):
        """A transformers GPT2LMHeadModel holding our weights, the vocabulary cut to vocab_size rows."""
        from transformers import GPT2LMHeadModel

        vocab_size = vocab_size or self.config.vocab_size
        if self.config.vocab_size < vocab_size:
            raise ValueError(f"the model's vocabulary ({self.config.vocab_size}) is smaller than {vocab_size}")
        config = config_to_hf(self.config)
        config.vocab_size = vocab_size
        if attn_implementation:
            config._attn_implementation = attn_implementation
        hf = GPT2LMHeadModel(config)
        result = hf.load_state_dict(self.to_hf_state_dict(vocab_size), strict=False)
        if result.missing_keys or result.unexpected_keys:  # strict=False only for transformers' non-weight buffers
            raise ValueError(f"our weights do not fit GPT2LMHeadModel: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        return hf

    # ----------------------------------------------------------------------------------------------------------
    # Training

    def configure_optimizers(self, weight_decay: float, learning_rate: float, device_type: str,
                             log: Optional[Callable[[str], None]] = print) -> torch.optim.AdamW:
        """optim.configure_optimizers over this model's parameters."""
        from optim import configure_optimizers

        return configure_optimizers(self.parameters(), weight_decay, learning_rate, device_type, log)

    # ----------------------------------------------------------------------------------------------------------
    # Decoding

    def next_token_logits(self, idx: torch.Tensor, decoding: Optional[Decoding] = None) -> torch.Tensor:
        """Logits (B, V) for the token after idx (B, T), the vocabulary projected for the last position only."""
        x = self.hidden_states(idx, decoding)  # (B, T, C)
        return self.lm_head(x[:, -1, :]).float()  # (B, V)

    def setup_caches(self, batch: int, dtype: torch.dtype, device: torch.device) -> list[KVCache]:
        """The KV caches of every attention layer, for decoding `batch` sequences (see generate.setup_caches)."""
        from generate import setup_caches

        return setup_caches(self, batch, dtype, device)

    def decoding_step(self, device: torch.device, compile: bool,
                      static: Optional[bool] = None) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
        """The step generate runs: (token, pos, filled) -> logits (see generate.decoding_step)."""
        from generate import decoding_step

        return decoding_step(self, device, compile, static)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None, **options) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens, (B, T + max_new_tokens); temperature 0 is greedy
        (see generate.generate for the options: top_p, repetition_penalty, use_cache, compile, ...)."""
        from generate import generate

        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                        **options)

    def cast_for_inference(self, dtype: torch.dtype) -> "GPT":
        """This model with its weights in `dtype` (autocast's: bf16 or fp16), for inference only. Decoding reads
        every weight once per token; fp32 weights under autocast would be cast again at every step, 4x the memory
        traffic of bf16 weights (training keeps fp32 weights: AdamW updates them). float32 changes nothing."""
        return self.to(dtype)


def clean_name(name: str) -> str:
    """A parameter's name as the checkpoint keys have it: without the wrappers' parts (compile, activation
    checkpointing)."""
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


class ChunkedCrossEntropy(torch.autograd.Function):
    """F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1), `chunk` rows of hidden at a time, so the
    (N, V) logits never exist at once: each chunk's gradients (softmax minus one-hot, through the projection) are
    computed in the forward pass while its probabilities are at hand, then scaled by the incoming gradient in
    backward. Under autocast the projections run in its dtype and the softmax in fp32, as the unfused path does.

    The 1 / (valid positions) of the mean is applied after the products, in fp32: applied before, it would push the
    fp16 products' inputs (probabilities ~1/V over ~N positions) below fp16's range before the gradient scaler's
    factor, which only arrives in backward, could lift them. Without gradients wanted (evaluation) only the loss is
    computed."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                with_grads: bool) -> torch.Tensor:
        acc = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 for a float64 model
        valid_count = (targets != -1).sum().clamp(min=1).to(acc)  # a tensor: no host sync
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        if with_grads:
            grad_hidden = torch.empty_like(hidden, dtype=acc)  # (N, C)
            grad_weight = torch.zeros_like(weight, dtype=acc)  # (V, C)
        for start in range(0, hidden.size(0), chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]  # (n, C), (n,)
            logits = (h @ weight.t()).to(acc)  # (n, V), projected in autocast's dtype where it is on
            valid = (t != -1).to(acc)  # (n,)
            t = t.clamp(min=0)
            loss += ((torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None])[:, 0]) * valid).sum()
            if not with_grads:
                continue
            d_logits = torch.softmax(logits, dim=-1)  # (n, V): d loss_i / d logits_i = softmax - one-hot
            d_logits.scatter_add_(1, t[:, None], -torch.ones_like(d_logits[:, :1]))
            d_logits *= valid[:, None]  # ignored positions add nothing; the mean's 1 / valid_count comes after
            grad_hidden[start : start + chunk] = d_logits.to(weight.dtype) @ weight  # (n, C)
            grad_weight += d_logits.t().to(h.dtype) @ h  # (V, C)
        if with_grads:
            ctx.save_for_backward(grad_hidden.div_(valid_count), grad_weight.div_(valid_count))
            ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss / valid_count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype), None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    """Mean cross-entropy of the projection hidden (N, C) @ weight (V, C).T against targets (N,), -1 ignored,
    without materialising the (N, V) logits (see ChunkedCrossEntropy)."""
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return ChunkedCrossEntropy.apply(hidden, weight, targets, chunk, with_grads)


def config_from_hf(hf_config) -> GPTConfig:
    """GPTConfig from a transformers GPT2Config, refusing variants this architecture does not implement."""
    unsupported = {
        "activation_function": (hf_config.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (hf_config.n_inner, (None, 4 * hf_config.n_embd)),
        "layer_norm_epsilon": (hf_config.layer_norm_epsilon, (1e-5,)),
        "scale_attn_weights": (getattr(hf_config, "scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (getattr(hf_config, "scale_attn_by_inverse_layer_idx", False), (False,)),
        "reorder_and_upcast_attn": (getattr(hf_config, "reorder_and_upcast_attn", False), (False,)),
        "add_cross_attention": (getattr(hf_config, "add_cross_attention", False), (False,)),
    }
    for name, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise ValueError(f"unsupported GPT-2 variant: {name}={value!r} (this model implements {allowed[0]!r})")
    return GPTConfig(
        block_size=hf_config.n_positions,
        vocab_size=hf_config.vocab_size,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
    )


def config_to_hf(config: GPTConfig):
    """The transformers GPT2Config of our config."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        tie_word_embeddings=True,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
    )

