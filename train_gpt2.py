"""Pretrain GPT-2 on pretokenized shards, in one process or with torchrun (DDP or FSDP2).

    python train_gpt2.py --preset quickstart                        # CPU, bundled Shakespeare, a few minutes
    python train_gpt2.py                                            # GPT-2 124M on edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py          # the same on 8 GPUs
    python train_gpt2.py --config my_run.toml --max-lr 3e-4         # settings from a file, then the command line

The defaults are build-nanogpt's published GPT-2 124M run: 0.5M-token batches, 19,073 steps (10B tokens).
A run directory holds an append-only log.txt, its resolved config.toml and checkpoints; rerunning the same command
resumes exactly. Ctrl-C, SIGTERM (preemption) or SIGHUP (a closed terminal) stops every rank at the next step
boundary, with a checkpoint of exactly that step.
"""

import signal

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    # Until the run installs its stop handlers, Ctrl-C ends the process quietly, not with a traceback of whichever
    # import below it interrupted (an ignored SIGINT stays ignored).
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import dataclasses  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import DEFAULT_RUN_DIR, CheckpointSchedule, TrainState, checkpoint_path  # noqa: E402
from checkpoint import config_from_checkpoint, load_model, newest_checkpoint, what_is_there  # noqa: E402
from cli import UsageError, check_fields, fraction, non_negative, option, parse_dataclass  # noqa: E402
from cli import positive, run_cli, seed_range, write_config_file  # noqa: E402
from context import RunContext, started  # noqa: E402
from dataloader import check_data_dir, data_fingerprint  # noqa: E402
from devices import (ATTENTION_BACKENDS, COMPILE_MODES, DEVICE_FLAG, DTYPE_FLAG, TRAIN_DTYPE_HELP,  # noqa: E402
                     check_compile_mode, check_device, compile_wanted, device_memory, peak_flops_of, pick_dtype)
from distributed import CHECKPOINTING, PARALLEL_MODES, Ranks, check_fsdp, clip_grad_norm, gradient_sync  # noqa: E402
from distributed import parallelize  # noqa: E402
from evaluate import Evaluator, evaluate_model, take_the_evaluated_runs  # noqa: E402
from fineweb import BUNDLED_CORPUS, QUICKSTART_DATA, bundled_corpus_missing, is_quickstart_data  # noqa: E402
from fineweb import tokenize_bundled_corpus  # noqa: E402
from hellaswag import load_for_training  # noqa: E402
from memory import Setting, fit_report  # noqa: E402
from metrics import StepTimer, check_wandb_installed, run_summary  # noqa: E402
from model import DEFAULT_MODEL, GPT, PADDED_VOCAB_SIZE, PRESETS, GPTConfig, config_from_preset  # noqa: E402
from optim import configure_muon, configure_optimizers, muon_available  # noqa: E402
from resume import ResumePoint, continue_from, first_start_only, rerun_advice, resume_point  # noqa: E402
from resume import shape_conflicts, shape_given  # noqa: E402
from tokenizer import N_VOCAB  # noqa: E402

PER_INVOCATION = ("resume", "resume_from", "allow_data_change", "eval_only")  # not in a run's config.toml
MUON_LR = 4e-3  # --optimizer muon's peak learning rate: the best of a sweep on the quickstart (BENCHMARKS.md)


# ----------------------------------------------------------------------------------------------------------------
# The knobs


