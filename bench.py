"""Speed figures, measured side by side in one run (these machines are noisy: compare ratios, not absolutes).

    python bench.py train                                   # GPT-2 124M, B=64, T=1024 on CUDA (mini, B=8, T=128 on CPU)
    python bench.py train --model gpt2 -B 4 -T 256 --compare-hf   # ... and transformers' GPT2LMHeadModel beside it
    python bench.py generate --model gpt2 --batch 1 8 --compare-hf   # sampling with and without the KV cache
    python bench.py data                                    # tokenizer pipeline vs single-thread encode_ordinary

Training: tokens/s, ms/step (forward, backward, clipping and the AdamW step), MFU, peak memory (CUDA) and
memory.py's estimate of it. MFU counts 6N + 12 * n_layer * n_embd * T FLOPs per token (N: parameters without the
position embedding) against the device's peak bf16 FLOP/s (989e12 for an H100 SXM; --peak-flops for others).
Every figure is the median of --repeats timed runs after --warmup untimed ones. --json prints one JSON object
instead of the table.
"""

import contextlib
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from checkpoint import load_model
from cli import each, first_line, non_negative, option, parse_subcommand, positive, run_cli
from devices import (
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    DEVICE_FLAG,
    DTYPE_FLAG,
    INFERENCE_DTYPE_HELP,
    TRAIN_DTYPE_HELP,
    allow_tf32,
    autocast,
    check_device,
    compile_model,
    compile_wanted,
    device_and_dtype,
    graphs_compiled,
    peak_flops_of,
    recompile_room,
    synchronize,
)
from dataloader import ShardLoader
from fineweb import BUNDLED_CORPUS, expand_inputs, iter_local_documents
from memory import GIB, Setting
from memory import total as memory_total
from metrics import mfu_percent
from model import GPT, PADDED_VOCAB_SIZE, config_from_preset
from optim import configure_optimizers
from plot import parse_log
from tokenizer import N_VOCAB, get_tokenizer

ROOT = Path(__file__).resolve().parent
# Defaults when no shape is given: the GPU goal's setting on CUDA, something a laptop CPU runs in about a minute
# elsewhere. Training: (model, B, T); decoding: (model, new tokens).
TRAIN_DEFAULTS = {"cuda": ("gpt2", 64, 1024), "other": ("mini", 8, 128)}
GENERATE_DEFAULTS = {"cuda": ("gpt2", 256), "other": ("small", 64)}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of fn, the device's queued work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of fn over repeats, after warmup untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def progress(text: str) -> None:
    """A line on stderr as each measurement completes (the table, or --json, comes at the end on stdout)."""
    print(f"  {text}", file=sys.stderr, flush=True)


