"""Pretrain GPT-2 on pretokenized shards, in one process or with torchrun (DDP).

    python train_gpt2.py --preset quickstart                        # CPU, bundled Shakespeare, a few minutes
    python train_gpt2.py                                            # GPT-2 124M on edu_fineweb10B/
    torchrun --standalone --nproc_per_node=8 train_gpt2.py          # the same on 8 GPUs

The defaults are build-nanogpt's published GPT-2 124M run: 0.5M-token batches, 19,073 steps (10B tokens).
A run directory holds an append-only log.txt and checkpoints; rerunning the same command resumes exactly. Ctrl-C
or SIGTERM (preemption) stops every rank at the next step boundary, with a checkpoint of exactly that step.
"""

import signal

if __name__ == "__main__":
    # Until the run installs its stop handlers, Ctrl-C ends the process quietly, not with a traceback of whichever
    # import below it interrupted.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from checkpoint import (  # noqa: E402
    DEFAULT_RUN_DIR,
    checkpoint_path,
    config_of,
    load_checkpoint,
    load_model,
    newest_checkpoint,
    prune_checkpoints,
    remove_unfinished_checkpoints,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from cli import ArgumentParser, Exit, StopRequest, first_line, run_cli  # noqa: E402
from common import (  # noqa: E402
    ATTENTION_BACKENDS,
    COMPILE_MODES,
    DEVICE_FLAG,
    DTYPE_FLAG,
    allow_tf32,
    attention_backend,
    autocast,
    check_attention_backend,
    compile_model,
    compile_wanted,
    peak_flops_of,
    pick_device,
    pick_dtype,
    synchronize,
)
from dataloader import ShardLoader, list_shards  # noqa: E402
from metrics import Metrics, check_wandb_installed  # noqa: E402
from model import GPT, PADDED_VOCAB_SIZE, PRESETS, GPTConfig, config_from_preset  # noqa: E402
from sample import sample_texts  # noqa: E402
from tokenizer import N_VOCAB  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "gpt2"
PROJECTION_STEPS = 5  # timed steps (after the first, which compiles) before the run projects its speed and ETA
QUICKSTART_CORPUS = ROOT / "assets" / "shakespeare"
QUICKSTART_DATA = "data/shakespeare"  # the quickstart tokenizes the bundled corpus here on first use
HELLASWAG_CHUNK = 64  # examples scored between two looks at the stop request
SAMPLE_TOP_K = 50


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def positive(value: float) -> Optional[str]:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: float) -> Optional[str]:
    return None if value >= 0 else f"must be >= 0, got {value}"


def fraction(value: float) -> Optional[str]:
    return None if 0 <= value <= 1 else f"must be in [0, 1], got {value}"


