"""Pretrain GPT-2 on pretokenized shards, in one process or with torchrun (DDP).

    python train_gpt2.py --preset quickstart                        # CPU, bundled Shakespeare, a few minutes
    python train_gpt2.py                                            # GPT-2 124M on edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py          # the same on 8 GPUs

The defaults are build-nanogpt's published GPT-2 124M run: 0.5M-token batches, 19,073 steps (10B tokens).
A run directory holds an append-only log.txt and checkpoints; rerunning the same command resumes exactly. Ctrl-C
or SIGTERM (preemption) stops every rank at the next step boundary, with a checkpoint of exactly that step.
"""

import signal

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    # Until the run installs its stop handlers, Ctrl-C ends the process quietly, not with a traceback of whichever
    # import below it interrupted (an ignored SIGINT stays ignored).
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import (DEFAULT_RUN_DIR, CheckpointWriteError, Progress, TrainState, check_training_fields,  # noqa: E402
                        checkpoint_path, checkpoint_step, config_from_checkpoint, first_non_finite,
                        is_run_directory, list_checkpoints, load_checkpoint, load_model, load_training_state,
                        model_at, newest_checkpoint, newest_that_loads, remove_superseded_checkpoints,
                        remove_unfinished_checkpoints, save_training_state, set_aside_previous_run, train_config_of,
                        what_is_there)
from cli import (Exit, StopRequest, check_fields, flag, fraction, non_negative, option, parse_dataclass,  # noqa: E402
                 positive, run_cli, seed_range)
from dataloader import ShardLoader, data_changes, data_fingerprint, list_shards  # noqa: E402
from devices import (ATTENTION_BACKENDS, COMPILE_MODES, DEVICE_FLAG, DTYPE_FLAG, TRAIN_DTYPE_HELP,  # noqa: E402
                     allow_tf32, autocast, check_attention_backend, check_compile_mode, check_dtype, compile_model,
                     compile_wanted, device_memory, eager, peak_flops_of, pick_device, pick_dtype)
from distributed import (CHECKPOINTING, PARALLEL_MODES, Ranks, clip_grad_norm, fsdp_available,  # noqa: E402
                         gradient_sync, launcher_restart, parallelize, process_group, under_torchrun)
from files import hold_directory  # noqa: E402
from fineweb import BUNDLED_CORPUS, tokenize_bundled_corpus  # noqa: E402
from hellaswag import harness_style_applies, judge_examples, load_for_training  # noqa: E402
from memory import Setting, fit_report  # noqa: E402
from metrics import RunLog, StepTimer, check_wandb_installed, run_summary, utc_now  # noqa: E402
from model import GPT, PADDED_VOCAB_SIZE, PRESETS, GPTConfig, config_from_preset, configure_optimizers  # noqa: E402
from sample import sample_texts  # noqa: E402
from tokenizer import N_VOCAB  # noqa: E402

DEFAULT_MODEL = "gpt2"
QUICKSTART_DATA = "data/shakespeare"  # the quickstart tokenizes the bundled corpus here on first use
HELLASWAG_CHUNK = 64  # examples scored between two looks at the stop request
SAMPLE_TOP_K = 50


# ----------------------------------------------------------------------------------------------------------------
# The knobs