@dataclass
class TrainConfig:
    """Every field is a flag (--field-name), in its group of -h; these defaults (the gpt2 preset) are build-nanogpt's
    GPT-2 124M run."""

    model: Optional[str] = option(None, f"shape: {', '.join(PRESETS)}; when not given, {DEFAULT_MODEL} or "
                                        f"--init-from's", group="shape")
    vocab_size: Optional[int] = option(None, f"vocabulary rows; when not given, {PADDED_VOCAB_SIZE:,} (GPT-2's "
                                             f"{N_VOCAB:,} padded) or --init-from's", positive, group="shape")
    n_layer: Optional[int] = option(None, "transformer blocks, instead of --model's", positive, group="shape")
    n_head: Optional[int] = option(None, "attention heads, instead of --model's", positive, group="shape")
    n_embd: Optional[int] = option(None, "width, instead of --model's (a multiple of the heads)", positive,
                                   group="shape")
    block_size: Optional[int] = option(None, "context, instead of --model's", positive, group="shape")
    dropout: float = option(0.0, "dropout of embeddings, attention and residual branches in training (GPT-2: 0.1)",
                            lambda p: None if 0 <= p < 1 else f"must be in [0, 1), got {p}", group="shape")
    init_from: str = option("", "start from these weights: a GPT-2 hub name, HF directory or checkpoint", group="shape")
    data_dir: str = option("edu_fineweb10B", "directory of {prefix}_{train,val}_NNNNNN.npy shards", group="data")
    shuffle: bool = option(False, "a seeded permutation of the train shards each epoch", group="data")
    shuffle_documents: bool = option(False, "a seeded permutation of the train documents each epoch", group="data")
    total_batch_size: int = option(524288, "tokens per optimizer step (2**19, GPT-3 Small's)", positive,
                                   group="optimization")
    micro_batch_size: int = option(64, "B, sequences per forward pass on each rank", positive, group="optimization")
    seq_len: int = option(1024, "T, tokens per sequence", positive, group="optimization")
    max_lr: float = option(6e-4, "peak learning rate, after warmup", positive, group="optimization")
    min_lr_ratio: float = option(0.1, "min_lr = min_lr_ratio * max_lr", fraction, group="optimization")
    warmup_steps: int = option(715, "linear warmup steps (375M tokens, as GPT-3)", non_negative, group="optimization")
    max_steps: int = option(19073, "optimizer steps (10B tokens)", positive, group="optimization")
    weight_decay: float = option(0.1, "AdamW weight decay of matrices and embeddings", non_negative,
                                 group="optimization")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0: no clipping", non_negative, group="optimization")
    optimizer: str = option("adamw", "adamw: the GPT-2 recipe; muon: torch.optim.Muon for the block matrices, AdamW "
                                     "for the rest", group="optimization", choices=("adamw", "muon"))
    muon_lr: float = option(MUON_LR, "Muon's peak learning rate (on AdamW's scale: match_rms_adamw), on the same "
                                     "schedule", positive, group="optimization")
    muon_momentum: float = option(0.95, "Muon's (Nesterov) momentum", fraction, group="optimization")
    seed: int = option(1337, "seed of the model init, data shuffle and samples", seed_range, group="optimization")
    eval_interval: int = option(250, "steps between val losses; 0: only at the end", non_negative, group="evaluation")
    val_tokens: int = option(20 * 64 * 1024 * 8, "tokens per validation, at any world size", positive,
                             group="evaluation")
    hellaswag_interval: int = option(250, "steps between HellaSwag scores; 0: off", non_negative, group="evaluation")
    hellaswag_path: str = option("", "a local hellaswag_val.jsonl; when not given, downloaded", group="evaluation")
    sample_interval: int = option(250, "steps between samples; 0: off", non_negative, group="evaluation")
    sample_prompt: str = option("Hello, I'm a language model,", "prompt of the samples", group="evaluation")
    num_samples: int = option(4, "samples at each sample step", positive, group="evaluation")
    sample_tokens: int = option(32, "tokens per sample", positive, group="evaluation")
    eval_only: bool = option(False, "evaluate --init-from's model, or --run-dir's newest checkpoint, and exit",
                             group="evaluation", action="store_true")
    run_dir: str = option(DEFAULT_RUN_DIR, "log.txt, config.toml and checkpoints", group="checkpoints")
    checkpoint_interval: int = option(5000, "steps between checkpoints; 0: none by steps (always at the end and on a "
                                            "stop)", non_negative, group="checkpoints")
    checkpoint_minutes: float = option(15.0, "also one once this many minutes have passed; 0: off", non_negative,
                                       group="checkpoints")
    keep_checkpoints: int = option(2, "newest checkpoints kept; 0 keeps all", non_negative, group="checkpoints")
    resume: Optional[bool] = option(None, "continue from run_dir's newest checkpoint (when not given: if any); "
                                          "--no-resume sets the previous run aside", group="checkpoints")
    resume_from: str = option("", "continue from this checkpoint, or this run directory's newest", group="checkpoints")
    allow_data_change: bool = option(False, "resume although the shards differ from the checkpoint's record",
                                     group="checkpoints", action="store_true")
    device: str = option(**DEVICE_FLAG, group="performance")
    dtype: str = option(**{**DTYPE_FLAG, "help": TRAIN_DTYPE_HELP}, group="performance")
    compile: Optional[bool] = option(None, "torch.compile the model; when not given, on CUDA only", group="performance")
    compile_mode: str = option("default", "torch.compile mode", group="performance", choices=COMPILE_MODES)
    attention: str = option("auto", "SDPA kernel (cudnn, efficient: CUDA only)", group="performance",
                            choices=ATTENTION_BACKENDS)
    loss_chunk_size: int = option(0, "the loss this many positions at a time, fused with the output projection; 0: "
                                     "whole logits", non_negative, group="performance")
    activation_checkpointing: str = option("none", "block: recompute each block's activations in backward",
                                           group="performance", choices=CHECKPOINTING)
    peak_flops: float = option(0.0, "per-device peak FLOP/s for MFU; 0: known GPUs only", non_negative,
                               group="performance")
    parallel: str = option("ddp", "ddp: each rank holds the whole model; fsdp: FSDP2 shards it per block",
                           group="parallelism", choices=PARALLEL_MODES)
    dist_timeout: float = option(300.0, "seconds a rank waits for the others in a collective", positive,
                                 group="parallelism")
    tensorboard: bool = option(True, "TensorBoard event files in the run directory", group="logging")
    wandb_project: str = option("", "also log to this Weights & Biases project", group="logging")

    def check(self, world_size: int = 1) -> None:
        """Raise ValueError, naming the flag, for a value or a combination no run can use. Pure: what the disk and
        the device allow is looked at when the run starts (check_environment)."""
        check_fields(self)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is longer than the run "
                             f"(--max-steps {self.max_steps})")
        if self.model is not None and self.model not in PRESETS:
            raise ValueError(f"--model {self.model!r}: choose from {', '.join(PRESETS)}")
        if self.shuffle and self.shuffle_documents:
            raise ValueError("--shuffle and --shuffle-documents: pick one (documents are shuffled across shards)")
        if self.resume_from and self.resume is False:
            raise ValueError("--resume-from and --no-resume: pick one")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ValueError("--optimizer muon with --parallel fsdp: torch's Muon orthogonalizes whole matrices, "
                             "which FSDP2 shards; use --parallel ddp (or --optimizer adamw)")
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(f"--compile-mode {self.compile_mode} does nothing: --no-compile is given; pass "
                             f"--compile, or leave --compile-mode out")
        if not self.eval_only:
            check_total_batch(self, world_size)
        if self.val_tokens < self.micro_batch_size * self.seq_len:
            raise ValueError(f"--val-tokens {self.val_tokens} is less than one micro-batch (--micro-batch-size x "
                             f"--seq-len = {self.micro_batch_size * self.seq_len})")

    def model_name(self) -> str:
        """What the run summary calls the model: --init-from's weights, or --model's shape."""
        return self.init_from or self.model or DEFAULT_MODEL