def option(default: Any, help: str, check: Optional[Callable[[Any], Optional[str]]] = None, **argparse_settings) -> Any:
    """A TrainConfig field: its flag's help, a check of its value (None or the problem) and other argparse settings."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "argparse": argparse_settings})


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
    resume: Optional[bool] = option(None, "continue from the newest checkpoint in run_dir; default: when there is one")
    seed: int = option(1337, "seed of the model init, data shuffle and samples")
    device: str = option(**DEVICE_FLAG)
    dtype: str = option(**DTYPE_FLAG)
    compile: Optional[bool] = option(None, "torch.compile the model; default: on CUDA only")
    loss_chunk_size: int = option(0, "compute the loss this many positions at a time, fused with the output "
                                     "projection, never materialising the (B, T, vocab) logits (less memory, room "
                                     "for a larger --micro-batch-size); 0: the whole logits at once",
                                  non_negative)
    attention: str = option("auto", "SDPA kernel of attention: auto (PyTorch's pick), flash, efficient, cudnn "
                                    "(CUDA), math", choices=ATTENTION_BACKENDS)
    compile_mode: str = option("default", "torch.compile mode, when compiling", choices=COMPILE_MODES)
    peak_flops: float = option(0.0, "per-device peak FLOP/s for MFU; 0: known GPUs only", non_negative)
    tensorboard: bool = option(True, "TensorBoard event files in the run directory (tensorboard --logdir RUN_DIR)")
    wandb_project: str = option("", "also log the metrics to this Weights & Biases project (needs wandb; "
                                    "WANDB_MODE=offline keeps them on disk)")
    eval_only: bool = option(False, "evaluate and exit: the val loss (on --val-tokens) and, where its data is at "
                                    "hand, HellaSwag of --init-from's model, else of --run-dir's newest checkpoint; "
                                    "printed and appended to --run-dir's log.txt")
    dist_timeout: float = option(300.0, "seconds a rank waits for the others in a collective before the run ends "
                                        "with an error (a dead or frozen peer)", positive)

    def check(self, world_size: int = 1) -> None:
        """Raise ValueError, naming the flag, for a value or a combination no run can use."""
        for f in dataclasses.fields(self):
            value, check = getattr(self, f.name), f.metadata["check"]
            if check is not None and value is not None and (problem := check(value)):
                raise ValueError(f"{flag(f.name)} {problem}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is longer than the run "
                             f"(--max-steps {self.max_steps})")
        if self.model is not None and self.model not in PRESETS:
            raise ValueError(f"--model {self.model!r}: choose from {', '.join(PRESETS)}")
        if not self.init_from and not self.eval_only:  # the shape of weights is known once they are loaded
            model_config(self)
        if not self.eval_only:
            gradient_accumulation_steps(self, world_size)
        if self.val_tokens < self.micro_batch_size * self.seq_len:
            raise ValueError(f"--val-tokens {self.val_tokens} is less than one micro-batch (--micro-batch-size x "
                             f"--seq-len = {self.micro_batch_size * self.seq_len})")
        device = pick_device(self.device)
        try:
            pick_dtype(device, self.dtype)
        except ValueError as e:
            raise ValueError(f"--dtype {self.dtype} on {device}: {e}") from None
        try:
            check_attention_backend(self.attention, device)
        except ValueError as e:
            raise ValueError(f"--attention: {e}") from None
        if self.wandb_project:
            check_wandb_installed()
        if self.data_dir != QUICKSTART_DATA:
            try:
                for split in ("val",) if self.eval_only else ("train", "val"):
                    list_shards(self.data_dir, split)
            except FileNotFoundError as e:
                raise ValueError(f"--data-dir: {e}") from None


# --preset: the four GPT-2 sizes with build-nanogpt's recipe, and a small CPU run on the bundled corpus.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "gpt2-medium": dict(model="gpt2-medium", run_dir="log-medium"),
    "gpt2-large": dict(model="gpt2-large", run_dir="log-large"),
    "gpt2-xl": dict(model="gpt2-xl", run_dir="log-xl"),
    "quickstart": dict(
        model="mini", data_dir=QUICKSTART_DATA, run_dir="runs/quickstart", total_batch_size=2048,
        micro_batch_size=16, seq_len=128, max_lr=1e-3, warmup_steps=20, max_steps=150, eval_interval=25,
        val_tokens=4 * 16 * 128, hellaswag_interval=0, sample_interval=150, num_samples=2, sample_tokens=48,
        checkpoint_interval=50, sample_prompt="ROMEO.\n",
    ),
}


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def build_parser(defaults: TrainConfig) -> ArgumentParser:
    """The flags of TrainConfig's fields, with `defaults` (a preset's values) as their defaults, so -h shows them."""
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="gpt2", choices=TRAIN_PRESETS,
                        help="a set of defaults that the other flags override; -h with it shows its values")
    for f in dataclasses.fields(TrainConfig):
        settings = dict(f.metadata["argparse"])
        settings.pop("default", None)
        value_type = next((t for t in typing.get_args(f.type) if t is not type(None)), f.type)  # Optional[X] -> X
        if value_type is bool:
            settings["action"] = argparse.BooleanOptionalAction
        else:
            settings.setdefault("type", value_type)
            if "choices" not in settings:
                settings["metavar"] = f.name.upper()
        parser.add_argument(flag(f.name), default=getattr(defaults, f.name), help=f.metadata["help"], **settings)
    return parser


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """--preset picks the defaults, then every flag given overrides its field; any problem is a usage error."""
    preset_parser = ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset", default="gpt2", choices=TRAIN_PRESETS)
    preset = preset_parser.parse_known_args(argv)[0].preset
    parser = build_parser(TrainConfig(**TRAIN_PRESETS[preset]))
    values = vars(parser.parse_args(argv))
    values.pop("preset")
    cfg = TrainConfig(**values)
    try:
        cfg.check(int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as e:
        parser.error(str(e))
    return cfg


def gradient_accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    tokens_per_micro_step = cfg.micro_batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step:
        raise ValueError(
            f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size x --seq-len x "
            f"world size = {cfg.micro_batch_size} x {cfg.seq_len} x {world_size} = {tokens_per_micro_step}"
        )
    return cfg.total_batch_size // tokens_per_micro_step


def describe_shape(config: GPTConfig, vocab: bool = True) -> str:
    shape = f"n_layer {config.n_layer}, n_head {config.n_head}, n_embd {config.n_embd}, block_size {config.block_size}"
    return shape + (f", vocab_size {config.vocab_size}" if vocab else "")


def shape_conflicts(cfg: TrainConfig, weights: GPTConfig, with_defaults: bool) -> list[str]:
    """--model and --vocab-size where they ask for another shape than `weights` has: as given, or with_defaults as
    they default to when not given."""
    name = cfg.model or (DEFAULT_MODEL if with_defaults else None)
    vocab_size = cfg.vocab_size or (PADDED_VOCAB_SIZE if with_defaults else None)
    conflicts = []
    if name and (preset := config_from_preset(name, vocab_size=weights.vocab_size)) != weights:
        conflicts.append(f"--model {name} ({describe_shape(preset, vocab=False)})")
    if vocab_size and vocab_size != weights.vocab_size:
        conflicts.append(f"--vocab-size {vocab_size}")
    return conflicts


def model_config(cfg: TrainConfig, weights: Optional[GPTConfig] = None) -> GPTConfig:
    """The shape a command trains: --model's preset with --vocab-size or, given the config of --init-from's
    `weights`, that, which --model and --vocab-size must then match where given. --seq-len must fit its context."""
    if weights is None:
        config = config_from_preset(cfg.model or DEFAULT_MODEL, vocab_size=cfg.vocab_size or PADDED_VOCAB_SIZE)
    elif conflicts := shape_conflicts(cfg, weights, with_defaults=False):
        raise ValueError(f"{'; '.join(conflicts)}: not the shape of --init-from {cfg.init_from}'s weights "
                         f"({describe_shape(weights)}); leave the flag out or make it match")
    else:
        config = weights
    config.check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")
    return config


# Flags that, changed on resume, would change the model or the stream of training data: refused. The model's shape
# (--model, --vocab-size) is compared with the checkpoint's model config instead.
RESUME_FIXED = ("init_from", "seq_len", "total_batch_size", "data_dir", "shuffle")
RESUME_IGNORED = ("model", "vocab_size", "resume", "run_dir")


def resume_changes(cfg: TrainConfig, state: dict[str, Any], path: Path) -> list[str]:
    """Refuse, in one line naming each flag, a command that would continue `state` with another model or data
    stream; return the other flags that changed since the checkpoint (learning rate, steps, intervals ...)."""
    saved = state.get("train_config") or {}
    fixed = RESUME_FIXED + (("seed",) if saved.get("shuffle") else ())  # the seed orders a shuffled stream
    ours = dataclasses.asdict(cfg)
    saved_shape = config_of(state, str(path))
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
            f"(checkpoint: {describe_shape(saved_shape)}); rerun with the checkpoint's values, or "
            f"pass another --run-dir to start a new run"
        )
    return changed


def get_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to max_lr, cosine decay to min_lr at max_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# ----------------------------------------------------------------------------------------------------------------
# Processes, logs and timing


@dataclass
class Dist:
    """This process's place among the ranks, and the collectives the loop uses."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run: the GPU with nccl, the CPU with gloo

    @classmethod
    def from_environment(cls) -> "Dist":
        """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them, one process."""
        if "RANK" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over ranks, in place (SUM then divide: gloo has no AVG)."""
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks, in float64."""
        if not self.enabled:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.tolist()

    def any_rank(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank: how the ranks agree (one small collective)."""
        return [total > 0 for total in self.all_sum([float(f) for f in flags])]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(ddp: Dist, device_name: str, timeout_seconds: float) -> torch.device:
    """Join the process group torchrun describes: nccl on CUDA, gloo on CPU, every collective bounded by the
    timeout. Returns this rank's device."""
    device = pick_device(device_name)
    if not ddp.enabled:
        return device
    timeout = timedelta(seconds=timeout_seconds)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device, timeout=timeout)
    else:
        # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group(backend="gloo", timeout=timeout)
    ddp.device = device
    return device


