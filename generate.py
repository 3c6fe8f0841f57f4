"""Decoding, in gpt-fast's shape: KV caches set up once, one masked attention path for the prompt and each new token,
the compiled step owned here, and the sampling choices users bring from transformers.

The design. setup_caches attaches a KVCache to every attention layer, preallocated for the whole context (block_size
positions) and for the largest batch decoded so far; later calls reuse them, so their memory never moves and a CUDA
graph replays its reads and writes at the addresses it recorded. generate runs the prompt through the caches once
(the prefill: its keys and values written at positions 0..T-1), then one decoding step per new token, its position a
device tensor. Every pass attends to the cache under one mask (model.Decoding), built once per step: token t sees
position j when j <= its position. How far it looks is the one choice: compiled on CUDA, the whole cache (no shape
depends on the position, as CUDA graphs need; what the mask hides is never read); everywhere else, only the positions
written so far (less to read, which the CPU's attention kernel notices at long contexts). Past block_size the window
slides, which shifts every position, so from there each new token recomputes the last block_size tokens, as the
cache-free reference path does throughout.

Sampling follows transformers' order: the repetition penalty on the raw logits, then temperature, top-k, top-p.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from devices import recompile_room
from model import GPT, Decoding, KVCache

# Graphs kept per compiled decoding function: one per batch size, dtype and model shape that the caller decodes
# with, each deliberate (torch.compile's default of 8 catches shapes that change by accident: past it, the step failed
# under fullgraph or ran eagerly).
DECODING_GRAPHS = 64
COMPILED_STEPS: dict[bool, Callable] = {}  # the compiled step function, by form (static or not): see compiled_step


def setup_caches(model: GPT, batch: int, dtype: torch.dtype, device: torch.device) -> list[KVCache]:
    """The KVCache of every attention layer, attached to it, for decoding `batch` sequences in `dtype` on `device`:
    the same tensors at the same addresses call after call, made again only for a larger batch (or another dtype or
    device)."""
    caches = [block.attn.kv_cache for block in model.transformer.h]
    if any(cache is None or not cache.fits(batch, dtype, device) for cache in caches):
        c = model.config
        caches = [KVCache(batch, c.n_head, c.block_size, c.n_embd // c.n_head, dtype, device)
                  for _ in range(c.n_layer)]
        for block, cache in zip(model.transformer.h, caches):
            block.attn.kv_cache = cache
    return caches


def step_logits(model: GPT, token: torch.Tensor, pos: torch.Tensor, visible: int) -> torch.Tensor:
    """One decoding step: logits (B, V) after token (B, 1) at position pos (a (1,) device tensor), attending to the
    first `visible` cache positions."""
    return model.next_token_logits(token, Decoding.at(pos, visible))


def compiled_step(static: bool) -> Callable:
    """step_logits compiled, once per form for the life of the process: static (fullgraph, dynamic=False, replayed
    as a CUDA graph: one graph per batch size), or with dynamic shapes (one compilation for every position)."""
    if static not in COMPILED_STEPS:
        settings = dict(mode="reduce-overhead", dynamic=False) if static else dict(dynamic=True)
        COMPILED_STEPS[static] = torch.compile(step_logits, fullgraph=True, **settings)
    return COMPILED_STEPS[static]


def decoding_step(model: GPT, device: torch.device, compile: bool,
                  static: Optional[bool] = None) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """The step generate runs: (token, pos, filled) -> logits, filled the cache positions written so far (pos + 1).
    Static (the whole cache under the mask) by default when compiling on CUDA, else over the filled positions."""
    static = (compile and device.type == "cuda") if static is None else static
    step = compiled_step(static) if compile else step_logits
    if not static:
        return lambda token, pos, filled: step(model, token, pos, filled)
    # clone: a CUDA graph's next replay overwrites its output
    return lambda token, pos, filled: step(model, token, pos, model.config.block_size).clone()


def activation_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """The dtype of the keys and values: autocast's where it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    *,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
    vocab_limit: Optional[int] = None,
    compile: bool = False,
    static: Optional[bool] = None,
    on_token: Optional[Callable[[torch.Tensor], None]] = None,
) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled tokens, (B, T + max_new_tokens); temperature 0 is greedy.

    top_p, repetition_penalty: see filter_logits. vocab_limit restricts sampling to ids below it: the rows a padded
    vocabulary adds are no tokens. on_token, if given, receives each new (B, 1) column as it is sampled (for
    streaming; it costs a device sync if it reads the values). With use_cache, the prompt is prefilled into the KV
    caches and each new token is one decoding step (compile: compiled; static: over the whole cache, see
    decoding_step), up to block_size; from there, or throughout without use_cache, each token recomputes its whole
    window (the reference path)."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be a non-empty (batch, time) tensor, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
    vocab_limit = min(vocab_limit or model.config.vocab_size, model.config.vocab_size)
    if top_k is not None and not 1 <= top_k <= vocab_limit:
        raise ValueError(f"top_k must be in 1..{vocab_limit}, got {top_k}")
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=idx.dtype, device=idx.device)  # (B, T + max_new_tokens)
    out[:, :T] = idx

    def emit(length: int, logits: torch.Tensor) -> torch.Tensor:
        """Sample the token after the first `length` of out, put it there and hand it on: (B, 1)."""
        next_id = sample_next(logits[:, :vocab_limit], temperature, top_k, generator, top_p=top_p,
                              repetition_penalty=repetition_penalty, previous=out[:, :length])
        out[:, length] = next_id[:, 0]
        if on_token is not None:
            on_token(next_id)
        return next_id

    # the cache holds block_size positions: tokens T..block_size come from it, the rest from sliding windows
    cached = min(max_new_tokens, max(0, model.config.block_size - T + 1)) if use_cache else 0
    was_training = model.training
    model.eval()
    if cached:
        decode_with_cache(model, out[:, :T], cached, emit, compile, static)
    for length in range(T + cached, T + max_new_tokens):  # the reference: the whole window for every token
        emit(length, model.next_token_logits(out[:, max(0, length - model.config.block_size) : length]))
    model.train(was_training)
    return out