# --preset: the four GPT-2 sizes and a small CPU run on the bundled corpus. gpt2 is build-nanogpt's recipe. The larger
# ones take learning rate, total batch, warmup and final learning rate from llm.c's per-size GPT-2 scripts
# (scripts/run_gpt2_350M.sh, run_gpt2_774M.sh, run_gpt2_1558M.sh), and one pass over the 10B-token default data as
# gpt2 does. Their parallel mode and micro-batch are what memory.py estimates to fit 8 GPUs of 80 GB.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "gpt2-medium": dict(model="gpt2-medium", run_dir="log-medium", max_lr=3e-4, min_lr_ratio=0.0, warmup_steps=700,
                        micro_batch_size=32),
    "gpt2-large": dict(model="gpt2-large", run_dir="log-large", max_lr=2.5e-4, min_lr_ratio=0.0, warmup_steps=700,
                       micro_batch_size=16),
    "gpt2-xl": dict(model="gpt2-xl", run_dir="log-xl", max_lr=6e-4, min_lr_ratio=0.1, warmup_steps=700,
                    total_batch_size=1048576, max_steps=9537, micro_batch_size=8, parallel="fsdp"),
    "quickstart": dict(
        model="mini", data_dir=QUICKSTART_DATA, run_dir="runs/quickstart", total_batch_size=2048,
        micro_batch_size=16, seq_len=128, max_lr=1e-3, warmup_steps=20, max_steps=150, eval_interval=25,
        val_tokens=4 * 16 * 128, hellaswag_interval=0, sample_interval=150, num_samples=2, sample_tokens=48,
        checkpoint_interval=50, sample_prompt="ROMEO.\n",
    ),
}


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """The defaults, then --preset's, then --config FILE's, then every flag given; then what those imply (see
    implied_settings); any problem is a usage error."""
    world_size = Ranks.from_environment().world_size
    return parse_dataclass(TrainConfig, TRAIN_PRESETS, argv, __doc__, lambda cfg: cfg.check(world_size),
                           implied_settings, config_file=True)