def describe_device(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return f"{device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def report(header: str, rows: list[dict[str, Any]], columns: list[str], ratios: dict[str, float], as_json: bool):
    if as_json:
        print(json.dumps({"device": header, "rows": rows, "ratios": ratios}, indent=1))
        return
    print(header)
    print_table(rows, columns)
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")


# ----------------------------------------------------------------------------------------------------------------
# Training step


def transformers_twin(model):
    """transformers' GPT2LMHeadModel with our model's config and weights (SDPA attention, like ours)."""
    return model.to_hf(attn_implementation="sdpa")


@dataclass
class Levers:
    """The training-speed levers of train_gpt2.py (--loss-chunk-size, --attention, --compile-mode), and the
    micro-batch as a multiple of -B (what the memory a chunked loss frees can buy)."""

    loss_chunk_size: int = 0
    attention: str = "auto"
    compile_mode: str = "default"
    batch_scale: int = 1


@dataclass
class Contender:
    """One model and set-up, ready to time: a whole optimizer step, and what was measured while preparing it."""

    name: str
    batch: int
    step: Callable[[], torch.Tensor]  # one optimizer step; returns its loss
    fixed_loss: float  # on the shared fixed batch, before any update: the first step's loss
    first_seconds: float  # the first step, compilation included
    graphs: Optional[int]  # compiled by the first step (None: not compiled)
    peak_memory_gib: Optional[float]  # the whole contender: its weights, AdamW state, activations
    estimated_gib: Optional[float] = None  # memory.py's estimate (eager), for our model
    recompiles: int = 0  # graphs compiled after the first step: a fault, its times measure compilation
    times: list[float] = field(default_factory=list)

    def run(self, device: torch.device, record: bool = True) -> None:
        """One more step, timed (when record) and watched for recompilation."""
        before = graphs_compiled()
        seconds = timed(self.step, device)
        self.recompiles += graphs_compiled() - before
        if record:
            self.times.append(seconds)


@dataclass
class FixedBatch:
    """What every contender of a training benchmark shares: one fixed batch, the command's flags, device and
    autocast dtype."""

    x: torch.Tensor  # (B, T) token ids
    y: torch.Tensor  # (B, T) targets
    args: Any
    device: torch.device
    dtype: torch.dtype

    def prepare(self, name: str, build: Callable[[], torch.nn.Module], loss_of: Callable, levers: Levers) -> Contender:
        """A contender: its model built (its memory counted from here: what earlier contenders hold is not), the
        levers applied, AdamW as in training, and the warm-up steps run. The first step compiles the one graph of
        the training step and gives the fixed-batch loss (the initial weights, before its update)."""
        device, dtype, args = self.device, self.dtype, self.args
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        model = build()
        if isinstance(model, GPT):
            model.set_attention(levers.attention)
        optimizer = configure_optimizers(model.parameters(), 0.1, 6e-4, device.type, log=None)  # any model's
        forward = compile_model(model, levers.compile_mode) if args.compile else model
        scale = levers.batch_scale
        bx, by = self.x.repeat(scale, 1), self.y.repeat(scale, 1)  # (scale * B, T): a larger micro-batch, same tokens

        def step() -> torch.Tensor:
            with autocast(device, dtype):
                loss = loss_of(forward, bx, by, levers.loss_chunk_size)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        losses = []
        before = graphs_compiled()
        first_seconds = timed(lambda: losses.append(step()), device)
        graphs = graphs_compiled() - before if args.compile else None
        estimated = None
        if isinstance(model, GPT):
            setting = Setting(model.config, self.x.size(0) * scale, self.x.size(1), dtype != torch.float32,
                              loss_chunk=levers.loss_chunk_size)
            estimated = memory_total(setting) / GIB
        contender = Contender(name, self.x.size(0) * scale, step, losses[0].item(), first_seconds, graphs, None,
                              estimated)
        for _ in range(args.warmup - 1):
            contender.run(device, record=False)
        if device.type == "cuda":
            contender.peak_memory_gib = (torch.cuda.max_memory_allocated(device) - resident) / GIB
        return contender


def time_interleaved(contenders: list[Contender], repeats: int, device: torch.device) -> None:
    """repeats rounds of one step each (A B C, B C A, ...): machine drift reaches every contender alike."""
    for r in range(repeats):
        for i in range(len(contenders)):
            contenders[(i + r) % len(contenders)].run(device)


def train_row(c: Contender, T: int, flops_per_token: int, peak: Optional[float], args) -> dict[str, Any]:
    """A contender's row: its median step as tokens/s and MFU, unless it recompiled (then only what it compiled)."""
    seconds = statistics.median(c.times) if c.times and not c.recompiles else None
    tokens_per_s = c.batch * T / seconds if seconds else None
    return {
        "bench": "train", "impl": c.name, "B": c.batch, "T": T, "dtype": str(args.dtype).split(".")[-1],
        "compile": args.compile, "ms_per_step": 1000 * seconds if seconds else None, "tokens_per_s": tokens_per_s,
        "mfu_percent": mfu_percent(flops_per_token, tokens_per_s, peak) if tokens_per_s else None,
        "peak_memory_gib": c.peak_memory_gib, "estimated_gib": c.estimated_gib,
        "compile_s": c.first_seconds - seconds if args.compile and seconds else None,  # the first step's extra time
        "graphs": c.graphs, "recompiles": c.recompiles if args.compile else None,
    }


def sweep_levers(args, device: torch.device, B: int, T: int) -> list[tuple[str, Levers]]:
    """The levers one at a time, and the combinations that make sense, beside the flags' own setting."""
    base = Levers(args.loss_chunk_size, args.attention, args.compile_mode)
    chunk = base.loss_chunk_size or max(1, B * T // 8)  # 8 chunks of the micro-batch's positions
    cuda = device.type == "cuda"
    levers = [("as given (today's defaults)", base),
              (f"loss in chunks of {chunk:,}", replace(base, loss_chunk_size=chunk)),
              (f"loss in chunks of {chunk:,}, 2x micro-batch", replace(base, loss_chunk_size=chunk, batch_scale=2))]
    for backend in ("flash", "efficient", "cudnn") if cuda else ("flash", "math"):
        if backend != base.attention:
            levers.append((f"attention {backend}", replace(base, attention=backend)))
    if args.compile:  # autotuning compiles for minutes: one contender, so the sweep fits one short GPU call
        levers.append(("compile max-autotune-no-cudagraphs", replace(base, compile_mode="max-autotune-no-cudagraphs")))
    return levers


def bench_train(args) -> None:
    device, dtype = args.device, args.dtype
    defaults = TRAIN_DEFAULTS["cuda" if device.type == "cuda" else "other"]
    name, B, T = args.model or defaults[0], args.batch_size or defaults[1], args.seq_len or defaults[2]
    args.compile = compile_wanted(args.compile, device)
    allow_tf32(device)
    config = config_from_preset(name, vocab_size=args.vocab_size)
    config.check_context(T, what=f"--seq-len {T}")
    torch.manual_seed(0)
    reference = GPT(config)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    batch = FixedBatch(torch.randint(0, N_VOCAB, (B, T), device=device),
                       torch.randint(0, N_VOCAB, (B, T), device=device), args, device, dtype)
    peak = peak_flops_of(device, args.peak_flops)
    flops_per_token = reference.flops_per_token(T)

    def ours() -> GPT:  # a fresh copy of the same initial weights for every contender
        model = GPT(config)
        model.load_state_dict(initial)
        return model.to(device)

    # each library's own way of getting the training loss: ours from targets, transformers' from shifted labels
    def our_loss(m, idx, targets, chunk):
        return m(idx, targets, loss_chunk_size=chunk)[1]

    def hf_loss(m, idx, targets, chunk):
        return m(input_ids=idx, labels=idx).loss

    if args.sweep:
        plan = [(label, ours, our_loss, levers) for label, levers in sweep_levers(args, device, B, T)]
    else:
        plan = [("ours", ours, our_loss, Levers(args.loss_chunk_size, args.attention, args.compile_mode))]
        if args.compare_hf:
            plan.append(("transformers", lambda: transformers_twin(ours().cpu()).to(device), hf_loss, Levers()))
    contenders = []
    with recompile_room(4 * len(plan)):  # every contender compiles the same forward again: keep all their graphs
        for label, build, loss_of, levers in plan:
            try:
                contenders.append(batch.prepare(label, build, loss_of, levers))
                progress(f"prepared {label}: first step {contenders[-1].first_seconds:.1f} s")
            except (RuntimeError, ValueError) as e:  # a kernel this GPU or build lacks: say so, measure the rest
                print(f"skipped {label}: {first_line(e)[:160]}", file=sys.stderr)
        progress(f"timing {len(contenders)} contender(s), {args.repeats} interleaved rounds")
        time_interleaved(contenders, args.repeats, device)
    rows = [train_row(c, T, flops_per_token, peak, args) for c in contenders]
    for row, c in zip(rows, contenders):
        row.update(model=name, loss_vs_first=c.fixed_loss - contenders[0].fixed_loss if args.sweep else None)
        if c.recompiles:
            print(f"fault: {c.name} compiled {c.recompiles} more graph(s) after its first step; its times measure "
                  f"compilation and are not reported", file=sys.stderr)
    ratios = {}
    first = rows[0]["tokens_per_s"] if rows else None
    if args.compare_hf and not args.sweep and len(rows) == 2 and first and rows[1]["tokens_per_s"]:
        ratios["training tokens/s, ours / transformers"] = first / rows[1]["tokens_per_s"]
    if args.sweep and first:
        ratios.update({f"{row['impl']} / first": row["tokens_per_s"] / first
                       for row in rows[1:] if row["tokens_per_s"]})
    columns = ["impl", "B", "T", "dtype", "compile", "ms_per_step", "tokens_per_s", "mfu_percent", "peak_memory_gib",
               "estimated_gib", "compile_s", "graphs", "recompiles", "loss_vs_first"]
    report(describe_device(device) + f", {name}", rows, columns, ratios, args.json)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def decoding_costs(generate: Callable[..., object], tokens: int, device: torch.device) -> dict[str, Optional[float]]:
    """Per new token of generate(on_token=...): the host's time per decoding call (the median gap between two
    tokens handed out, nothing waiting for the device: on a GPU, what launching a step costs the host), and on CUDA
    the GPU's busy time (its kernels, from the profiler). Host time near the wall time per token, GPU busy time
    well below it: the step is host-bound."""
    stamps = []
    synchronize(device)
    generate(on_token=lambda column: stamps.append(time.perf_counter()))
    synchronize(device)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    costs = {"host_ms_per_call": 1000 * statistics.median(gaps) if gaps else None, "gpu_busy_ms_per_token": None}
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generate()
            synchronize(device)
        busy_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
        costs["gpu_busy_ms_per_token"] = busy_us / 1000 / tokens
    return costs


def bench_generate(args) -> None:
    device, dtype = args.device, args.dtype
    defaults = GENERATE_DEFAULTS["cuda" if device.type == "cuda" else "other"]
    args.model, args.tokens = args.model or defaults[0], args.tokens or defaults[1]
    torch.manual_seed(0)
    model = load_model(args.init, device) if args.init else GPT(config_from_preset(args.model)).to(device)
    name = args.init or args.model
    # transformers' twin from the same weights, both cast to the compute dtype, as sample.py runs ours
    hf = transformers_twin(model).to(device, dtype).eval() if args.compare_hf else None
    model = model.cast_for_inference(dtype).eval()
    rows, ratios = [], {}
    for batch in args.batch:
        prompt = torch.randint(0, N_VOCAB, (batch, args.prompt_len), device=device)
        runs = {
            "ours, KV cache": lambda **kw: model.generate(prompt, args.tokens, temperature=0, **kw),
            "ours, cache-free": lambda **kw: model.generate(prompt, args.tokens, temperature=0, use_cache=False, **kw),
        }
        if args.whole_cache:
            runs["ours, KV cache, whole cache"] = lambda **kw: model.generate(prompt, args.tokens, temperature=0,
                                                                              static=True, **kw)
        if args.compile:
            runs["ours, KV cache, compiled"] = lambda **kw: model.generate(prompt, args.tokens, temperature=0,
                                                                           compile=True, **kw)
        if hf is not None:
            mask = torch.ones_like(prompt)
            runs["transformers generate"] = lambda: hf.generate(
                prompt, attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None,
            )
        speed = {}
        for impl, fn in runs.items():
            with torch.no_grad(), autocast(device, dtype):
                seconds = median_time(fn, args.repeats, device)
                costs = decoding_costs(fn, args.tokens, device) if impl.startswith("ours, KV cache") else {}
            speed[impl] = batch * args.tokens / seconds
            rows.append({"bench": "generate", "impl": impl, "model": name, "batch": batch,
                         "prompt": args.prompt_len, "new_tokens": args.tokens, "tokens_per_s": speed[impl],
                         "ms_per_token": 1000 * seconds / args.tokens, **costs})
            progress(f"batch {batch}, {impl}: {speed[impl]:,.1f} tokens/s")
        ratios[f"batch {batch}: KV cache / cache-free"] = speed["ours, KV cache"] / speed["ours, cache-free"]
        if args.compile:
            ratios[f"batch {batch}: compiled KV cache / KV cache"] = (
                speed["ours, KV cache, compiled"] / speed["ours, KV cache"]
            )
        if hf is not None:
            ratios[f"batch {batch}: ours (KV cache) / transformers generate"] = (
                speed["ours, KV cache"] / speed["transformers generate"]
            )
        if hf is not None and args.compile:
            ratios[f"batch {batch}: ours (compiled KV cache) / transformers generate"] = (
                speed["ours, KV cache, compiled"] / speed["transformers generate"]
            )
    columns = ["impl", "model", "batch", "prompt", "new_tokens", "tokens_per_s", "ms_per_token", "host_ms_per_call",
               "gpu_busy_ms_per_token"]
    report(describe_device(device) + f", {str(dtype).split('.')[-1]} weights, greedy", rows, columns, ratios,
           args.json)


# ----------------------------------------------------------------------------------------------------------------
# Data pipeline


def bench_data(args) -> None:

    files = expand_inputs(args.input or [str(BUNDLED_CORPUS)])
    docs = list(iter_local_documents(files, "text")) * args.copies  # enough text to amortise the pool start-up
    enc = get_tokenizer()
    t0 = time.perf_counter()
    n_tokens = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    single = n_tokens / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        # the command a user runs, process start-up included
        command = [sys.executable, str(ROOT / "fineweb.py"), "--input", str(corpus), "--out", str(Path(tmp) / "out"),
                   "--prefix", "b", "--shard-size", "10000000", "--workers", str(args.workers)]
        t0 = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pipeline = n_tokens / (time.perf_counter() - t0)
        loader = ShardLoader(Path(tmp) / "out", "train", args.batch_size, args.seq_len)
        per_batch = median_time(loader.next_batch, 50, torch.device("cpu"))
        t0 = time.perf_counter()  # the document index is built when the loader is made
        shuffled = ShardLoader(Path(tmp) / "out", "train", args.batch_size, args.seq_len, shuffle_documents=True)
        index_seconds = time.perf_counter() - t0
        per_shuffled_batch = median_time(shuffled.next_batch, 50, torch.device("cpu"))
    batch = f"B={args.batch_size} T={args.seq_len}"
    rows = [
        {"bench": "data", "impl": "single-thread encode_ordinary", "tokens": n_tokens, "tokens_per_s": single},
        {"bench": "data", "impl": f"fineweb.py, {args.workers} workers", "tokens": n_tokens, "tokens_per_s": pipeline},
        {"bench": "data", "impl": f"ShardLoader.next_batch {batch}", "ms_per_batch": 1000 * per_batch},
        {"bench": "data", "impl": f"ShardLoader.next_batch {batch}, --shuffle-documents (tokens/s: its index)",
         "tokens": n_tokens,
         "tokens_per_s": n_tokens / index_seconds, "ms_per_batch": 1000 * per_shuffled_batch},
    ]
    ratios = {f"pipeline / single-thread (goal >= {0.8 * args.workers:.1f})": pipeline / single}
    report(f"cpu, {len(docs)} documents", rows, ["impl", "tokens", "tokens_per_s", "ms_per_batch"], ratios, args.json)


def optimizer_run(args: Any, lrs: dict[str, float], seed: int) -> dict[str, Any]:
    """One train_gpt2.py run of the preset (in a directory of its own, removed after) at these peak learning rates
    ({"adamw": ...} or, with Muon, {"adamw": its AdamW part's, "muon": ...}): its val curve ({tokens: loss}), final
    val loss and median step time."""
    from train_gpt2 import parse_config, train

    optimizer = "muon" if "muon" in lrs else "adamw"
    with tempfile.TemporaryDirectory(prefix="bench-optimizer-") as run_dir:
        flags = ["--preset", args.preset, "--optimizer", optimizer, "--seed", str(seed), "--run-dir", run_dir,
                 "--eval-interval", str(args.eval_interval), "--sample-interval", "0", "--hellaswag-interval", "0",
                 "--checkpoint-interval", "0", "--checkpoint-minutes", "0", "--no-tensorboard",
                 "--max-lr", str(lrs["adamw"])]
        flags += ["--muon-lr", str(lrs["muon"])] if optimizer == "muon" else []
        flags += ["--model", args.model] if args.model else []
        flags += shlex.split(args.train_args)
        flags += ["--max-steps", str(args.max_steps)] if args.max_steps else []
        cfg = parse_config(flags)
        with contextlib.redirect_stdout(sys.stderr):  # the runs' console beside the progress; stdout: the report
            result = train(cfg)
        curve = {step * cfg.total_batch_size: loss for step, loss in parse_log(Path(run_dir) / "log.txt")["val"]}
    progress(f"{optimizer} lr {lrs[optimizer]:g} seed {seed}: val {result['val_loss']:.4f}")
    step_ms = 1000 * statistics.median(result["step_times"][1:])  # the first step includes the warm-up
    return {"curve": curve, "val": result["val_loss"], "ms_per_step": step_ms}


def tokens_to_reach(curve: dict[int, float], target: float) -> Optional[float]:
    """The tokens at which a val curve first reaches `target`, interpolated between evaluations; None if never."""
    points = sorted(curve.items())
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if v1 <= target:
            return t1 if v0 == v1 else t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def bench_optimizers(args) -> None:
    """Each optimizer's learning rate swept on the first seed, then its best one on every seed; AdamW's mean final
    val loss is the target that Muon's curves are read against. Muon's runs keep AdamW's best learning rate for
    the parameters AdamW still trains (embeddings, norms, biases): only the block matrices' optimizer changes."""
    best, runs = {}, {}
    for optimizer, lrs in (("adamw", args.adamw_lr), ("muon", args.muon_lr)):
        rates = {lr: {**best, optimizer: lr} for lr in lrs}  # muon's runs: AdamW's best, then Muon's lr
        sweep = {lr: optimizer_run(args, rates[lr], args.seeds[0]) for lr in lrs}
        best[optimizer] = min(sweep, key=lambda lr: sweep[lr]["val"])
        runs[optimizer] = [sweep[best[optimizer]]] + [optimizer_run(args, rates[best[optimizer]], seed)
                                                      for seed in args.seeds[1:]]
        for lr, run in sweep.items():
            progress(f"sweep: {optimizer} lr {lr:g}: final val {run['val']:.4f}")
    target = statistics.mean(run["val"] for run in runs["adamw"])
    total = max(runs["adamw"][0]["curve"])
    rows = []
    for optimizer in ("adamw", "muon"):
        vals = [run["val"] for run in runs[optimizer]]
        reach = [tokens_to_reach(run["curve"], target) for run in runs[optimizer]]
        rows.append({"bench": "optimizers", "optimizer": optimizer, "lr": best[optimizer], "seeds": len(vals),
                     "val_mean": statistics.mean(vals), "val_min": min(vals), "val_max": max(vals),
                     "tokens_to_adamw_final": statistics.mean(reach) if None not in reach else None,
                     "ms_per_step": statistics.median(run["ms_per_step"] for run in runs[optimizer])})
    muon, adamw = rows[1], rows[0]
    ratios = {"muon / adamw step time": muon["ms_per_step"] / adamw["ms_per_step"]}
    if muon["tokens_to_adamw_final"]:
        ratios[f"adamw's tokens / muon's, to val {target:.4f} (goal >= 1.3)"] = total / muon["tokens_to_adamw_final"]
    report(f"{args.preset}{' ' + args.model if args.model else ''}, {total:,} tokens, seeds {args.seeds}", rows,
           ["optimizer", "lr", "seeds", "val_mean", "val_min", "val_max", "tokens_to_adamw_final", "ms_per_step"],
           ratios, args.json)


@dataclass
class TrainBench:
    """bench.py train: every field is a flag (--field-name), some with other names (-B, -T)."""

    model: Optional[str] = option(None, "a model.PRESETS shape (when not given: gpt2 on CUDA, mini elsewhere)",
                                  aliases=("--preset",))
    batch_size: Optional[int] = option(None, "sequences per step (when not given: 64 on CUDA, 8 elsewhere)",
                                       positive, aliases=("-B", "--micro-batch-size"))
    seq_len: Optional[int] = option(None, "tokens per sequence (when not given: 1024 on CUDA, 128 elsewhere)",
                                    positive, aliases=("-T",))
    vocab_size: int = option(PADDED_VOCAB_SIZE, f"as in training: {N_VOCAB:,} padded to a multiple of 128", positive)
    compile: Optional[bool] = option(None, "torch.compile (when not given: on CUDA)")
    warmup: int = option(3, "untimed steps first (compilation)", non_negative)
    repeats: int = option(10, "timed steps; the median is reported", positive)
    peak_flops: float = option(0.0, "peak FLOP/s of the device for MFU (0: known GPUs only)", non_negative)
    compare_hf: bool = option(False, "also time transformers' GPT2LMHeadModel (steps interleaved with ours)",
                              action="store_true")
    loss_chunk_size: int = option(0, "as train_gpt2.py's: the loss fused with the output projection, in chunks (0: "
                                     "off)", non_negative)
    attention: str = option("auto", "SDPA kernel, as in training", choices=ATTENTION_BACKENDS)
    compile_mode: str = option("default", "torch.compile mode", choices=COMPILE_MODES)
    sweep: bool = option(False, "every lever, and the combinations that make sense, beside the flags' setting, "
                                "timed interleaved", action="store_true")
    device: str = option(**DEVICE_FLAG)  # a torch.device once parse_args has resolved it
    dtype: str = option(**{**DTYPE_FLAG, "help": TRAIN_DTYPE_HELP})  # a torch.dtype once resolved
    json: bool = option(False, "one JSON object instead of the table", action="store_true")


@dataclass
class GenerateBench:
    """bench.py generate: every field is a flag (--field-name)."""

    model: Optional[str] = option(None, "a model.PRESETS shape, random weights (when not given: gpt2 on CUDA, small "
                                        "elsewhere)", aliases=("--preset",))
    init: str = option("", "or real weights: checkpoint, HF directory or hub name")
    batch: list[int] = option([1, 8], "batch sizes to measure", each(positive), nargs="+")
    prompt_len: int = option(8, "prompt tokens", positive)
    tokens: Optional[int] = option(None, "new tokens per sequence (when not given: 256 on CUDA, 64 elsewhere)",
                                   positive)
    repeats: int = option(3, "timed runs; the median is reported", positive)
    compare_hf: bool = option(False, "also time transformers' generate (greedy, cached)", action="store_true")
    compile: bool = option(False, "also time the compiled decoding step (CUDA graphs on a GPU; compiled once, in the "
                                  "warm-up)", action="store_true")
    whole_cache: bool = option(False, "also time decoding that attends to the whole cache under the mask, as the "
                                      "compiled CUDA step does, beside the filled positions only",
                               action="store_true")
    device: str = option(**DEVICE_FLAG)  # a torch.device once parse_args has resolved it
    dtype: str = option(**{**DTYPE_FLAG, "help": INFERENCE_DTYPE_HELP})  # a torch.dtype once resolved
    json: bool = option(False, "one JSON object instead of the table", action="store_true")


@dataclass
class DataBench:
    """bench.py data: every field is a flag (--field-name)."""

    input: Optional[list[str]] = option(None, "text files (when not given: the bundled corpus)", nargs="+")
    copies: int = option(8, "repeat the documents this many times", positive)
    workers: int = option(2, "fineweb.py's tokenizer processes", positive)
    batch_size: int = option(16, "B of the data loader's batches", positive)
    seq_len: int = option(1024, "T of the data loader's batches", positive)
    json: bool = option(False, "one JSON object instead of the table", action="store_true")


@dataclass
class OptimizerBench:
    """bench.py optimizers: every field is a flag (--field-name)."""

    preset: str = option("quickstart", "the train_gpt2.py preset trained: its data, schedule and length")
    model: Optional[str] = option(None, "another shape (model.PRESETS) in the preset's run")
    train_args: str = option("", "more train_gpt2.py flags for every run, in one string: \"--seq-len 64 --data-dir "
                                 "DIR\"")
    max_steps: Optional[int] = option(None, "steps of each run (when not given, the preset's)", positive)
    seeds: list[int] = option([1337, 1338, 1339], "the seeds of the model init, each a run per optimizer", nargs="+")
    adamw_lr: list[float] = option([5e-4, 1e-3, 2e-3], "AdamW peak learning rates swept (first seed)",
                                   each(positive), nargs="+")
    muon_lr: list[float] = option([1e-3, 2e-3, 4e-3, 8e-3], "Muon peak learning rates swept (first seed)",
                                  each(positive), nargs="+")
    eval_interval: int = option(10, "steps between val losses, the curve that says when Muon reaches AdamW's final",
                                positive)
    json: bool = option(False, "one JSON object instead of the table", action="store_true")


BENCHES = {"train": (TrainBench, "training step throughput, MFU and peak memory"),
           "generate": (GenerateBench, "sampling throughput with and without the KV cache"),
           "data": (DataBench, "tokenizer pipeline and data loader throughput"),
           "optimizers": (OptimizerBench, "--optimizer adamw against muon, each at its best learning rate, over seeds")}


def parse_args(argv: Optional[list[str]] = None) -> Any:
    """The subcommand's config, its device and dtype resolved (a usage error for one this machine cannot run)."""
    _, args = parse_subcommand(BENCHES, argv, first_line(__doc__))
    if isinstance(args, (TrainBench, GenerateBench)):
        args.device, args.dtype = device_and_dtype(args.device, args.dtype)
    if isinstance(args, TrainBench):
        check_device(str(args.device), "auto", args.attention)
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    {TrainBench: bench_train, GenerateBench: bench_generate, DataBench: bench_data,
     OptimizerBench: bench_optimizers}[type(args)](args)


if __name__ == "__main__":
    run_cli(main)