def decode_with_cache(model: GPT, prompt: torch.Tensor, new_tokens: int,
                      emit: Callable[[int, torch.Tensor], torch.Tensor], compile: bool,
                      static: Optional[bool] = None) -> None:
    """The prefill of prompt (B, T), then a decoding step per token, new_tokens tokens in all, each handed to
    emit(length, logits) (see generate)."""
    B, T = prompt.shape
    device = prompt.device
    setup_caches(model, B, activation_dtype(model, device), device)
    step = decoding_step(model, device, compile, static)
    next_id = emit(T, model.next_token_logits(prompt, Decoding.at(torch.arange(T, device=device))))  # (B, 1)
    pos = torch.full((1,), T, dtype=torch.long, device=device)  # where next_id's k, v go
    with recompile_room(DECODING_GRAPHS):
        for length in range(T + 1, T + new_tokens):
            logits = step(next_id, pos, length)  # (B, V), the first `length` positions filled
            pos += 1
            next_id = emit(length, logits)


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator], *, top_p: float = 1.0, repetition_penalty: float = 1.0,
                previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B, 1), as filter_logits has them: the likeliest at temperature 0,
    else drawn from their softmax with `generator`."""
    logits = filter_logits(logits, temperature, top_k, top_p, repetition_penalty, previous)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: float = 1.0,
                  repetition_penalty: float = 1.0, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """logits (B, V) as sampling sees them, in transformers' order: each token of `previous` (B, L: the text so far,
    the prompt included) penalised (its logit divided by the penalty, or multiplied where negative), then divided by
    the temperature (not at 0: greedy), then all but the top_k likeliest and all outside the top_p nucleus (the
    fewest likeliest tokens whose probabilities add up to top_p) at -inf."""
    if repetition_penalty != 1.0 and previous is not None:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, previous, True)  # (B, V)
        penalised = torch.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature == 0:
        return logits
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # the mass of the likelier tokens: a token is in while it is < top_p
        outside = before >= top_p  # in the sorted order; then back in the vocabulary's
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(1, order, outside), float("-inf"))
    return logits