def implied_settings(cfg: TrainConfig, given: set[str]) -> None:
    """With --init-from, the weights' shape: a preset's --model (the quickstart's mini) counts only if the command
    gives it. With --eval-only, the evaluated run's evaluation settings where the command does not give them."""
    if cfg.init_from and "model" not in given:
        cfg.model = None
    if cfg.eval_only:
        take_the_evaluated_runs(cfg, given, cfg.init_from)


def get_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to max_lr, cosine decay to min_lr at max_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def micro_steps_per_step(cfg: TrainConfig, world_size: int) -> int:
    """Gradient accumulation: --total-batch-size over B x T x world size (whole: check_total_batch)."""
    return cfg.total_batch_size // (cfg.micro_batch_size * cfg.seq_len * world_size)


# ----------------------------------------------------------------------------------------------------------------
# The story of a run


def run(ctx: RunContext) -> dict[str, Any]:
    """Set up or resume, then at each step boundary evaluate, checkpoint and train, until max_steps or a stop
    request, which every rank honours at the same boundary."""
    cfg, log = ctx.cfg, ctx.log
    seed_everything(cfg.seed)
    prepare_data(ctx)
    hellaswag = load_for_training(cfg.hellaswag_path, cfg.hellaswag_interval)
    point = resume_point(cfg, ctx.ranks, log, data_fingerprint(cfg.data_dir))
    model = build_model(cfg, point.checkpoint, log).to(ctx.device)
    # One model, three views: `model` owns the weights (checkpoints, HellaSwag, samples and gradient clipping use
    # it), `forward` runs the fixed-shape passes of validation, `train_model` the train steps. DDP wraps the
    # (compiled) model; FSDP2 shards it in place, per block, before the optimizer is made.
    model.set_attention(cfg.attention)
    forward, train_model = parallelize(model, ctx.ranks, cfg.parallel, cfg.activation_checkpointing,
                                       cfg.compile_mode if ctx.use_compile else None,
                                       ctx.dtype if ctx.dtype != torch.float32 else None)
    if cfg.optimizer == "muon":
        optimizer, muon = configure_muon(model, cfg.weight_decay, cfg.max_lr, cfg.muon_lr, cfg.muon_momentum,
                                         ctx.device.type, log.note)
    else:
        optimizer, muon = configure_optimizers(model.parameters(), cfg.weight_decay, cfg.max_lr, ctx.device.type,
                                               log.note), None
    state = start(ctx, model, (optimizer, muon), point)
    evaluator = Evaluator(ctx, state.model, forward, hellaswag)
    checkpoints = CheckpointSchedule(ctx, state, point.path)
    timer = StepTimer(cfg.total_batch_size, model.flops_per_token(cfg.seq_len),
                      peak_flops_of(ctx.device, cfg.peak_flops), ctx.ranks.world_size)
    summarize(ctx, state, evaluator)

    losses = []
    while True:
        last = state.step >= cfg.max_steps
        if state.evaluations is None:
            state.record_evaluations(evaluator.run(state.step, last))
        if checkpoints.at_boundary(state, last):
            raise checkpoints.stopped(state)
        if last:
            break
        timer.start()
        lr = get_lr(state.step, cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio, cfg.warmup_steps, cfg.max_steps)
        try:
            loss, norm = train_step(ctx, state, train_model, lr)
        except NonFiniteStep as e:
            raise checkpoints.diverged(e) from None
        timer.stop(ctx.device)
        losses.append(loss)
        timer.log_step(log, state.step, {"train": loss, "lr": lr, "norm": norm}, cfg.max_steps - state.step - 1)
        state.next_step()
    final = f"final val loss {state.val_loss:.4f}" if state.val_loss is not None else "finished"
    log.say(f"done: {final}; sample with: python sample.py --init "
            f"{checkpoint_path(cfg.run_dir, cfg.max_steps, state.sharded)}")
    return {"losses": losses, "val_loss": state.val_loss, "step_times": timer.times, "run_dir": cfg.run_dir}


