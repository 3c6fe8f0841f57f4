"""Pretrain GPT-2 on pretokenized shards, in one process or with torchrun (DDP).

    python train_gpt2.py --preset quickstart                        # CPU, bundled Shakespeare, a few minutes
    python train_gpt2.py                                            # GPT-2 124M on edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py          # the same on 8 GPUs

The defaults are build-nanogpt's published GPT-2 124M run: 0.5M-token batches, 19,073 steps (10B tokens).
A run directory holds an append-only log.txt and checkpoints; rerunning the same command resumes exactly.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from cli import ArgumentParser, run_cli
from common import allow_tf32, autocast, peak_flops_of, pick_device, pick_dtype, synchronize
from dataloader import ShardLoader, list_shards
from model import GPT, PRESETS, GPTConfig
from sample import sample_texts

ROOT = Path(__file__).resolve().parent
PROJECTION_STEPS = 5  # timed steps (after the first, which compiles) before the run projects its speed and ETA
QUICKSTART_CORPUS = ROOT / "assets" / "shakespeare"


def arg(default: Any, help: str) -> Any:
    """A TrainConfig field with the help text of its flag."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every field is a command-line flag (--field-name); these defaults are build-nanogpt's GPT-2 124M run."""

    model: str = arg("gpt2", "model shape: gpt2, gpt2-medium, gpt2-large, gpt2-xl, small, tiny")
    vocab_size: int = arg(50304, "50,257 padded up to a multiple of 128 for faster matmuls")
    init_from: str = arg("", "start from these weights: a GPT-2 hub name, HF directory or checkpoint .pt")
    data_dir: str = arg("edu_fineweb10B", "directory of {prefix}_{train,val}_NNNNNN.npy shards (fineweb.py)")
    run_dir: str = arg("log", "log.txt and checkpoints")
    total_batch_size: int = arg(524288, "tokens per optimizer step, 2**19 ~ 0.5M as in GPT-3 Small")
    micro_batch_size: int = arg(64, "B, sequences per forward pass on each rank")
    seq_len: int = arg(1024, "T, tokens per sequence")
    max_lr: float = arg(6e-4, "peak learning rate, after warmup")
    min_lr_ratio: float = arg(0.1, "min_lr = min_lr_ratio * max_lr")
    warmup_steps: int = arg(715, "375M tokens, as in GPT-3")
    max_steps: int = arg(19073, "10B tokens / 524,288 per step")
    weight_decay: float = arg(0.1, "AdamW weight decay of matrices and embeddings")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this; 0 turns clipping off")
    shuffle: bool = arg(False, "seeded per-epoch permutation of the train shards")
    eval_interval: int = arg(250, "steps between validation losses")
    val_steps: int = arg(20, "micro-batches per validation")
    hellaswag_interval: int = arg(250, "0 turns HellaSwag off")
    hellaswag_path: str = arg("", "a local hellaswag_val.jsonl; default: download and cache it")
    sample_interval: int = arg(250, "0 turns samples off")
    sample_prompt: str = arg("Hello, I'm a language model,", "prompt of the samples")
    num_samples: int = arg(4, "samples at each sample step")
    sample_tokens: int = arg(32, "tokens per sample")
    checkpoint_interval: int = arg(5000, "and always at the end")
    keep_checkpoints: int = arg(2, "newest checkpoints kept; 0 keeps all")
    resume: Optional[bool] = arg(None, "continue from the newest checkpoint in run_dir; default: when there is one")
    seed: int = arg(1337, "seed of the model init, data shuffle and samples")
    device: str = arg("auto", "auto (cuda, then mps, then cpu), cpu, cuda, mps")
    dtype: str = arg("auto", "float32, bfloat16, float16; auto: bf16 on CUDA where supported, fp16 + grad scaler on "
                             "older GPUs, fp32 on CPU")
    compile: Optional[bool] = arg(None, "torch.compile the model; default: on CUDA only")
    peak_flops: float = arg(0.0, "per-device peak FLOP/s for MFU; 0: known GPUs only")