@dataclass
class TrainConfig:
    """Every field is a command-line flag (--field-name), checked by check(); these defaults (the gpt2 preset) are
    build-nanogpt's GPT-2 124M run."""

    model: Optional[str] = option(None, f"model shape: {', '.join(PRESETS)}; when not given, {DEFAULT_MODEL} "
                                        f"or the shape of --init-from's weights")
    vocab_size: Optional[int] = option(None, f"vocabulary rows; when not given, {PADDED_VOCAB_SIZE:,} (GPT-2's "
                                             f"{N_VOCAB:,} padded to a multiple of 128 for faster matmuls) or "
                                             f"--init-from's",
                                       positive)
    n_layer: Optional[int] = option(None, "transformer blocks, instead of --model's", positive)
    n_head: Optional[int] = option(None, "attention heads, instead of --model's", positive)
    n_embd: Optional[int] = option(None, "width, instead of --model's (a multiple of the heads)", positive)
    block_size: Optional[int] = option(None, "context (learned positions), instead of --model's", positive)
    dropout: float = option(0.0, "dropout of embeddings, attention and residual branches while training (GPT-2 used "
                                 "0.1; pretraining at this scale does without, fine-tuning on little data may not)",
                            lambda p: None if 0 <= p < 1 else f"must be in [0, 1), got {p}")
    init_from: str = option("", "start from these weights: a GPT-2 hub name, HF directory or checkpoint .pt")
    data_dir: str = option("edu_fineweb10B", "directory of {prefix}_{train,val}_NNNNNN.npy shards (fineweb.py)")
    run_dir: str = option(DEFAULT_RUN_DIR, "log.txt and checkpoints")
    total_batch_size: int = option(524288, "tokens per optimizer step (gpt2: 2**19 ~ 0.5M, GPT-3 Small's)", positive)
    micro_batch_size: int = option(64, "B, sequences per forward pass on each rank", positive)
    seq_len: int = option(1024, "T, tokens per sequence", positive)
    max_lr: float = option(6e-4, "peak learning rate, after warmup", positive)
    min_lr_ratio: float = option(0.1, "min_lr = min_lr_ratio * max_lr", fraction)
    warmup_steps: int = option(715, "linear warmup steps (gpt2: 715 = 375M tokens, as in GPT-3)", non_negative)
    max_steps: int = option(19073, "optimizer steps (gpt2: 19,073 = 10B tokens / 524,288 per step)", positive)
    weight_decay: float = option(0.1, "AdamW weight decay of matrices and embeddings", non_negative)
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 turns clipping off", non_negative)
    shuffle: bool = option(False, "seeded per-epoch permutation of the train shards")
    shuffle_documents: bool = option(False, "seeded per-epoch permutation of the train split's documents across all "
                                            "shards (each begins at <|endoftext|>): every token once per epoch, in "
                                            "another order each epoch")
    eval_interval: int = option(250, "steps between validation losses; 0: only at the end", non_negative)
    val_tokens: int = option(20 * 64 * 1024 * 8, "tokens per validation, whatever the number of ranks (gpt2: "
                                                 "build-nanogpt's 20 micro-batches of 64 x 1024 on each of 8 GPUs)",
                             positive)
    hellaswag_interval: int = option(250, "0 turns HellaSwag off", non_negative)
    hellaswag_path: str = option("", "a local hellaswag_val.jsonl; default: download and cache it")
    sample_interval: int = option(250, "0 turns samples off", non_negative)
    sample_prompt: str = option("Hello, I'm a language model,", "prompt of the samples")
    num_samples: int = option(4, "samples at each sample step", positive)
    sample_tokens: int = option(32, "tokens per sample", positive)
    checkpoint_interval: int = option(5000, "steps between checkpoints, 0: none by step count (always one at the "
                                            "end and on a stop)", non_negative)
    checkpoint_minutes: float = option(15.0, "also a checkpoint once this many minutes have passed since the last "
                                             "one, so a crash loses at most that; 0 turns it off", non_negative)
    keep_checkpoints: int = option(2, "newest checkpoints kept; 0 keeps all", non_negative)
    resume: Optional[bool] = option(None, "continue from the newest checkpoint in run_dir; default: when there is one. "
                                          "--no-resume starts over: the previous run's checkpoints are set aside first")
    resume_from: str = option("", "continue from this checkpoint (or this run directory's newest) instead of "
                                  "run_dir's newest; run_dir's checkpoints of its step and later are set aside first")
    allow_data_change: bool = option(False, "resume although the shards differ from those the checkpoint recorded "
                                            "(a deliberate change: a shard fixed, added or removed); log.txt "
                                            "records what changed", action="store_true")
    seed: int = option(1337, "seed of the model init, data shuffle and samples", seed_range)
    device: str = option(**DEVICE_FLAG)
    dtype: str = option(**{**DTYPE_FLAG, "help": TRAIN_DTYPE_HELP})
    compile: Optional[bool] = option(None, "torch.compile the model; default: on CUDA only")
    loss_chunk_size: int = option(0, "compute the loss this many positions at a time, fused with the output "
                                     "projection, never materialising the (B, T, vocab) logits (less memory, room "
                                     "for a larger --micro-batch-size); 0: the whole logits at once",
                                  non_negative)
    attention: str = option("auto", "SDPA kernel of attention: auto (PyTorch's pick), flash, efficient, cudnn "
                                    "(CUDA), math", choices=ATTENTION_BACKENDS)
    compile_mode: str = option("default", "torch.compile mode, when compiling", choices=COMPILE_MODES)
    parallel: str = option("ddp", "how the ranks hold the model: ddp, each all of it (build-nanogpt's recipe); fsdp, "
                                  "FSDP2 shards parameters, gradients and optimizer state per transformer block, and "
                                  "checkpoints are DCP directories that resume at any world size",
                           choices=PARALLEL_MODES)
    activation_checkpointing: str = option("none", "block: recompute each transformer block's activations in the "
                                                   "backward pass instead of keeping them (far less memory, about a "
                                                   "third more compute)", choices=CHECKPOINTING)
    peak_flops: float = option(0.0, "per-device peak FLOP/s for MFU; 0: known GPUs only", non_negative)
    tensorboard: bool = option(True, "TensorBoard event files in the run directory (tensorboard --logdir RUN_DIR)")
    wandb_project: str = option("", "also log the metrics to this Weights & Biases project (needs wandb; "
                                    "WANDB_MODE=offline keeps them on disk)")
    eval_only: bool = option(False, "evaluate and exit: the val loss (on --val-tokens) and, where its data is at "
                                    "hand, HellaSwag of --init-from's model, else of --run-dir's newest checkpoint; "
                                    "printed and appended to --run-dir's log.txt", action="store_true")
    dist_timeout: float = option(300.0, "seconds a rank waits for the others in a collective before the run ends "
                                        "with an error (a dead or frozen peer)", positive)

    def check(self, world_size: int = 1) -> None:
        """Raise ValueError, naming the flag, for a value or a combination no run can use."""
        check_fields(self)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is longer than the run "
                             f"(--max-steps {self.max_steps})")
        if self.model is not None and self.model not in PRESETS:
            raise ValueError(f"--model {self.model!r}: choose from {', '.join(PRESETS)}")
        if Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():
            raise ValueError(f"--run-dir {self.run_dir} is a file, not a directory")
        if self.shuffle and self.shuffle_documents:
            raise ValueError("--shuffle and --shuffle-documents: pick one (documents are shuffled across shards)")
        if self.resume_from and self.resume is False:
            raise ValueError("--resume-from and --no-resume: pick one")
        if self.resume_from and not Path(self.resume_from).exists():
            listing = what_is_there(Path(self.resume_from).parent)
            raise ValueError(f"--resume-from {self.resume_from}: no such checkpoint{listing}")
        resuming = self.resume_from or self.resume is not False and newest_checkpoint(self.run_dir) is not None
        # the shape of weights is known once they are loaded; a resumed run's is the checkpoint's (resume_changes)
        if not (self.init_from or self.eval_only or resuming):
            check_seq_len(self, config_for_run(self))
        device = pick_device(self.device)
        if self.compile_mode != "default" and not compile_wanted(self.compile, device):
            off = "--no-compile is given" if self.compile is False else f"compile is off by default on {device.type}"
            raise ValueError(f"--compile-mode {self.compile_mode} does nothing: {off}; pass --compile, or leave "
                             f"--compile-mode out")
        if not self.eval_only:
            check_total_batch(self, world_size)
            if compile_wanted(self.compile, device):
                check_compile_mode(self.compile_mode, micro_steps_per_step(self, world_size))
        if self.val_tokens < self.micro_batch_size * self.seq_len:
            raise ValueError(f"--val-tokens {self.val_tokens} is less than one micro-batch (--micro-batch-size x "
                             f"--seq-len = {self.micro_batch_size * self.seq_len})")
        check_dtype(device, self.dtype)
        check_attention_backend(self.attention, device)
        if self.parallel == "fsdp":
            check_fsdp(device, self.dtype)
        if self.wandb_project:
            check_wandb_installed()
        nothing_to_read = self.eval_only and not self.init_from and newest_checkpoint(self.run_dir) is None
        if not (is_quickstart_data(self.data_dir) or nothing_to_read):  # (evaluate_only says there is nothing)
            check_data_dir(self.data_dir, ("val",) if self.eval_only else ("train", "val"))

    def model_name(self) -> str:
        """What the run summary calls the model: --init-from's weights, or --model's shape."""
        return self.init_from or self.model or DEFAULT_MODEL