def train_step(ctx: RunContext, state: TrainState, train_model: torch.nn.Module, lr: float) -> tuple[float, float]:
    """One optimizer step over the micro-steps of gradient accumulation on every rank: (the loss averaged over
    ranks, the gradient norm before clipping). A non-finite loss or norm ends the run before the update, but under
    fp16, whose gradient scaler skips that update and lowers its scale."""
    cfg, scaler = ctx.cfg, state.scaler
    grad_accum = micro_steps_per_step(cfg, ctx.ranks.world_size)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    for group in state.muon.param_groups if state.muon is not None else ():
        group["lr"] = lr * cfg.muon_lr / cfg.max_lr  # the same schedule, from Muon's own peak
    loss_sum = torch.zeros((), device=ctx.device)
    for micro_step in range(grad_accum):
        x, y = state.train_loader.next_batch()  # (B, T) each
        # gradients are reduced across ranks once per step, on its last micro-step
        with gradient_sync(train_model, ctx.ranks, sync=micro_step == grad_accum - 1):
            with ctx.autocast():  # [1]: the loss; the (B, T, vocab) logits are let go at once, not kept to backward
                loss = train_model(x, y, loss_chunk_size=cfg.loss_chunk_size)[1]
            loss = loss / grad_accum  # the mean over micro-steps, as one big batch would have
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
    ctx.ranks.all_mean(loss_sum)
    for optimizer in state.optimizers:
        scaler.unscale_(optimizer)
    norm = clip_grad_norm(state.model.parameters(), cfg.grad_clip or float("inf"))
    loss_value, norm_value = loss_sum.item(), norm.item()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)) and not scaler.is_enabled():
        raise NonFiniteStep(state.step, loss_value, norm_value)
    for optimizer in state.optimizers:
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return loss_value, norm_value


class NonFiniteStep(FloatingPointError):
    """A train step whose loss or gradient norm is not finite: 'step 7: non-finite loss nan and gradient norm nan'."""

    def __init__(self, step: int, loss: float, norm: float):
        what = " and ".join(f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", norm))
                            if not math.isfinite(value))
        super().__init__(f"step {step}: non-finite {what}")