# --preset: the four GPT-2 sizes with build-nanogpt's recipe, and a small CPU run on the bundled corpus.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "gpt2-medium": dict(model="gpt2-medium", run_dir="log-medium"),
    "gpt2-large": dict(model="gpt2-large", run_dir="log-large"),
    "gpt2-xl": dict(model="gpt2-xl", run_dir="log-xl"),
    "quickstart": dict(
        model="mini", data_dir="data/shakespeare", run_dir="runs/quickstart", total_batch_size=2048,
        micro_batch_size=16, seq_len=128, max_lr=1e-3, warmup_steps=20, max_steps=150, eval_interval=25,
        val_steps=4, hellaswag_interval=0, sample_interval=150, num_samples=2, sample_tokens=48,
        checkpoint_interval=50, sample_prompt="ROMEO.\n",
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Configuration from the command line


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """--preset picks the defaults, then every explicitly given flag overrides its field."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2", choices=TRAIN_PRESETS,
                        help="a set of defaults that the other flags override (default: gpt2)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        if f.type in (bool, Optional[bool]):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=f.type, default=None, metavar=f.name.upper(), help=help_text)
    args = parser.parse_args(argv)
    values = {**TRAIN_PRESETS[args.preset]}
    values.update({k: v for k, v in vars(args).items() if k != "preset" and v is not None})
    cfg = TrainConfig(**values)
    check_config(cfg, parser)
    return cfg


def check_config(cfg: TrainConfig, parser: ArgumentParser) -> None:
    """Contradictions that only show in combination stop here, naming the flag."""
    positive = ("vocab_size", "total_batch_size", "micro_batch_size", "seq_len", "max_steps", "val_steps",
                "num_samples", "sample_tokens")
    for name in positive:
        if getattr(cfg, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "eval_interval", "hellaswag_interval", "sample_interval", "checkpoint_interval",
                 "keep_checkpoints", "weight_decay", "grad_clip", "peak_flops"):
        if getattr(cfg, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.max_lr > 0 or not 0 <= cfg.min_lr_ratio <= 1:
        parser.error("--max-lr must be > 0 and --min-lr-ratio in [0, 1]")
    if cfg.warmup_steps > cfg.max_steps:
        parser.error(f"--warmup-steps {cfg.warmup_steps} is longer than the run (--max-steps {cfg.max_steps})")
    try:
        gradient_accumulation_steps(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as e:
        parser.error(str(e))
    if cfg.data_dir != TRAIN_PRESETS["quickstart"]["data_dir"]:  # the quickstart builds its shards itself
        try:
            list_shards(cfg.data_dir, "train"), list_shards(cfg.data_dir, "val")
        except FileNotFoundError as e:
            parser.error(f"--data-dir: {e}")
    if cfg.model not in PRESETS:
        parser.error(f"--model {cfg.model!r}: choose from {', '.join(PRESETS)}")
    if not cfg.init_from and cfg.seq_len > PRESETS[cfg.model].get("block_size", 1024):
        parser.error(f"--seq-len {cfg.seq_len} is longer than the model's context "
                     f"({PRESETS[cfg.model].get('block_size', 1024)})")


def gradient_accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    tokens_per_micro_step = cfg.micro_batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size x --seq-len x "
            f"world size = {cfg.micro_batch_size} x {cfg.seq_len} x {world_size} = {tokens_per_micro_step}"
        )
    return cfg.total_batch_size // tokens_per_micro_step


def get_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to max_lr, cosine decay to min_lr at max_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# ----------------------------------------------------------------------------------------------------------------
# Processes, logs and state


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (SUM then divide: gloo has no AVG)."""
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; then nccl on CUDA, gloo on CPU."""
    if "RANK" not in os.environ:
        return Dist(), pick_device(device_name)
    ddp = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group(backend="gloo")
    return ddp, device


class RunLog:
    """The console (master rank) and the run's append-only log.txt."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "log.txt"
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def record(self, line: str) -> None:
        """One line of log.txt: '{step} {kind} {value}' events, or '#' comments."""
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(line.replace("\n", "\\n") + "\n")

    def both(self, text: str) -> None:
        self.say(text)
        self.record("# " + text)


def describe_environment() -> list[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import tiktoken

    versions = f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, " \
               f"tiktoken {tiktoken.__version__}"
    if torch.cuda.is_available():
        versions += f", cuda {torch.version.cuda}, {torch.cuda.get_device_name()}"
    return [f"versions: {versions}", f"git commit: {commit}", f"command: {' '.join(sys.argv)}"]


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_summary(cfg: TrainConfig, model: GPT, ddp: Dist, grad_accum: int, start_step: int, device: torch.device,
                dtype: torch.dtype, use_compile: bool, train_loader: ShardLoader, val_loader: ShardLoader) -> list[str]:
    """The block printed at the start of a run: what will be trained, on what, for how long, and where it goes."""
    tokens_per_step = cfg.total_batch_size  # = B x T x grad_accum x world size, checked by gradient_accumulation_steps
    every = f"every {cfg.checkpoint_interval:,} steps and at the end" if cfg.checkpoint_interval else "at the end"
    precision = "fp32" if dtype == torch.float32 else f"{str(dtype).replace('torch.', '')} autocast"
    return [
        "run summary",
        f"  model       {cfg.init_from or cfg.model}: {model.num_params():,} parameters, "
        f"{dataclasses.asdict(model.config)}",
        f"  batch       {tokens_per_step:,} tokens/step = {cfg.micro_batch_size} x {cfg.seq_len} x {grad_accum} "
        f"gradient accumulation x {ddp.world_size} ranks",
        f"  steps       {start_step:,} -> {cfg.max_steps:,} (warmup {cfg.warmup_steps:,}), "
        f"{cfg.max_steps * tokens_per_step:,} tokens in all, {(cfg.max_steps - start_step) * tokens_per_step:,} to go",
        f"  data        {cfg.data_dir}: {len(train_loader.paths)} train / {len(val_loader.paths)} val shards",
        f"  precision   {device}, {precision}, compile {'on' if use_compile else 'off'}",
        f"  run dir     {cfg.run_dir}: log.txt, checkpoints {every} (newest {cfg.keep_checkpoints or 'all'} kept)",
    ]


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def ensure_quickstart_data(cfg: TrainConfig, ddp: Dist, log: RunLog) -> None:
    """The quickstart tokenizes the bundled corpus on first use."""
    try:
        list_shards(cfg.data_dir, "train")
        return
    except FileNotFoundError:
        pass
    if ddp.master:
        from fineweb import Source, build_shards, expand_inputs

        log.say(f"tokenizing the bundled corpus {QUICKSTART_CORPUS} -> {cfg.data_dir}")
        build_shards(Source("local", files=expand_inputs([str(QUICKSTART_CORPUS)])), Path(cfg.data_dir),
                     prefix="shakespeare", workers=1)
    ddp.barrier()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: ShardLoader, steps: int, ctx, ddp: Dist) -> float:
    """Mean loss over `steps` val micro-batches per rank, from the start of the val split, averaged over ranks."""
    model.eval()
    loader.reset()
    total = torch.zeros((), device=loader.device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with ctx():
            _, loss = model(x, y)
        total += loss.detach().float()
    model.train()
    return ddp.all_mean(total / steps).item()


class Hellaswag:
    """HellaSwag inside training: split across ranks, counts summed; off (said once) when the data is missing."""

    def __init__(self, cfg: TrainConfig, ddp: Dist, log: RunLog):
        self.examples = None
        if not cfg.hellaswag_interval:
            return
        try:
            from hellaswag import load_examples

            self.examples = load_examples("val", cfg.hellaswag_path or None)
        except (OSError, ValueError) as e:
            log.both(f"HellaSwag is off for this run: {e}")

    def evaluate(self, model: GPT, ctx, ddp: Dist) -> Optional[float]:
        if self.examples is None:
            return None
        from hellaswag import score_examples

        mine = self.examples[ddp.rank :: ddp.world_size]
        device = next(model.parameters()).device
        with ctx():
            counts = score_examples(model, mine, device=device)
        totals = torch.tensor([counts["acc_norm_correct"], counts["total"]], dtype=torch.float64, device=device)
        if ddp.enabled:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return (totals[0] / totals[1]).item()


# ----------------------------------------------------------------------------------------------------------------
# The run


def build_model(cfg: TrainConfig, resume_state: Optional[dict], log: RunLog) -> GPT:
    if resume_state is not None:
        return model_from_checkpoint(resume_state, source="resume checkpoint")
    if cfg.init_from:
        log.both(f"initialising from {cfg.init_from}")
        model = load_model(cfg.init_from)
        if cfg.seq_len > model.config.block_size:
            raise ValueError(f"--seq-len {cfg.seq_len} is longer than {cfg.init_from}'s context "
                             f"({model.config.block_size})")
        return model
    return GPT(GPTConfig(**{**PRESETS[cfg.model], "vocab_size": cfg.vocab_size}))


def find_resume_checkpoint(cfg: TrainConfig) -> Optional[Path]:
    found = list_checkpoints(cfg.run_dir)
    if cfg.resume and not found:
        raise ValueError(f"--resume: no checkpoint (ckpt_NNNNNN.pt) in {cfg.run_dir}")
    return found[-1] if found and cfg.resume is not False else None


def train(cfg: TrainConfig) -> dict[str, Any]:
    ddp, device = setup_distributed(cfg.device)
    try:
        return run(cfg, ddp, device)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: TrainConfig, ddp: Dist, device: torch.device) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    log = RunLog(run_dir, ddp.master)
    dtype = pick_dtype(device, cfg.dtype)
    use_compile = device.type == "cuda" if cfg.compile is None else cfg.compile
    allow_tf32(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    grad_accum = gradient_accumulation_steps(cfg, ddp.world_size)
    if cfg.data_dir == TRAIN_PRESETS["quickstart"]["data_dir"]:
        ensure_quickstart_data(cfg, ddp, log)

    resume_path = find_resume_checkpoint(cfg)
    resume_state = load_checkpoint(resume_path) if resume_path else None
    model = build_model(cfg, resume_state, log).to(device)
    vocab_size = model.config.vocab_size
    loader_args = dict(B=cfg.micro_batch_size, T=cfg.seq_len, rank=ddp.rank, world_size=ddp.world_size,
                       device=device, vocab_size=vocab_size)
    train_loader = ShardLoader(cfg.data_dir, "train", shuffle=cfg.shuffle, seed=cfg.seed, **loader_args)
    val_loader = ShardLoader(cfg.data_dir, "val", **loader_args)

    log.record(f"# run started {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    log.record("# config " + json.dumps(dataclasses.asdict(cfg)))
    log.record("# model " + json.dumps(dataclasses.asdict(model.config)))
    for line in describe_environment():
        log.record("# " + line)

    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.max_lr, device.type, log=log.both)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_step, val_loss = 0, None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        train_loader.load_state_dict(resume_state["loader"])
        set_rng_state(resume_state["rng"])
        if "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        start_step, val_loss = resume_state["step"], resume_state.get("val_loss")
        log.both(f"resumed from {resume_path} at step {start_step}")

    raw_model = model
    if use_compile:
        model = torch.compile(model)
    train_model = DDP(model, device_ids=[ddp.local_rank] if device.type == "cuda" else None) if ddp.enabled \
        else model
    ctx = lambda: autocast(device, dtype)  # noqa: E731
    hellaswag = Hellaswag(cfg, ddp, log)
    min_lr = cfg.max_lr * cfg.min_lr_ratio
    tokens_per_step = cfg.total_batch_size
    flops_per_token = raw_model.flops_per_token(cfg.seq_len)
    peak = peak_flops_of(device, cfg.peak_flops)

    for line in run_summary(cfg, raw_model, ddp, grad_accum, start_step, device, dtype, use_compile,
                            train_loader, val_loader):
        log.both(line)

    def save(step: int) -> None:
        if not ddp.master:
            return
        state = {
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": dataclasses.asdict(raw_model.config),
            "train_config": dataclasses.asdict(cfg),
            "step": step,
            "loader": train_loader.state_dict(),
            "rng": rng_state(),
            "val_loss": val_loss,
        }
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        path = checkpoint_path(run_dir, step)
        save_checkpoint(path, state)
        prune_checkpoints(run_dir, cfg.keep_checkpoints)
        log.both(f"saved checkpoint {path}")

    def due(interval: int, step: int) -> bool:
        return bool(interval) and step % interval == 0

    step_times: list[float] = []
    losses: list[float] = []
    step = start_step
    last_saved = start_step if resume_state is not None else -1
    try:
        while True:
            last = step == cfg.max_steps
            # a checkpoint is written after its step's evaluations, so a resumed run does not repeat them
            fresh = resume_state is None or step != start_step
            if fresh and (due(cfg.eval_interval, step) or last):
                val_loss = evaluate_loss(model, val_loader, cfg.val_steps, ctx, ddp)
                log.say(f"step {step:5d} | val loss {val_loss:.4f}")
                log.record(f"{step} val {val_loss:.4f}")
            if fresh and (due(cfg.hellaswag_interval, step) or (last and cfg.hellaswag_interval)):
                acc_norm = hellaswag.evaluate(raw_model, ctx, ddp)
                if acc_norm is not None:
                    log.say(f"step {step:5d} | HellaSwag acc_norm {acc_norm:.4f}")
                    log.record(f"{step} hella {acc_norm:.4f}")
            if fresh and ddp.master and step > 0 and (due(cfg.sample_interval, step) or (last and cfg.sample_interval)):
                texts = sample_texts(raw_model, cfg.sample_prompt, cfg.num_samples, cfg.sample_tokens,
                                     top_k=50, seed=cfg.seed, dtype=dtype)
                for i, text in enumerate(texts, start=1):
                    log.say(f"sample {i}: {text}")
                    log.record(f"# step {step} sample {i}: {text}")
            if fresh and step > 0 and (due(cfg.checkpoint_interval, step) or last):
                save(step)
                last_saved = step
            if last:
                break

            t0 = time.time()
            lr = get_lr(step, cfg.max_lr, min_lr, cfg.warmup_steps, cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro_step in range(grad_accum):
                x, y = train_loader.next_batch()
                sync = micro_step == grad_accum - 1  # all-reduce gradients only once, on the last micro-step
                with train_model.no_sync() if ddp.enabled and not sync else contextlib.nullcontext():
                    with ctx():
                        _, loss = train_model(x, y)
                    loss = loss / grad_accum  # the mean over micro-steps, as one big batch would have
                    loss_sum += loss.detach()
                    scaler.scale(loss).backward()
            ddp.all_mean(loss_sum)
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or float("inf"))
            loss_value, norm_value = loss_sum.item(), norm.item()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)) and not scaler.is_enabled():
                raise FloatingPointError(
                    f"step {step}: non-finite loss {loss_value} or gradient norm {norm_value}; stopped before the "
                    f"update. The last good checkpoint is left in {run_dir}; try a lower --max-lr or more warmup"
                )
            scaler.step(optimizer)  # with fp16 a non-finite step is skipped and the scale lowered
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            dt = time.time() - t0
            step_times.append(dt)
            losses.append(loss_value)

            tokens_per_sec = tokens_per_step / dt
            recent = step_times[1:][-20:] or step_times  # the first step includes compilation
            seconds_per_step = sum(recent) / len(recent)
            eta = format_duration((cfg.max_steps - step - 1) * seconds_per_step)
            if len(step_times) == PROJECTION_STEPS + 1:
                log.both(f"projected after {PROJECTION_STEPS} timed steps: {tokens_per_step / seconds_per_step:,.0f} "
                         f"tok/s, {1000 * seconds_per_step:,.0f} ms/step; ETA {eta} for the remaining "
                         f"{cfg.max_steps - step - 1:,} steps, evaluations not included")
            mfu = f"{100 * flops_per_token * tokens_per_sec / ddp.world_size / peak:.1f}%" if peak else "n/a"
            log.say(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm_value:.4f} | "
                    f"dt {1000 * dt:.0f}ms | tok/s {tokens_per_sec:,.0f} | MFU {mfu} | ETA {eta}")
            log.record(f"{step} train {loss_value:.6f}")
            log.record(f"{step} lr {lr:.4e}")
            log.record(f"{step} norm {norm_value:.4f}")
            step += 1
    except KeyboardInterrupt:
        if not ddp.enabled and step > last_saved and step > 0:
            log.both(f"interrupted: saving the {step} finished steps")
            save(step)
        raise
    return {"losses": losses, "val_loss": val_loss, "step_times": step_times, "run_dir": str(run_dir)}


def main(argv: Optional[list[str]] = None) -> None:
    cfg = parse_config(argv)
    result = train(cfg)
    if "RANK" not in os.environ or os.environ["RANK"] == "0":
        print(f"done: final val loss {result['val_loss']:.4f}; sample with: "
              f"python sample.py --init {checkpoint_path(cfg.run_dir, cfg.max_steps)}")


if __name__ == "__main__":
    run_cli(main)