# --preset: the four GPT-2 sizes and a small CPU run on the bundled corpus. gpt2 is build-nanogpt's recipe. The larger
# ones take learning rate, total batch, warmup and final learning rate from llm.c's per-size GPT-2 scripts
# (scripts/run_gpt2_350M.sh, run_gpt2_774M.sh, run_gpt2_1558M.sh), and one pass over the 10B-token default data as
# gpt2 does (llm.c trains them on 31B, 150B and 33B tokens of its 100B-token data). Parallel mode and micro-batch
# are what memory.py estimates to fit 8 GPUs of 80 GB (README: Bigger models); none has been measured on a GPU here.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "gpt2-medium": dict(model="gpt2-medium", run_dir="log-medium", max_lr=3e-4, min_lr_ratio=0.0, warmup_steps=700,
                        micro_batch_size=32),  # ~53 GiB per GPU estimated
    "gpt2-large": dict(model="gpt2-large", run_dir="log-large", max_lr=2.5e-4, min_lr_ratio=0.0, warmup_steps=700,
                       micro_batch_size=16),  # ~51 GiB
    "gpt2-xl": dict(model="gpt2-xl", run_dir="log-xl", max_lr=6e-4, min_lr_ratio=0.1, warmup_steps=700,
                    total_batch_size=1048576, max_steps=9537, micro_batch_size=8, parallel="fsdp"),  # ~35 GiB
    "quickstart": dict(
        model="mini", data_dir=QUICKSTART_DATA, run_dir="runs/quickstart", total_batch_size=2048,
        micro_batch_size=16, seq_len=128, max_lr=1e-3, warmup_steps=20, max_steps=150, eval_interval=25,
        val_tokens=4 * 16 * 128, hellaswag_interval=0, sample_interval=150, num_samples=2, sample_tokens=48,
        checkpoint_interval=50, sample_prompt="ROMEO.\n",
    ),
}


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """--preset picks the defaults, then every flag given overrides its field, then what the given ones imply
    changes the others (see implied_settings); any problem is a usage error."""
    world_size = Ranks.from_environment().world_size
    return parse_dataclass(TrainConfig, TRAIN_PRESETS, argv, __doc__, lambda cfg: cfg.check(world_size),
                           implied_settings)


# What --eval-only takes from the run that wrote the checkpoint it evaluates, where the command does not give it: that
# run's own evaluation (a quickstart checkpoint is evaluated on the quickstart's data, windows and sequence length).
EVALUATED_RUN_SETTINGS = ("data_dir", "seq_len", "micro_batch_size", "val_tokens")


def implied_settings(cfg: TrainConfig, given: set[str]) -> None:
    """With --init-from, the weights' shape: a preset's --model (the quickstart's mini) counts only if the command
    gives it. With --eval-only, the evaluated run's evaluation settings where the command does not give them."""
    if cfg.init_from and "model" not in given:
        cfg.model = None
    if cfg.eval_only:
        saved = train_config_of(cfg.init_from or cfg.run_dir)
        for name in EVALUATED_RUN_SETTINGS:
            if name not in given and name in saved:
                setattr(cfg, name, saved[name])


def get_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to max_lr, cosine decay to min_lr at max_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@dataclass(frozen=True)
class RunContext:
    """What every part of a run reads and none changes, made once by train(): the command, this process's place
    among the ranks, its device and autocast dtype, the run's log and the stop request."""

    cfg: TrainConfig
    ranks: Ranks
    device: torch.device
    dtype: torch.dtype
    log: RunLog
    stop: StopRequest
    rerun: str = "rerun the same command"  # how to continue from the newest checkpoint (see rerun_advice)

    @property
    def grad_accum(self) -> int:
        """Micro-steps per optimizer step (see micro_steps_per_step)."""
        return micro_steps_per_step(self.cfg, self.ranks.world_size)

    @property
    def use_compile(self) -> bool:
        return compile_wanted(self.cfg.compile, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def compiled(self, model: GPT) -> torch.nn.Module:
        """The model for fixed-shape forward passes (validation) with --attention's kernel: through torch.compile
        when wanted."""
        model.set_attention(self.cfg.attention)
        return compile_model(model, self.cfg.compile_mode) if self.use_compile else model

    def parallelize(self, model: GPT) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The model laid out for training as the flags say, --attention's kernel set: (forward, train_model); see
        distributed.parallelize."""
        cfg = self.cfg
        model.set_attention(cfg.attention)
        return parallelize(model, self.ranks, cfg.parallel, cfg.activation_checkpointing,
                           cfg.compile_mode if self.use_compile else None,
                           self.dtype if self.dtype != torch.float32 else None)

    def memory_setting(self, config: GPTConfig) -> Setting:
        """What the memory estimate of this run's training step depends on (see memory.py)."""
        cfg = self.cfg
        return Setting(config, cfg.micro_batch_size, cfg.seq_len, self.dtype != torch.float32, cfg.parallel,
                       self.ranks.world_size, self.grad_accum, cfg.activation_checkpointing == "block",
                       cfg.loss_chunk_size)

    def loader(self, split: str, vocab_size: int) -> ShardLoader:
        """This rank's batches of a split of --data-dir; the train split shuffled with --shuffle or
        --shuffle-documents."""
        cfg = self.cfg
        return ShardLoader(cfg.data_dir, split, cfg.micro_batch_size, cfg.seq_len, rank=self.ranks.rank,
                           world_size=self.ranks.world_size, device=self.device,
                           shuffle=cfg.shuffle and split == "train",
                           shuffle_documents=cfg.shuffle_documents and split == "train", seed=cfg.seed,
                           vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# The story of a run


def run(ctx: RunContext) -> dict[str, Any]:
    """Set up or resume, then at each step boundary evaluate, checkpoint and train, until max_steps or a stop
    request, which every rank honours at the same boundary."""
    cfg, log = ctx.cfg, ctx.log
    seed_everything(cfg.seed)
    prepare_data(ctx)
    hellaswag = load_for_training(cfg.hellaswag_path, cfg.hellaswag_interval)
    # One model, three views (see parallelize): state.model owns the weights (checkpoints, HellaSwag, samples and
    # gradient clipping use it), `forward` runs the fixed-shape passes of validation, `train_model` the train steps.
    state, forward, train_model, resumed = start_or_resume(ctx)
    evaluator = Evaluator(ctx, state.model, forward, hellaswag)
    checkpoints = CheckpointSchedule(ctx, state, resumed)
    timer = StepTimer(cfg.total_batch_size, state.model.flops_per_token(cfg.seq_len),
                      peak_flops_of(ctx.device, cfg.peak_flops), ctx.ranks.world_size)
    per = "GPU" if ctx.device.type == "cuda" else f"{ctx.device.type.upper()} process"
    for line in run_summary(ctx, state, evaluator) + fit_report(ctx.memory_setting(state.model.config),
                                                                device_memory(ctx.device), per):
        log.note(line)

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


# ----------------------------------------------------------------------------------------------------------------
# Start or resume


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def prepare_data(ctx: RunContext) -> None:
    """The quickstart tokenizes the bundled corpus on first use; every other data directory is fineweb.py's work."""
    if not is_quickstart_data(ctx.cfg.data_dir):
        return
    try:
        list_shards(ctx.cfg.data_dir, "train")
        return
    except FileNotFoundError:
        pass
    if ctx.ranks.master:
        ctx.log.say(f"tokenizing the bundled corpus {BUNDLED_CORPUS} -> {ctx.cfg.data_dir}")
        tokenize_bundled_corpus(Path(ctx.cfg.data_dir), "shakespeare")
    ctx.ranks.barrier()


def start_or_resume(ctx: RunContext) -> tuple[TrainState, torch.nn.Module, torch.nn.Module, Optional[Path]]:
    """A new run's state, or the newest checkpoint's when there is one, refusing a command or data that does not fit
    it; the model's views for training (forward, train_model: see parallelize); the checkpoint resumed, if any."""
    cfg, log = ctx.cfg, ctx.log
    if ctx.ranks.master:
        remove_unfinished_checkpoints(cfg.run_dir)  # what a kill during a save left behind
        if cfg.resume is False and (aside := set_aside_previous_run(cfg.run_dir)):
            log.note(f"--no-resume: the previous run's {aside[1]} checkpoint(s) and TensorBoard events are set aside "
                     f"in {aside[0]}; this run starts at step 0 and prunes only its own")
    ctx.ranks.barrier()  # no rank looks for checkpoints while they move
    data = data_fingerprint(cfg.data_dir)
    with said_by_the_master(ctx.ranks):
        path, checkpoint = find_resume_checkpoint(cfg, log)
        changed = resume_changes(cfg, checkpoint, path) if checkpoint else []
        data_changes_allowed = data_changed(cfg, checkpoint, path, data) if checkpoint else []
    if checkpoint and checkpoint["step"] >= cfg.max_steps and checkpoint.get("evaluated", True):
        raise already_finished(ctx, path, checkpoint)
    if cfg.resume_from and ctx.ranks.master and (aside := set_aside_previous_run(cfg.run_dir, checkpoint["step"],
                                                                                  path)):
        log.note(f"--resume-from {path}: {aside[1]} checkpoint(s) in {cfg.run_dir} of step {checkpoint['step']} and "
                 f"later are set aside in {aside[0]}, so that the run directory holds this run alone")
    model = build_model(cfg, checkpoint, log).to(ctx.device)
    forward, train_model = ctx.parallelize(model)  # under FSDP2 it shards the model: before the optimizer is made
    train_loader = ctx.loader("train", model.config.vocab_size)
    log.header(dataclasses.asdict(cfg), dataclasses.asdict(model.config))
    optimizer = configure_optimizers(model.parameters(), cfg.weight_decay, cfg.max_lr, ctx.device.type, log.note)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.dtype == torch.float16)  # fp16 only
    state = TrainState(model, optimizer, scaler, train_loader, dataclasses.asdict(cfg),
                       sharded=cfg.parallel == "fsdp", data=data, rank=ctx.ranks.rank)
    if checkpoint is not None:
        with said_by_the_master(ctx.ranks):
            resume(state, path, checkpoint, cfg)
        log.note(f"resumed from {path} at step {state.step}")
        if changed:
            log.note(f"changed since the checkpoint: {', '.join(changed)}")
        if data_changes_allowed:
            log.note(f"--allow-data-change: resuming on other shards than the checkpoint's: "
                     f"{'; '.join(data_changes_allowed)}")
    config = {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config),
              "world_size": ctx.ranks.world_size}
    log.open_metrics(cfg, state.step, checkpoint is not None, config)
    if state.evaluations:  # the curves restart at state.step (see metrics.py), where these evaluations were done
        log.scalars(state.step, state.evaluations)
    return state, forward, train_model, path