def distributed_failure(e: BaseException, ddp: Dist, timeout_seconds: float) -> Optional[str]:
    """One line for an error that comes from losing a peer (a crash, a frozen or unreachable rank), else None."""
    text = first_line(e)
    if not (isinstance(e, dist.DistError) or re.search(r"gloo|nccl|connection|timed out|timeout", text, re.I)):
        return None
    cause = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]  # without gloo's "[.../pair.cc:537] " and advice
    if re.search(r"timed out|timeout", text, re.I):
        cause += f"; no answer from a peer within --dist-timeout {timeout_seconds:g} s"
    return (f"rank {ddp.rank} of {ddp.world_size}: lost contact with the other ranks ({cause}); torchrun's summary "
            f"names the rank that failed first; rerun the same command to continue from the newest checkpoint")


class RunLog:
    """What the master rank tells: the console, the run's append-only log.txt and, once opened, the live metrics
    (TensorBoard, W&B)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics: Optional[Metrics] = None
        self.path = run_dir / "log.txt"  # created with its directory by the first record, so a run that fails
        # before it has anything to say (an unreachable hub, a bad flag) leaves no empty directory behind

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def record(self, line: str) -> None:
        """One line of log.txt: '{step} {kind} {value}' events, or '#' comments."""
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line.replace("\n", "\\n") + "\n")

    def both(self, text: str) -> None:
        self.say(text)
        self.record("# " + text)

    def open_metrics(self, cfg: TrainConfig, start_step: int, resuming: bool, config: dict[str, Any]) -> None:
        if self.enabled and (cfg.tensorboard or cfg.wandb_project):
            self.metrics = Metrics(self.path.parent, start_step, cfg.tensorboard, cfg.wandb_project, resuming, config)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.log(step, values)

    def flush_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def close(self, failed: bool = False) -> None:
        if self.metrics is not None:
            self.metrics.close(failed)


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


def log_run_header(cfg: TrainConfig, model: GPT, log: RunLog) -> None:
    """The top of a run's section of log.txt: when, the full config, the model, library versions and commit."""
    log.record(f"# run started {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    log.record("# config " + json.dumps(dataclasses.asdict(cfg)))
    log.record("# model " + json.dumps(dataclasses.asdict(model.config)))
    for line in describe_environment():
        log.record("# " + line)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_summary(cfg: TrainConfig, model: GPT, ddp: Dist, grad_accum: int, start_step: int, device: torch.device,
                dtype: torch.dtype, use_compile: bool, train_loader: ShardLoader, val_windows: int,
                hellaswag_status: str) -> list[str]:
    """The block printed at the start of a run: what will be trained, on what, for how long, and where it goes."""
    tokens_per_step = cfg.total_batch_size  # = B x T x grad_accum x world size, checked by gradient_accumulation_steps
    when = [f"every {cfg.checkpoint_interval:,} steps"] if cfg.checkpoint_interval else []
    when += [f"every {cfg.checkpoint_minutes:g} minutes"] if cfg.checkpoint_minutes else []
    precision = "fp32" if dtype == torch.float32 else f"{str(dtype).replace('torch.', '')} autocast"
    loss_form = f"in chunks of {cfg.loss_chunk_size:,}" if cfg.loss_chunk_size else "from whole logits"
    return [
        "run summary",
        f"  model       {cfg.init_from or cfg.model or DEFAULT_MODEL}: {model.num_params():,} parameters, "
        f"{dataclasses.asdict(model.config)}",
        f"  batch       {tokens_per_step:,} tokens/step = {cfg.micro_batch_size} x {cfg.seq_len} x {grad_accum} "
        f"gradient accumulation x {ddp.world_size} ranks",
        f"  steps       {start_step:,} -> {cfg.max_steps:,} (warmup {cfg.warmup_steps:,}), "
        f"{cfg.max_steps * tokens_per_step:,} tokens in all, "
        f"{max(0, cfg.max_steps - start_step) * tokens_per_step:,} to go",
        f"  data        {cfg.data_dir}: {len(train_loader.paths)} train shards; validation on "
        f"{val_windows * cfg.micro_batch_size * cfg.seq_len:,} val tokens ({val_windows} windows of "
        f"{cfg.micro_batch_size} x {cfg.seq_len})",
        f"  HellaSwag   {hellaswag_status}",
        f"  precision   {device}, {precision}, compile {f'on ({cfg.compile_mode})' if use_compile else 'off'}, "
        f"attention {cfg.attention}, loss {loss_form}",
        f"  run dir     {cfg.run_dir}: log.txt, checkpoints {', '.join(when + ['at the end'])} and on Ctrl-C or "
        f"SIGTERM (newest {cfg.keep_checkpoints or 'all'} kept)",
    ]


class StepTimer:
    """Wall time of each optimizer step, and what follows from it: tokens/s, MFU, the ETA and a projection."""

    def __init__(self, tokens_per_step: int, flops_per_token: int, peak_flops: Optional[float], world_size: int):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size = peak_flops, world_size
        self.times: list[float] = []
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.time()

    def stop(self, device: torch.device) -> float:
        synchronize(device)
        self.times.append(time.time() - self.t0)
        return self.times[-1]

    def seconds_per_step(self) -> float:
        recent = self.times[1:][-20:] or self.times  # the first step includes compilation
        return sum(recent) / len(recent)

    def rates(self) -> dict[str, float]:
        """The newest step's tokens/s and, where the device's peak is known, MFU in percent."""
        tokens_per_sec = self.tokens_per_step / self.times[-1]
        rates = {"perf/tokens_per_sec": tokens_per_sec}
        if self.peak_flops:
            rates["perf/mfu_percent"] = 100 * self.flops_per_token * tokens_per_sec / self.world_size / self.peak_flops
        return rates

    def report(self, steps_left: int) -> str:
        """'tok/s ... | MFU ... | ETA ...' of the newest step."""
        rates = self.rates()
        mfu = f"{rates['perf/mfu_percent']:.1f}%" if "perf/mfu_percent" in rates else "n/a"
        eta = format_duration(steps_left * self.seconds_per_step())
        return (f"dt {1000 * self.times[-1]:.0f}ms | tok/s {rates['perf/tokens_per_sec']:,.0f} | MFU {mfu} | "
                f"ETA {eta}")

    def projection(self, steps_left: int) -> Optional[str]:
        """Once, after the first PROJECTION_STEPS timed steps: the run's speed and time to finish."""
        if len(self.times) != PROJECTION_STEPS + 1:
            return None
        seconds = self.seconds_per_step()
        return (f"projected after {PROJECTION_STEPS} timed steps: {self.tokens_per_step / seconds:,.0f} tok/s, "
                f"{1000 * seconds:,.0f} ms/step; ETA {format_duration(steps_left * seconds)} for the remaining "
                f"{steps_left:,} steps, evaluations not included")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation. Each evaluation looks at the stop request as it goes and, asked to stop, leaves its work unfinished;
# the ranks learn of it in the evaluation's one collective, so they all discard the result together.


def validation_windows(cfg: TrainConfig, loader: ShardLoader) -> int:
    """How many B x T windows make --val-tokens, at most as many as the val split holds."""
    window = cfg.micro_batch_size * cfg.seq_len
    return max(1, min(cfg.val_tokens, loader.num_tokens - 1) // window)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: ShardLoader, windows: int, ddp: Dist,
                  stop: StopRequest) -> Optional[float]:
    """Mean loss over the first `windows` B x T windows of the split, the same windows at every world size (rank r
    takes windows r, r + W, ...), summed over ranks; None if a stop request cut it short on any rank."""
    model.eval()
    loader.reset()
    total, abandoned = 0.0, 0.0
    for first in range(0, windows, ddp.world_size):
        if stop.requested:
            abandoned = 1.0
            break
        x, y = loader.next_batch()  # (B, T) each: window first + rank
        if first + ddp.rank < windows:
            _, loss = model(x, y)
            total += loss.item()
    model.train()
    total, abandoned = ddp.all_sum([total, abandoned])
    return None if abandoned else total / windows


def load_hellaswag(cfg: TrainConfig) -> tuple[Optional[list[dict]], str]:
    """The HellaSwag val examples (None when off) and a line for the run summary; off, saying why, when the default
    download is out of reach. A --hellaswag-path that cannot be read stops the run: it was asked for."""
    if not cfg.hellaswag_interval:
        return None, "off (--hellaswag-interval 0)"
    from hellaswag import load_examples

    try:
        examples = load_examples("val", cfg.hellaswag_path or None, path_flag="--hellaswag-path")
    except (OSError, ValueError) as e:
        if cfg.hellaswag_path:
            raise type(e)(f"--hellaswag-path: {e}") from None
        return None, f"off for this run: {e}"
    return examples, f"{len(examples):,} val examples every {cfg.hellaswag_interval:,} steps"


@torch.no_grad()
def evaluate_hellaswag(model: GPT, examples: list[dict], ddp: Dist, device: torch.device,
                       stop: StopRequest) -> Optional[float]:
    """acc_norm over all examples, split across ranks (rank r scores r, r + W, ...), counts summed; None if a stop
    request cut it short on any rank."""
    from hellaswag import score_examples

    mine = examples[ddp.rank :: ddp.world_size]
    correct, total, abandoned = 0.0, 0.0, 0.0
    for start in range(0, len(mine), HELLASWAG_CHUNK):
        if stop.requested:
            abandoned = 1.0
            break
        counts = score_examples(model, mine[start : start + HELLASWAG_CHUNK], device)
        correct, total = correct + counts["acc_norm_correct"], total + counts["total"]
    correct, total, abandoned = ddp.all_sum([correct, total, abandoned])
    return None if abandoned else correct / total


def due(interval: int, step: int, last: bool) -> bool:
    """Whether what runs every `interval` steps (an evaluation, a checkpoint) is due at `step`: 0 turns it off, and
    the last step has every one that is on."""
    return bool(interval) and (step % interval == 0 or last)


def run_evaluations(step: int, last: bool, cfg: TrainConfig, model: GPT, compiled: torch.nn.Module,
                    val_loader: ShardLoader, val_windows: int, hellaswag: Optional[list[dict]], ddp: Dist,
                    log: RunLog, stop: StopRequest, device: torch.device) -> Optional[dict[str, float]]:
    """The evaluations due at `step` (val loss, HellaSwag, samples), run under the caller's autocast and logged
    together once all are done: their scalars ("val/loss", "hellaswag/acc_norm"; {} when none is due). Cut short by
    a stop request: None, nothing logged, so a resumed run does them again."""
    scalars, texts = {}, []
    if last or due(cfg.eval_interval, step, last):  # validation also ends every run
        val_loss = evaluate_loss(compiled, val_loader, val_windows, ddp, stop)
        if val_loss is None:
            return None
        scalars["val/loss"] = val_loss
    if hellaswag is not None and due(cfg.hellaswag_interval, step, last):
        acc_norm = evaluate_hellaswag(model, hellaswag, ddp, device, stop)
        if acc_norm is None:
            return None
        scalars["hellaswag/acc_norm"] = acc_norm
    if ddp.master and step > 0 and due(cfg.sample_interval, step, last):
        texts = sample_texts(model, cfg.sample_prompt, cfg.num_samples, cfg.sample_tokens, device,
                             top_k=SAMPLE_TOP_K, seed=cfg.seed)
    log_evaluations(log, step, scalars)
    for i, text in enumerate(texts, start=1):
        log.say(f"sample {i}: {text}")
        log.record(f"# step {step} sample {i}: {text}")
    return scalars


def log_evaluations(log: RunLog, step: int, scalars: dict[str, float]) -> None:
    if "val/loss" in scalars:
        log.say(f"step {step:5d} | val loss {scalars['val/loss']:.4f}")
        log.record(f"{step} val {scalars['val/loss']:.4f}")
    if "hellaswag/acc_norm" in scalars:
        log.say(f"step {step:5d} | HellaSwag acc_norm {scalars['hellaswag/acc_norm']:.4f}")
        log.record(f"{step} hella {scalars['hellaswag/acc_norm']:.4f}")
    log.scalars(step, scalars)


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_step(train_model: torch.nn.Module, model: GPT, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, loader: ShardLoader, grad_accum: int, lr: float, grad_clip: float,
               ddp: Dist, device: torch.device, dtype: torch.dtype, loss_chunk_size: int = 0) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches on every rank: (loss, gradient norm before clipping), the
    loss averaged over ranks. A non-finite loss or norm skips the update (the caller decides what follows)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        x, y = loader.next_batch()  # (B, T) each
        sync = micro_step == grad_accum - 1  # all-reduce gradients only once, on the last micro-step
        with train_model.no_sync() if ddp.enabled and not sync else contextlib.nullcontext():
            with autocast(device, dtype):
                _, loss = train_model(x, y, loss_chunk_size=loss_chunk_size)
            loss = loss / grad_accum  # the mean over micro-steps, as one big batch would have
            loss_sum += loss.detach()
            scaler.scale(loss).backward()
    ddp.all_mean(loss_sum)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    loss_value, norm_value = loss_sum.item(), norm.item()
    if (math.isfinite(loss_value) and math.isfinite(norm_value)) or scaler.is_enabled():
        scaler.step(optimizer)  # with fp16 a non-finite step is skipped and the scale lowered
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, norm_value


def diverged(step: int, loss: float, norm: float, run_dir: Path, log: RunLog) -> FloatingPointError:
    """The error a non-finite loss or gradient norm ends the run with, true about the checkpoints (also logged)."""
    newest = newest_checkpoint(run_dir)
    kept = f"The newest checkpoint, {newest}, is intact" if newest else "No checkpoint had been written yet"
    message = (f"step {step}: non-finite loss {loss} or gradient norm {norm}; stopped before the update. {kept}; "
               f"try a lower --max-lr or more warmup")
    log.record(f"# {message}")
    return FloatingPointError(message)


@dataclass
class RunState:
    """What a checkpoint captures: the model and its optimizer, where the train data continues, and the progress."""

    model: GPT  # the plain model, which owns the weights (see run for its compiled and DDP-wrapped views)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: ShardLoader
    step: int = 0  # optimizer steps done
    val_loss: Optional[float] = None  # the newest
    evaluated: bool = False  # whether the evaluations due at `step` are done
    evaluation: dict[str, float] = dataclasses.field(default_factory=dict)  # their scalars, once done
    saved: Optional[tuple[int, bool]] = None  # (step, evaluated) of the newest checkpoint, written or resumed


class CheckpointSchedule:
    """When a checkpoint is written: every --checkpoint-interval steps, every --checkpoint-minutes (the master's
    clock), at the end and on a stop request; never twice for the same state, never for step 0."""

    def __init__(self, cfg: TrainConfig):
        self.interval, self.minutes = cfg.checkpoint_interval, cfg.checkpoint_minutes
        self.last_time = time.time()

    def decide(self, state: RunState, last: bool, stop: StopRequest, ddp: Dist) -> tuple[bool, bool]:
        """(stop now, save now), the same on every rank: the one collective of each step boundary."""
        minutes_due = ddp.master and self.minutes > 0 and time.time() - self.last_time >= 60 * self.minutes
        stopping, minutes_due = ddp.any_rank(stop.requested, minutes_due)
        wanted = last or stopping or minutes_due or due(self.interval, state.step, last)
        return stopping, wanted and state.step > 0 and state.saved != (state.step, state.evaluated)

    def save(self, state: RunState, cfg: TrainConfig, ddp: Dist, log: RunLog) -> None:
        """The master writes the checkpoint atomically and prunes the oldest beyond --keep-checkpoints."""
        if ddp.master:
            path = checkpoint_path(cfg.run_dir, state.step)
            save_checkpoint(path, training_state(
                state.model, state.optimizer, state.scaler, state.train_loader, step=state.step,
                val_loss=state.val_loss, evaluated=state.evaluated, evaluation=state.evaluation,
                train_config=dataclasses.asdict(cfg)))
            prune_checkpoints(cfg.run_dir, cfg.keep_checkpoints)
            log.both(f"saved checkpoint {path}")
            log.flush_metrics()  # the curves as far as the checkpoint, whatever happens next
        state.saved, self.last_time = (state.step, state.evaluated), time.time()


def prepare_data(cfg: TrainConfig, ddp: Dist, log: RunLog) -> None:
    """The quickstart tokenizes the bundled corpus on first use; every other data directory is fineweb.py's work."""
    if cfg.data_dir != QUICKSTART_DATA:
        return
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


def find_resume_checkpoint(cfg: TrainConfig) -> Optional[Path]:
    newest = newest_checkpoint(cfg.run_dir)
    if cfg.resume and newest is None:
        raise ValueError(f"--resume: no checkpoint (ckpt_NNNNNN.pt) in {cfg.run_dir}")
    return newest if cfg.resume is not False else None


def build_model(cfg: TrainConfig, resuming: bool, log: RunLog) -> GPT:
    """The model to train, on the CPU: the command's shape (a resumed run loads its weights later), or --init-from's
    weights."""
    if cfg.init_from and not resuming:
        log.say(f"initialising from {cfg.init_from}")
        model = load_model(cfg.init_from)
        model_config(cfg, weights=model.config)  # refuse a --model or --seq-len that does not fit the weights
        log.record(f"# initialised from {cfg.init_from}")
        return model
    return GPT(model_config(cfg))


def make_loader(cfg: TrainConfig, split: str, ddp: Dist, device: torch.device, vocab_size: int) -> ShardLoader:
    return ShardLoader(cfg.data_dir, split, cfg.micro_batch_size, cfg.seq_len, rank=ddp.rank,
                       world_size=ddp.world_size, device=device, shuffle=cfg.shuffle and split == "train",
                       seed=cfg.seed, vocab_size=vocab_size)


def start_or_resume(cfg: TrainConfig, ddp: Dist, device: torch.device, dtype: torch.dtype, log: RunLog) -> RunState:
    """A new run's state, or the newest checkpoint's when there is one, refusing a command that does not fit it."""
    if ddp.master:
        remove_unfinished_checkpoints(cfg.run_dir)  # what a kill during a save left behind
    path = find_resume_checkpoint(cfg)
    checkpoint = load_checkpoint(path) if path else None
    changed = resume_changes(cfg, checkpoint, path) if checkpoint else []
    model = build_model(cfg, checkpoint is not None, log).to(device)
    train_loader = make_loader(cfg, "train", ddp, device, model.config.vocab_size)
    log_run_header(cfg, model, log)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.max_lr, device.type, log=log.both)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 only; a no-op otherwise
    state = RunState(model, optimizer, scaler, train_loader)
    if checkpoint is not None:
        state.step, state.val_loss, state.evaluated, state.evaluation = restore_training_state(
            checkpoint, model, optimizer, scaler, train_loader)
        state.saved = (state.step, state.evaluated)
        log.both(f"resumed from {path} at step {state.step}")
        if changed:
            log.both(f"changed since the checkpoint: {', '.join(changed)}")
    config = {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config), "world_size": ddp.world_size}
    log.open_metrics(cfg, state.step, checkpoint is not None, config)
    if state.evaluated:  # the curves restart at state.step (see metrics.py), where these evaluations were done
        log.scalars(state.step, state.evaluation)
    return state