# ----------------------------------------------------------------------------------------------------------------
# Start or resume


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def prepare_data(ctx: RunContext) -> None:
    """The quickstart tokenizes the bundled corpus on first use; every other data directory is fineweb.py's work."""
    if bundled_corpus_missing(ctx.cfg.data_dir) and ctx.ranks.master:
        ctx.log.say(f"tokenizing the bundled corpus {BUNDLED_CORPUS} -> {ctx.cfg.data_dir}")
        tokenize_bundled_corpus(Path(ctx.cfg.data_dir), "shakespeare")
    ctx.ranks.barrier()


def build_model(cfg: TrainConfig, checkpoint: Optional[dict[str, Any]], log: Any) -> GPT:
    """The model to train, on the CPU: a resumed run's shape (its weights come with the rest of its state),
    --init-from's weights, or the command's shape: --model's preset with the shape flags and --vocab-size."""
    if checkpoint is not None:
        return GPT(config_from_checkpoint(checkpoint))
    if not cfg.init_from:
        return GPT(config_for_run(cfg))
    log.say(f"initialising from {cfg.init_from}")
    model = load_model(cfg.init_from, say=log.say)
    if conflicts := shape_conflicts(cfg, model.config, with_defaults=False):
        raise ValueError(f"{'; '.join(conflicts)}: not the shape of --init-from {cfg.init_from}'s weights "
                         f"({model.config.describe()}); leave the flag out or make it match")
    model.config.check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")
    log.comment(f"initialised from {cfg.init_from}")
    if cfg.dropout != model.config.dropout:  # the weights' shape, this run's dropout
        weights, model = model.state_dict(), GPT(dataclasses.replace(model.config, dropout=cfg.dropout))
        model.load_state_dict(weights)
    return model


def config_for_run(cfg: TrainConfig) -> GPTConfig:
    """A new run's shape without --init-from: --model's preset (gpt2 when not given) with the shape flags where
    given, --vocab-size (50,304 when not given) and --dropout."""
    return config_from_preset(cfg.model or DEFAULT_MODEL, vocab_size=cfg.vocab_size or PADDED_VOCAB_SIZE,
                              dropout=cfg.dropout, **shape_given(cfg))


def start(ctx: RunContext, model: GPT, optimizers: tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]],
          point: ResumePoint) -> TrainState:
    """The run's state: new, or continued from the resume point; its header in log.txt, its config.toml, its live
    metrics."""
    cfg, log = ctx.cfg, ctx.log
    log.header(dataclasses.asdict(cfg), dataclasses.asdict(model.config))
    if ctx.ranks.master:
        write_config_file(Path(cfg.run_dir) / "config.toml", {name: value for name, value in
                                                              dataclasses.asdict(cfg).items()
                                                              if name not in PER_INVOCATION})
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.dtype == torch.float16)  # fp16 only
    state = TrainState(model, optimizers[0], scaler, ctx.loader("train", model.config.vocab_size),
                       dataclasses.asdict(cfg), sharded=cfg.parallel == "fsdp",
                       data=data_fingerprint(cfg.data_dir), rank=ctx.ranks.rank, muon=optimizers[1])
    if point.checkpoint is not None:
        continue_from(state, point, ctx.ranks, log)
    config = {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
              "world_size": ctx.ranks.world_size}
    log.open_metrics(cfg, state.step, point.checkpoint is not None, config)
    if state.evaluations:  # the curves restart at state.step (see metrics.py), where these evaluations were done
        log.scalars(state.step, state.evaluations)
    return state


def summarize(ctx: RunContext, state: TrainState, evaluator: Evaluator) -> None:
    """The run summary: what will be trained, on what, for how long, where it goes, the memory it will take."""
    setting = memory_setting(ctx.cfg, ctx.ranks.world_size, ctx.dtype, state.model.config)
    per = "GPU" if ctx.device.type == "cuda" else f"{ctx.device.type.upper()} process"
    for line in run_summary(ctx, state, evaluator, setting.grad_accum) + fit_report(setting, device_memory(ctx.device),
                                                                                per):
        ctx.log.note(line)