@contextlib.contextmanager
def said_by_the_master(ranks: Ranks) -> Iterator[None]:
    """Around refusals that every rank reaches alike, reading the same files: the master says it, in one line; the
    other ranks end silently with the same exit code."""
    try:
        yield
    except (ValueError, FloatingPointError):
        if ranks.master:
            raise
        raise Exit("", 1) from None


def already_finished(ctx: RunContext, path: Path, checkpoint: dict[str, Any]) -> Exit:
    """The one line a rerun of a finished run ends with, having written nothing (exit code 0)."""
    val = f", final val loss {checkpoint['val_loss']:.4f}" if checkpoint.get("val_loss") is not None else ""
    message = (f"already finished at step {checkpoint['step']} ({path}{val}); nothing to do: pass a larger "
               f"--max-steps to train on, or sample with: python sample.py --init {ctx.cfg.run_dir}")
    return Exit(message if ctx.ranks.master else "", 0)


def resumable(path: Path) -> dict[str, Any]:
    """What a checkpoint a run can continue from holds (see checkpoint.check_training_fields)."""
    checkpoint = load_checkpoint(path)
    check_training_fields(checkpoint, path)
    return checkpoint


def find_resume_checkpoint(cfg: TrainConfig, log: RunLog) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The checkpoint to resume and what it holds: run_dir's newest that a run can continue from (a newer one that
    cannot is skipped, said in one line), unless --no-resume; --resume-from's, a checkpoint or a run directory's
    newest; (None, None) for a new run."""
    if cfg.resume_from and not is_run_directory(Path(cfg.resume_from)):  # the one asked for: it must load
        return Path(cfg.resume_from), resumable(Path(cfg.resume_from))
    run_dir = cfg.resume_from or cfg.run_dir
    found = newest_that_loads(run_dir, resumable, log.note) if cfg.resume is not False else None
    if found is None and (cfg.resume or cfg.resume_from):
        raise ValueError(f"{'--resume-from' if cfg.resume_from else '--resume'}: no checkpoint (ckpt_NNNNNN.pt or "
                         f"ckpt_NNNNNN/) in {run_dir}")
    if found is not None and cfg.resume_from:
        log.note(f"--resume-from {cfg.resume_from}: its newest checkpoint, {found[0]}")
    return found if found is not None else (None, None)


def resume(state: TrainState, path: Path, checkpoint: dict[str, Any], cfg: TrainConfig) -> None:
    """Continue `state` from the checkpoint; one that holds non-finite values is refused (it was saved after the
    run had diverged, by a version that did not check), naming the tensor and the checkpoint to go back to."""
    try:
        load_training_state(state, path, checkpoint)
    except FloatingPointError as e:
        older = [p for p in list_checkpoints(path.parent) if checkpoint_step(p) < checkpoint["step"]]
        back = f"pass --resume-from {older[-1]} to go back to the one before, or " if older else "pass "
        raise FloatingPointError(f"{e}; it is not resumed: {back}--no-resume to start over") from None


def data_changed(cfg: TrainConfig, checkpoint: dict[str, Any], path: Path, data: dict[str, Any]) -> list[str]:
    """Refuse, in one line naming the shards, to resume on other data than the checkpoint recorded (a shard
    replaced, added or removed), unless --allow-data-change: then return the changes, for log.txt."""
    changes = data_changes(checkpoint.get("data") or {}, data)  # checkpoints before the record: nothing to compare
    if changes and not cfg.allow_data_change:
        raise ValueError(f"cannot resume {path}: the shards in {cfg.data_dir} changed since it was saved "
                         f"({'; '.join(changes)}); put back the shards it read, or pass --allow-data-change to go "
                         f"on with these")
    return changes


def build_model(cfg: TrainConfig, checkpoint: Optional[dict[str, Any]], log: RunLog) -> GPT:
    """The model to train, on the CPU: a resumed run's shape (its weights come with the rest of its state),
    --init-from's weights, or the command's shape."""
    if checkpoint is not None:
        return GPT(config_from_checkpoint(checkpoint))
    if cfg.init_from:
        log.say(f"initialising from {cfg.init_from}")
        model = load_model(cfg.init_from, say=log.say)
        check_fits_weights(cfg, model.config)
        log.comment(f"initialised from {cfg.init_from}")
        if cfg.dropout != model.config.dropout:  # the weights' shape, this run's dropout
            weights, model = model.state_dict(), GPT(dataclasses.replace(model.config, dropout=cfg.dropout))
            model.load_state_dict(weights)
        return model
    return GPT(config_for_run(cfg))


# The shape flags that override a --model preset's fields.
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")


def shape_given(cfg: TrainConfig) -> dict[str, int]:
    return {name: getattr(cfg, name) for name in SHAPE_FLAGS if getattr(cfg, name) is not None}


def config_for_run(cfg: TrainConfig) -> GPTConfig:
    """The shape a new run trains without --init-from: --model's preset (gpt2 when not given) with --n-layer,
    --n-head, --n-embd, --block-size where given and --vocab-size (50,304 when not given); --dropout."""
    return config_from_preset(cfg.model or DEFAULT_MODEL, vocab_size=cfg.vocab_size or PADDED_VOCAB_SIZE,
                              dropout=cfg.dropout, **shape_given(cfg))


def check_seq_len(cfg: TrainConfig, config: GPTConfig) -> None:
    config.check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")


def tokens_per_micro_step(cfg: TrainConfig, world_size: int) -> int:
    return cfg.micro_batch_size * cfg.seq_len * world_size


def micro_steps_per_step(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step: --total-batch-size over B x T x world size (whole: check_total_batch)."""
    return cfg.total_batch_size // tokens_per_micro_step(cfg, world_size)