def log_train_step(log: RunLog, timer: StepTimer, step: int, loss: float, lr: float, norm: float,
                   max_steps: int) -> None:
    if projection := timer.projection(max_steps - step - 1):
        log.both(projection)
    log.say(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | {timer.report(max_steps - step - 1)}")
    log.record(f"{step} train {loss:.6f}")
    log.record(f"{step} lr {lr:.4e}")
    log.record(f"{step} norm {norm:.4f}")
    log.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": norm, **timer.rates()})


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run(cfg: TrainConfig, ddp: Dist, device: torch.device, stop: StopRequest, log: RunLog) -> dict[str, Any]:
    """The story of a run: set up or resume, then at each step boundary evaluate, checkpoint and train, until
    max_steps or a stop request, which every rank honours at the same boundary."""
    dtype = pick_dtype(device, cfg.dtype)
    allow_tf32(device)
    seed_everything(cfg.seed)
    prepare_data(cfg, ddp, log)
    hellaswag, hellaswag_status = load_hellaswag(cfg)
    state = start_or_resume(cfg, ddp, device, dtype, log)
    model = state.model
    val_loader = make_loader(cfg, "val", ddp, device, model.config.vocab_size)
    val_windows = validation_windows(cfg, val_loader)
    grad_accum = gradient_accumulation_steps(cfg, ddp.world_size)
    use_compile = compile_wanted(cfg.compile, device)
    # One model, three views. `model` owns the weights: checkpoints, HellaSwag, samples and gradient clipping use it.
    # `compiled` is the same modules through torch.compile, for the fixed-shape forward passes of training and
    # validation. `train_model` wraps that in DDP, which all-reduces the gradients during backward: training only.
    compiled = compile_model(model, cfg.compile_mode) if use_compile else model
    train_model = DDP(compiled, device_ids=[ddp.local_rank] if device.type == "cuda" else None) if ddp.enabled \
        else compiled
    schedule = CheckpointSchedule(cfg)
    timer = StepTimer(cfg.total_batch_size, model.flops_per_token(cfg.seq_len), peak_flops_of(device, cfg.peak_flops),
                      ddp.world_size)
    for line in run_summary(cfg, model, ddp, grad_accum, state.step, device, dtype, use_compile, state.train_loader,
                            val_windows, hellaswag_status):
        log.both(line)

    losses = []
    while True:
        last = state.step >= cfg.max_steps
        if not state.evaluated:
            with autocast(device, dtype):
                evaluation = run_evaluations(state.step, last, cfg, model, compiled, val_loader, val_windows,
                                             hellaswag, ddp, log, stop, device)
            state.evaluated, state.evaluation = evaluation is not None, evaluation or {}
            state.val_loss = state.evaluation.get("val/loss", state.val_loss)
        stopping, save = schedule.decide(state, last, stop, ddp)
        if save:
            schedule.save(state, cfg, ddp, log)
        if stopping:
            ddp.barrier()  # no rank leaves before the checkpoint is written
            raise stopped(stop, state, cfg.run_dir, ddp, log)
        if last:
            break
        timer.start()
        lr = get_lr(state.step, cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio, cfg.warmup_steps, cfg.max_steps)
        with attention_backend(cfg.attention):
            loss, norm = train_step(train_model, model, state.optimizer, state.scaler, state.train_loader, grad_accum,
                                    lr, cfg.grad_clip, ddp, device, dtype, cfg.loss_chunk_size)
        if not (math.isfinite(loss) and math.isfinite(norm)) and not state.scaler.is_enabled():
            raise diverged(state.step, loss, norm, Path(cfg.run_dir), log)
        timer.stop(device)
        losses.append(loss)
        log_train_step(log, timer, state.step, loss, lr, norm, cfg.max_steps)
        state.step, state.evaluated = state.step + 1, False
    return {"losses": losses, "val_loss": state.val_loss, "step_times": timer.times, "run_dir": cfg.run_dir}


def evaluate_only(cfg: TrainConfig, ddp: Dist, device: torch.device, stop: StopRequest,
                  log: RunLog) -> dict[str, Any]:
    """--eval-only: the evaluations of training, once, on a model given by --init-from (a hub name, HF directory,
    checkpoint or run directory) or on --run-dir's newest checkpoint; the ranks split the work as in training."""
    dtype = pick_dtype(device, cfg.dtype)
    allow_tf32(device)
    init = cfg.init_from or str(newest_checkpoint(cfg.run_dir) or "")
    if not init:
        raise ValueError(f"--eval-only: nothing to evaluate; pass --init-from (a hub name, HF directory, checkpoint "
                         f"or run directory), or a --run-dir with checkpoints ({cfg.run_dir} has none)")
    prepare_data(cfg, ddp, log)
    hellaswag, hellaswag_status = load_hellaswag(cfg)
    model = load_model(init, device)
    model.config.check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")
    val_loader = make_loader(cfg, "val", ddp, device, model.config.vocab_size)
    windows = validation_windows(cfg, val_loader)
    compiled = compile_model(model, cfg.compile_mode) if compile_wanted(cfg.compile, device) else model
    with autocast(device, dtype):
        val_loss = evaluate_loss(compiled, val_loader, windows, ddp, stop)
        acc_norm = None
        if hellaswag and val_loss is not None:
            acc_norm = evaluate_hellaswag(model, hellaswag, ddp, device, stop)
    if val_loss is None or (hellaswag and acc_norm is None):  # a stop request, on this rank or another
        message = f"stopped by {stop.cause} during the evaluation; nothing recorded"
        raise Exit(message if ddp.master else "", stop.exit_code)
    tokens = windows * cfg.micro_batch_size * cfg.seq_len
    hella = f"HellaSwag acc_norm {acc_norm:.4f} on {len(hellaswag):,} examples" if hellaswag \
        else f"HellaSwag {hellaswag_status}"
    log.record(f"# eval-only at {datetime.now(timezone.utc).isoformat(timespec='seconds')}, config "
               + json.dumps(dataclasses.asdict(cfg)))
    log.both(f"eval-only {init}: val loss {val_loss:.4f} on {tokens:,} tokens of {cfg.data_dir}; {hella}")
    return {"val_loss": val_loss, "hellaswag": acc_norm, "init": init}


def stopped(stop: StopRequest, state: RunState, run_dir: str, ddp: Dist, log: RunLog) -> Exit:
    """The one line a stop ends with, also logged (on the master rank; the others exit with the same code,
    silently)."""
    if state.saved is None:
        where = "before the first step; nothing to save"
    else:
        where = (f"at step {state.step}; checkpoint {checkpoint_path(run_dir, state.saved[0])}; rerun the same "
                 f"command to continue")
    message = f"stopped by {stop.cause} {where}"
    log.record(f"# {message}")
    return Exit(message if ddp.master else "", stop.exit_code)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run cfg in this process, alone or as one rank of a torchrun job. SIGINT and SIGTERM are stop requests while
    it runs (see StopRequest)."""
    ddp = Dist.from_environment()
    log = RunLog(Path(cfg.run_dir), ddp.master)
    with StopRequest() as stop:
        try:
            device = setup_distributed(ddp, cfg.device, cfg.dist_timeout)
            return (evaluate_only if cfg.eval_only else run)(cfg, ddp, device, stop, log)
        except RuntimeError as e:
            message = distributed_failure(e, ddp, cfg.dist_timeout) if ddp.enabled else None
            if message is None:
                raise
            raise ConnectionError(message) from None
        finally:
            log.close(failed=sys.exc_info()[0] is not None)  # the live metrics flushed, whatever ended the run
            if ddp.enabled and dist.is_initialized():
                dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> None:
    cfg = parse_config(argv)
    result = train(cfg)
    if ("RANK" not in os.environ or os.environ["RANK"] == "0") and not cfg.eval_only:
        final = f"final val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else "finished"
        print(f"done: {final}; sample with: python sample.py --init {checkpoint_path(cfg.run_dir, cfg.max_steps)}")


if __name__ == "__main__":
    run_cli(main)