def memory_setting(cfg: TrainConfig, world_size: int, dtype: torch.dtype, config: GPTConfig) -> Setting:
    """What the memory estimate of this run's training step depends on (see memory.py)."""
    return Setting(config, cfg.micro_batch_size, cfg.seq_len, dtype != torch.float32, cfg.parallel, world_size,
                   micro_steps_per_step(cfg, world_size), cfg.activation_checkpointing == "block",
                   cfg.loss_chunk_size)


# ----------------------------------------------------------------------------------------------------------------
# What a command needs of the machine and the disk, looked at when it starts


def check_environment(cfg: TrainConfig, world_size: int) -> None:
    """The device, dtype and kernels this machine has, the data and checkpoints on disk, wandb: a usage error
    (exit code 2) naming the flag, before anything is written."""
    device = check_device(cfg.device, cfg.dtype, cfg.attention)
    compiling = compile_wanted(cfg.compile, device)
    try:
        if cfg.compile_mode != "default" and not compiling:
            raise ValueError(f"--compile-mode {cfg.compile_mode} does nothing: compile is off by default on "
                             f"{device.type}; pass --compile, or leave --compile-mode out")
        if compiling and not cfg.eval_only:
            check_compile_mode(cfg.compile_mode, micro_steps_per_step(cfg, world_size))
        if cfg.parallel == "fsdp":
            check_fsdp(pick_dtype(device, cfg.dtype))
        if cfg.optimizer == "muon" and not muon_available():
            raise ValueError(f"--optimizer muon needs torch.optim.Muon (torch >= 2.9); this is torch "
                             f"{torch.__version__}: upgrade it, or use --optimizer adamw")
        if cfg.wandb_project:
            check_wandb_installed()
        if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
            raise ValueError(f"--run-dir {cfg.run_dir} is a file, not a directory")
        if cfg.resume_from and not Path(cfg.resume_from).exists():
            raise ValueError(f"--resume-from {cfg.resume_from}: no such checkpoint"
                             f"{what_is_there(Path(cfg.resume_from).parent)}")
        resuming = cfg.resume_from or cfg.resume is not False and newest_checkpoint(cfg.run_dir) is not None
        if not (cfg.init_from or cfg.eval_only or resuming):  # a resumed run's shape is its checkpoint's
            config_for_run(cfg).check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")
        nothing_to_read = cfg.eval_only and not cfg.init_from and newest_checkpoint(cfg.run_dir) is None
        if not (is_quickstart_data(cfg.data_dir) or nothing_to_read):  # (the evaluation says there is nothing)
            check_data_dir(cfg.data_dir, ("val",) if cfg.eval_only else ("train", "val"))
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_total_batch(cfg: TrainConfig, world_size: int) -> None:
    """--total-batch-size must be a whole number of micro-batches on every rank (see micro_steps_per_step)."""
    tokens = cfg.micro_batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens:
        raise ValueError(f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size x "
                         f"--seq-len x world size = {cfg.micro_batch_size} x {cfg.seq_len} x {world_size} = {tokens}")


# ----------------------------------------------------------------------------------------------------------------
# The command


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run cfg in this process, alone or as one rank of a torchrun job, holding the run directory (see
    context.holding_run_dir); with --eval-only, evaluate instead (evaluate.py's evaluation)."""
    check_environment(cfg, Ranks.from_environment().world_size)
    rerun = rerun_advice(cfg)
    cfg, restarted = first_start_only(cfg)
    with started(cfg, cfg.run_dir, rerun, hold=not cfg.eval_only) as ctx:
        if restarted:
            ctx.log.note(restarted)
        if cfg.eval_only:
            return evaluate_model(ctx, cfg.init_from, cfg.hellaswag_interval > 0, lambda: prepare_data(ctx))
        return run(ctx)


def main(argv: Optional[list[str]] = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    run_cli(main)