def check_total_batch(cfg: TrainConfig, world_size: int) -> None:
    """--total-batch-size must be a whole number of micro-batches on every rank (see micro_steps_per_step)."""
    if cfg.total_batch_size % tokens_per_micro_step(cfg, world_size):
        raise ValueError(
            f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size x --seq-len x "
            f"world size = {cfg.micro_batch_size} x {cfg.seq_len} x {world_size} = "
            f"{tokens_per_micro_step(cfg, world_size)}"
        )


def check_fsdp(device: torch.device, dtype: str) -> None:
    if not fsdp_available():
        raise ValueError(f"--parallel fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); this is "
                         f"torch {torch.__version__}: upgrade it, or use --parallel ddp")
    if pick_dtype(device, dtype) == torch.float16:  # its gradient scaler would see only this rank's shards
        raise ValueError(f"--parallel fsdp trains in bfloat16 or float32, not float16 (--dtype {dtype} on {device}); "
                         f"pass --dtype bfloat16 (or float32), or use --parallel ddp")


def is_quickstart_data(data_dir: str) -> bool:
    """Whether --data-dir is the quickstart's directory, however it is written (./data/shakespeare, an absolute
    path ...): the one that prepare_data makes from the bundled corpus."""
    return Path(data_dir).resolve() == Path(QUICKSTART_DATA).resolve()


def check_data_dir(data_dir: str, splits: tuple[str, ...]) -> None:
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ValueError(f"--data-dir {data_dir} is a file, not a directory of shards")
    if not Path(data_dir).exists():
        raise ValueError(f"--data-dir: data directory not found: {data_dir}; make FineWeb-Edu's shards with "
                         f"`python fineweb.py` (README: The real run), or start with the bundled corpus: "
                         f"`python train_gpt2.py --preset quickstart`")
    try:
        for split in splits:
            list_shards(data_dir, split)
    except FileNotFoundError as e:
        raise ValueError(f"--data-dir: {e}") from None


def shape_conflicts(cfg: TrainConfig, weights: GPTConfig, with_defaults: bool) -> list[str]:
    """--model, the shape flags and --vocab-size where they ask for another shape than `weights` has: as given, or
    with_defaults as they default to when not given."""
    name = cfg.model or (DEFAULT_MODEL if with_defaults else None)
    vocab_size = cfg.vocab_size or (PADDED_VOCAB_SIZE if with_defaults else None)
    conflicts = [f"{flag(field)} {value}" for field, value in shape_given(cfg).items()
                 if value != getattr(weights, field)]
    if name and not conflicts:
        preset = config_from_preset(name, vocab_size=weights.vocab_size, **shape_given(cfg))
        if preset.shape() != weights.shape():
            conflicts.append(f"--model {name} ({preset.describe(vocab=False)})")
    if vocab_size and vocab_size != weights.vocab_size:
        conflicts.append(f"--vocab-size {vocab_size}")
    return conflicts


def check_fits_weights(cfg: TrainConfig, weights: GPTConfig) -> None:
    """--model and --vocab-size, where given, must be the shape of --init-from's weights; --seq-len must fit them."""
    if conflicts := shape_conflicts(cfg, weights, with_defaults=False):
        raise ValueError(f"{'; '.join(conflicts)}: not the shape of --init-from {cfg.init_from}'s weights "
                         f"({weights.describe()}); leave the flag out or make it match")
    check_seq_len(cfg, weights)


# Flags that, changed on resume, would change the model or the stream of training data: refused. The model's shape
# (--model, --vocab-size) is compared with the checkpoint's model config instead.
RESUME_FIXED = ("init_from", "seq_len", "total_batch_size", "data_dir", "shuffle", "shuffle_documents", "dropout")
RESUME_IGNORED = ("model", "vocab_size", *SHAPE_FLAGS, "resume", "resume_from", "run_dir", "allow_data_change")


def resume_changes(cfg: TrainConfig, checkpoint: dict[str, Any], path: Path) -> list[str]:
    """Refuse, in one line naming each flag, a command that would continue `checkpoint` with another model or data
    stream; return the other flags that changed since the checkpoint (learning rate, steps, intervals ...)."""
    if path.is_dir() != (cfg.parallel == "fsdp"):
        mode, form = ("fsdp", "a DCP directory") if path.is_dir() else ("ddp", "one file")
        raise ValueError(f"cannot resume {path} with --parallel {cfg.parallel}: it is the checkpoint of a --parallel "
                         f"{mode} run ({form}); rerun with --parallel {mode}, or pass another --run-dir to start a "
                         f"new run")
    saved = checkpoint.get("train_config") or {}
    shuffled = saved.get("shuffle") or saved.get("shuffle_documents")
    fixed = RESUME_FIXED + (("seed",) if shuffled else ())  # the seed orders a shuffled stream
    ours = dataclasses.asdict(cfg)
    saved_shape = config_from_checkpoint(checkpoint, str(path))
    refused = shape_conflicts(cfg, saved_shape, with_defaults=not cfg.init_from)
    changed = []
    for name, old in saved.items():
        if name not in ours or name in RESUME_IGNORED or ours[name] == old:
            continue
        if name == "data_dir" and Path(old).resolve() == Path(ours[name]).resolve():
            continue
        (refused if name in fixed else changed).append(f"{flag(name)} {old!r} -> {ours[name]!r}")
    if refused:
        raise ValueError(
            f"cannot resume {path} with this command: {'; '.join(refused)} would change the model or its data "
            f"(checkpoint: {saved_shape.describe()}); rerun with the checkpoint's values, or "
            f"pass another --run-dir to start a new run"
        )
    return changed


# ----------------------------------------------------------------------------------------------------------------
# The train step


def train_step(ctx: RunContext, state: TrainState, train_model: torch.nn.Module, lr: float) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches on every rank: (the loss averaged over ranks, the gradient
    norm before clipping). A non-finite loss or norm ends the run before the update (see diverged), but under fp16,
    whose gradient scaler skips that update and lowers its scale."""
    cfg, optimizer, scaler = ctx.cfg, state.optimizer, state.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=ctx.device)
    for micro_step in range(ctx.grad_accum):
        x, y = state.train_loader.next_batch()  # (B, T) each
        with gradient_sync(train_model, ctx.ranks, sync=micro_step == ctx.grad_accum - 1):
            with ctx.autocast():  # [1]: the loss; the (B, T, vocab) logits are let go at once, not kept to backward
                loss = train_model(x, y, loss_chunk_size=cfg.loss_chunk_size)[1]
            loss = loss / ctx.grad_accum  # the mean over micro-steps, as one big batch would have
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
    ctx.ranks.all_mean(loss_sum)
    scaler.unscale_(optimizer)
    norm = clip_grad_norm(state.model.parameters(), cfg.grad_clip or float("inf"))
    loss_value, norm_value = loss_sum.item(), norm.item()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)) and not scaler.is_enabled():
        raise NonFiniteStep(state.step, loss_value, norm_value)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, norm_value


class NonFiniteStep(FloatingPointError):
    """A train step whose loss or gradient norm is not finite: 'step 7: non-finite loss nan and gradient norm nan'."""

    def __init__(self, step: int, loss: float, norm: float):
        what = " and ".join(f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", norm))
                            if not math.isfinite(value))
        super().__init__(f"step {step}: non-finite {what}")


# ----------------------------------------------------------------------------------------------------------------
# The evaluations


def due(interval: int, step: int, last: bool) -> bool:
    """Whether what runs every `interval` steps (an evaluation, a checkpoint) is due at `step`: 0 turns it off, and
    the last step has every one that is on."""
    return bool(interval) and (step % interval == 0 or last)


class Evaluator:
    """The evaluations of a run, set up once: the val loss over --val-tokens, HellaSwag, samples. Each looks at the
    stop request as it goes and, asked to stop, leaves its work unfinished; the ranks learn of it in the
    evaluation's one collective, so they all discard the result together."""

    def __init__(self, ctx: RunContext, model: GPT, forward: torch.nn.Module,
                 hellaswag: tuple[Optional[list[dict]], str]):
        """model: the plain model (HellaSwag, samples); forward: its view for validation (compiled or not);
        hellaswag: the examples (None when off) and the run summary's line (hellaswag.load_for_training)."""
        self.ctx, self.model, self.forward = ctx, model, forward
        self.examples, self.hellaswag_status = hellaswag
        self.val_loader = ctx.loader("val", model.config.vocab_size)
        window = ctx.cfg.micro_batch_size * ctx.cfg.seq_len
        self.val_windows = max(1, min(ctx.cfg.val_tokens, self.val_loader.num_tokens - 1) // window)

    @property
    def val_tokens(self) -> int:
        """--val-tokens as evaluated: whole B x T windows, at most as many as the val split holds."""
        return self.val_windows * self.ctx.cfg.micro_batch_size * self.ctx.cfg.seq_len

    def due(self, step: int, last: bool) -> set[str]:
        """The evaluations due at `step`: "val" (which also ends every run), "hellaswag", "samples"."""
        cfg = self.ctx.cfg
        names = {"val"} if last or due(cfg.eval_interval, step, last) else set()
        if self.examples and due(cfg.hellaswag_interval, step, last):
            names.add("hellaswag")
        if step > 0 and due(cfg.sample_interval, step, last):
            names.add("samples")
        return names

    def run(self, step: int, last: bool) -> Optional[dict[str, float]]:
        """The evaluations due at `step`, logged together once all are done: their scalars ({} when none is due).
        Cut short by a stop request: None, nothing logged, so that a resumed run does them again."""
        names = self.due(step, last)
        scalars = self.measure(names)
        if scalars is None:
            return None
        texts = self.samples() if "samples" in names else []
        self.report(step, scalars, texts)
        return scalars

    def measure(self, names: set[str]) -> Optional[dict[str, float]]:
        """The val loss and HellaSwag where named: {"val/loss": ..., "hellaswag/acc_norm": ...,
        "hellaswag/acc_norm_harness": ...} (see hellaswag_scores); None if a stop request cut them short on any
        rank."""
        scalars = {}
        with self.ctx.autocast():
            if "val" in names:
                if (val_loss := self.val_loss()) is None:
                    return None
                scalars["val/loss"] = val_loss
            if "hellaswag" in names and self.examples:
                if (hellaswag := self.hellaswag_scores()) is None:
                    return None
                scalars.update(hellaswag)
        return scalars

    def summed_over_ranks(self, pieces: int, piece: Callable[[int], list[float]],
                          width: int) -> Optional[list[float]]:
        """The sums of piece(0), ..., piece(pieces - 1) (each `width` numbers) on this rank, then over the ranks;
        None if a stop request cut the work short on any rank. The request is looked at before each piece."""
        sums, abandoned = [0.0] * width, 0.0
        for i in range(pieces):
            if self.ctx.stop.requested:
                abandoned = 1.0
                break
            sums = [total + value for total, value in zip(sums, piece(i))]
        *sums, abandoned = self.ctx.ranks.all_sum([*sums, abandoned])
        return None if abandoned else sums

    @torch.no_grad()
    def val_loss(self) -> Optional[float]:
        """Mean loss over the first val_windows B x T windows of the val split, the same windows at every world size
        (rank r takes windows r, r + W, ...)."""
        rank, world_size = self.ctx.ranks.rank, self.ctx.ranks.world_size

        def window(i: int) -> list[float]:
            x, y = self.val_loader.next_batch()  # (B, T) each: window i * W + r
            # the loss as training computes it; on every rank, past the last window too: see distributed.py
            loss = self.forward(x, y, loss_chunk_size=self.ctx.cfg.loss_chunk_size)[1].item()
            return [loss] if i * world_size + rank < self.val_windows else [0.0]

        self.forward.eval()
        self.val_loader.reset()
        sums = self.summed_over_ranks(-(-self.val_windows // world_size), window, 1)
        self.forward.train()
        return None if sums is None else sums[0] / self.val_windows

    def hellaswag_scores(self) -> Optional[dict[str, float]]:
        """acc_norm over all examples, completion style ("hellaswag/acc_norm", build-nanogpt's) and, where the
        examples have its fields, harness style ("hellaswag/acc_norm_harness", lm-evaluation-harness's; see
        hellaswag.py). Split across ranks (rank r scores r, r + W, ...); every rank judges as many (its share padded
        with copies of the first example, not counted), so they run the same forward passes."""
        mine = self.examples[self.ctx.ranks.rank :: self.ctx.ranks.world_size]
        share = -(-len(self.examples) // self.ctx.ranks.world_size)
        padded = mine + self.examples[:1] * (share - len(mine))

        def chunk(i: int) -> list[float]:
            start = i * HELLASWAG_CHUNK
            judged = judge_examples(self.model, padded[start : start + HELLASWAG_CHUNK], self.ctx.device)
            counted = judged[: max(0, len(mine) - start)]
            return [sum(j.acc_norm for j in counted), sum(bool(j.harness_acc_norm) for j in counted), len(counted)]

        with eager():
            sums = self.summed_over_ranks(-(-share // HELLASWAG_CHUNK), chunk, 3)
        if sums is None:
            return None
        scores = {"hellaswag/acc_norm": sums[0] / sums[2]}
        if harness_style_applies(self.examples):
            scores["hellaswag/acc_norm_harness"] = sums[1] / sums[2]
        return scores

    def samples(self) -> list[str]:
        """The same samples on every rank (one seed): under FSDP2 all take part. The master logs them."""
        cfg = self.ctx.cfg
        with self.ctx.autocast(), eager():
            return sample_texts(self.model, cfg.sample_prompt, cfg.num_samples, cfg.sample_tokens, self.ctx.device,
                                top_k=SAMPLE_TOP_K, seed=cfg.seed)

    def report(self, step: int, scalars: dict[str, float], texts: list[str]) -> None:
        """The evaluations' lines on the console and in log.txt, their scalars in the live metrics."""
        log = self.ctx.log
        if "val/loss" in scalars:
            log.say(f"step {step:5d} | val loss {scalars['val/loss']:.4f}")
            log.events(step, {"val": scalars["val/loss"]})
        if "hellaswag/acc_norm" in scalars:
            log.say(f"step {step:5d} | {describe_hellaswag(scalars)}")
            log.events(step, {kind: scalars[tag] for tag, kind in HELLASWAG_EVENTS.items() if tag in scalars})
        log.scalars(step, scalars)
        for i, text in enumerate(texts, start=1):
            log.say(f"sample {i}: {text}")
            log.comment(f"step {step} sample {i}: {text}")


# The HellaSwag scalars and their event lines in log.txt ("hella" is build-nanogpt's, completion style).
HELLASWAG_EVENTS = {"hellaswag/acc_norm": "hella", "hellaswag/acc_norm_harness": "hella_harness"}


def describe_hellaswag(scalars: dict[str, float]) -> str:
    """'HellaSwag acc_norm 0.2955 (completion style) | 0.3114 (harness style)', each figure named for its kind."""
    text = f"HellaSwag acc_norm {scalars['hellaswag/acc_norm']:.4f} (completion style)"
    if "hellaswag/acc_norm_harness" in scalars:
        text += f" | {scalars['hellaswag/acc_norm_harness']:.4f} (harness style)"
    return text


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and stops


class CheckpointSchedule:
    """When a checkpoint is written: every --checkpoint-interval steps, every --checkpoint-minutes (the master's
    monotonic clock, which no NTP step or VM resume turns back), at the end and on a stop request; never twice for the
    same progress, never for step 0, never of non-finite state. The end's supersedes those written for a crash or a
    stop: they go."""

    def __init__(self, ctx: RunContext, state: TrainState, resumed: Optional[Path]):
        self.ctx, self.last_time = ctx, time.monotonic()
        # the progress of the newest checkpoint, written or resumed from (a state past step 0 was resumed)
        self.saved: Optional[Progress] = state.progress() if state.step > 0 else None
        self.checked = resumed  # the newest checkpoint whose values this run checked finite (written or resumed)

    def at_boundary(self, state: TrainState, last: bool) -> bool:
        """At a step boundary, write a checkpoint if one is due; return whether the run stops here. Every rank
        decides the same, in the boundary's one collective."""
        cfg, ranks = self.ctx.cfg, self.ctx.ranks
        minutes_due = ranks.master and cfg.checkpoint_minutes > 0 and \
            time.monotonic() - self.last_time >= 60 * cfg.checkpoint_minutes
        stopping, minutes_due = ranks.any_rank(self.ctx.stop.requested, minutes_due)
        wanted = last or stopping or minutes_due or due(cfg.checkpoint_interval, state.step, last)
        if wanted and state.step > 0 and self.saved != state.progress():
            self.save(state, last)
        return stopping

    def save(self, state: TrainState, last: bool) -> None:
        """Write the checkpoint atomically (see save_training_state) and prune the oldest beyond
        --keep-checkpoints; at the end, the superseded ones too. Non-finite state is not written: the run ends."""
        cfg, log, ranks = self.ctx.cfg, self.ctx.log, self.ctx.ranks
        bad = [f"{what} on rank {rank}" if ranks.enabled else what
               for rank, what in enumerate(ranks.gather(first_non_finite(state.model, state.optimizer))) if what]
        if bad:
            raise self.failure(FloatingPointError(
                f"step {state.step}: non-finite values in {bad[0]}; the checkpoint is not written. "
                f"{self.kept()}; try a lower --max-lr or more warmup"))
        try:
            same_step = self.saved is not None and self.saved.step == state.step  # its evaluations since done
            path = save_training_state(state, cfg.run_dir, cfg.keep_checkpoints, ranks, tensors_saved=same_step)
        except CheckpointWriteError as e:
            raise self.failure(CheckpointWriteError(f"{e}; once it can be written, {self.ctx.rerun} to continue"))
        log.note(f"saved checkpoint {path}")
        log.flush_metrics()  # the curves as far as the checkpoint, whatever happens next
        self.saved, self.last_time, self.checked = state.progress(), time.monotonic(), path
        if last and ranks.master:
            remove_superseded_checkpoints(cfg.run_dir, state.step, cfg.checkpoint_interval)

    def kept(self) -> str:
        """What a run that ends in a fault leaves: 'The newest checkpoint, X, is intact (checked finite)', said only
        of one this run checked."""
        newest = newest_checkpoint(self.ctx.cfg.run_dir)
        if newest is None:
            return "No checkpoint had been written yet"
        if newest == self.checked:
            return f"The newest checkpoint, {newest}, is intact (its values were checked finite)"
        return f"The newest checkpoint is {newest}, which this run has not checked"

    def failure(self, error: Exception) -> Exception:
        """A fault the run ends with, in log.txt too; said by the master (the other ranks end silently with its
        code)."""
        self.ctx.log.comment(str(error))
        return error if self.ctx.ranks.master else Exit("", 1)

    def diverged(self, step: "NonFiniteStep") -> Exception:
        """The end of a run whose loss or gradient norm is not finite, true about the checkpoints."""
        return self.failure(FloatingPointError(f"{step}; stopped before the update. {self.kept()}; try a lower "
                                               f"--max-lr or more warmup"))

    def stopped(self, state: TrainState) -> Exit:
        """The one line a stopped run ends with, also in log.txt; no rank leaves before the checkpoint is written."""
        self.ctx.ranks.barrier()
        if self.saved is None:
            where = "before the first step; nothing to save"
        else:
            path = checkpoint_path(self.ctx.cfg.run_dir, self.saved.step, state.sharded)
            where = f"at step {state.step}; checkpoint {path}; {self.ctx.rerun} to continue"
        ending = self.ctx.stop.ending(where, shown=self.ctx.ranks.master)
        self.ctx.log.comment(str(ending))
        return ending


# ----------------------------------------------------------------------------------------------------------------
# Evaluation only, and the command


def evaluate_only(ctx: RunContext) -> dict[str, Any]:
    """--eval-only: the evaluations of training, once, on a model given by --init-from (a hub name, HF directory,
    checkpoint or run directory) or on --run-dir's newest checkpoint; the ranks split the work as in training."""
    cfg = ctx.cfg
    if cfg.init_from:
        init, model = cfg.init_from, load_model(cfg.init_from, say=ctx.log.say)
    elif found := newest_that_loads(cfg.run_dir, model_at, ctx.log.note):  # named: the evaluation line says which
        init, model = str(found[0]), found[1]
    else:
        raise nothing_to_evaluate(cfg)
    prepare_data(ctx)
    hellaswag = load_for_training(cfg.hellaswag_path, cfg.hellaswag_interval)
    model = model.to(ctx.device)
    check_seq_len(cfg, model.config)
    evaluator = Evaluator(ctx, model, ctx.compiled(model), hellaswag)
    scalars = evaluator.measure({"val", "hellaswag"})
    if scalars is None:  # a stop request, on this rank or another
        raise ctx.stop.ending("during the evaluation; nothing recorded", shown=ctx.ranks.master)
    val_loss, acc_norm = scalars["val/loss"], scalars.get("hellaswag/acc_norm")
    hella = f"{describe_hellaswag(scalars)} on {len(evaluator.examples):,} examples" if acc_norm is not None \
        else f"HellaSwag {evaluator.hellaswag_status}"
    ctx.log.comment(f"eval-only at {utc_now()} of {init}: model {json.dumps(dataclasses.asdict(model.config))}, "
                    f"trained with {json.dumps(train_config_of(init) or None)}, evaluated with "
                    f"{json.dumps({name: getattr(cfg, name) for name in EVALUATION_SETTINGS})}")
    ctx.log.note(f"eval-only {init}: val loss {val_loss:.4f} on {evaluator.val_tokens:,} tokens of {cfg.data_dir}; "
                 f"{hella}")
    return {"val_loss": val_loss, "hellaswag": acc_norm, "init": init}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run cfg in this process, alone or as one rank of a torchrun job, holding the run directory (see
    holding_run_dir). SIGINT, SIGTERM and SIGHUP are stop requests while it runs, and under torchrun the end of its
    agent too (see StopRequest)."""
    ranks, rerun = Ranks.from_environment(), rerun_advice(cfg)
    cfg, restarted = first_start_only(cfg)
    with StopRequest(watch_parent=under_torchrun()) as stop, \
            process_group(ranks, cfg.device, cfg.dist_timeout, rerun) as device, \
            holding_run_dir(cfg, ranks), RunLog(Path(cfg.run_dir), ranks.master) as log:
        allow_tf32(device)
        if restarted:
            log.note(restarted)
        ctx = RunContext(cfg, ranks, device, pick_dtype(device, cfg.dtype), log, stop, rerun)
        return (evaluate_only if cfg.eval_only else run)(ctx)


def first_start_only(cfg: TrainConfig) -> tuple[TrainConfig, Optional[str]]:
    """--no-resume and --resume-from act on the first start of a run. A launcher's restart of the same command
    (torchrun --max-restarts) resumes from the run directory's newest checkpoint instead, or from --resume-from's
    while the run has written none. Return the config to run and, on a restart, the line that says so."""
    restart = launcher_restart()
    if restart is None or cfg.eval_only:
        return cfg, None
    if cfg.resume is False:  # (--resume-from and --no-resume together are refused)
        first_only, cfg = "--no-resume", dataclasses.replace(cfg, resume=None)
    elif cfg.resume_from and newest_checkpoint(cfg.run_dir) is not None:
        first_only, cfg = "--resume-from", dataclasses.replace(cfg, resume_from="")
    else:
        return cfg, f"{restart}; the run continues from its newest checkpoint"
    return cfg, (f"{restart}: {first_only} acts on the run's first start only; this start resumes from the newest "
                 f"checkpoint in {cfg.run_dir}")


@contextlib.contextmanager
def holding_run_dir(cfg: TrainConfig, ranks: Ranks) -> Iterator[None]:
    """A training run holds its run directory for its whole life (the master rank, an OS-level lock: released on any
    exit, SIGKILL included), so that a second run there is refused in one line naming the process that holds it,
    before it writes anything. Every rank learns of the refusal. --eval-only only reads: it holds nothing."""
    if cfg.eval_only:
        yield
        return
    with contextlib.ExitStack() as held:
        refusal = None
        if ranks.master:
            try:
                held.enter_context(hold_directory(cfg.run_dir, "a training run"))
            except BlockingIOError as e:
                refusal = ValueError(f"--run-dir {e}")
        if ranks.any_rank(refusal is not None)[0]:
            raise refusal or Exit("", 1)  # the master says why
        yield


# What an --eval-only result depends on, recorded beside it in log.txt.
EVALUATION_SETTINGS = (*EVALUATED_RUN_SETTINGS, "hellaswag_path", "hellaswag_interval", "dtype", "attention",
                       "loss_chunk_size", "seed")


def nothing_to_evaluate(cfg: TrainConfig) -> ValueError:
    return ValueError(f"--eval-only: nothing to evaluate: {cfg.run_dir} holds no checkpoint (ckpt_NNNNNN.pt or "
                      f"ckpt_NNNNNN/); pass --init-from (a hub name, HF directory, checkpoint or run directory), or "
                      f"the --run-dir of a run with checkpoints")


def rerun_advice(cfg: TrainConfig) -> str:
    """How to continue this run from its newest checkpoint: the same command, but for --no-resume and --resume-from,
    which would set that checkpoint aside and start over, or go back."""
    if cfg.resume is False or cfg.resume_from:
        return f"rerun the same command without {'--no-resume' if cfg.resume is False else '--resume-from'}"
    return "rerun the same command"


def main(argv: Optional[list[str]] = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    run_cli(main)
