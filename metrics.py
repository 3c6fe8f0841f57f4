"""What a run tells, and where: the console, the run's append-only log.txt (its event-line format, which plot.py
reads), live metrics (TensorBoard event files in the run directory, and Weights & Biases with --wandb-project),
the run's header and summary, and the step timer (tokens/s, MFU, ETA). Only the master rank writes.

log.txt holds one event per line, build-nanogpt's `{step} {kind} {value}` (train, val, hella, lr, norm, and
hella_harness: HellaSwag scored as lm-evaluation-harness does); every other line starts with '#'. A resumed run
continues the same live curves without repeating a step: TensorBoard is told to drop what an earlier session wrote
from the resumed step on (its purge_step), and W&B continues the same run id, kept in the run directory, where it
ignores steps it already has.

Torch-free at import, so that plot.py starts fast.
"""

import dataclasses
import importlib.util
import json
import platform
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from cli import CONSOLE_LISTENERS, first_line

ROOT = Path(__file__).resolve().parent
# The event lines: each kind's value format, and the pattern that reads them back.
EVENT_FORMATS = {"train": "{:.6f}", "val": "{:.4f}", "hella": "{:.4f}", "hella_harness": "{:.4f}", "lr": "{:.4e}",
                 "norm": "{:.4f}"}
EVENT_LINE = re.compile(rf"^(\d+) ({'|'.join(EVENT_FORMATS)}) (\S+)$")
WANDB_ID_FILE = "wandb_run_id"
FLUSH_SECONDS = 30  # the most a killed run's TensorBoard curves can lag behind its log.txt
PROJECTION_STEPS = 5  # timed steps (after the first, which compiles) before the run projects its speed and ETA


def event_line(step: int, kind: str, value: float) -> str:
    """One event line of log.txt: '12 train 3.141593'."""
    return f"{step} {kind} {EVENT_FORMATS[kind].format(value)}"


def mfu_percent(flops_per_token: float, tokens_per_sec: float, peak_flops: Optional[float],
                devices: int = 1) -> Optional[float]:
    """Model FLOPs utilisation in percent: the FLOPs done per second on each of `devices` over one device's peak
    (None when the peak is not known). The one MFU formula, for training and bench.py."""
    if not peak_flops:
        return None
    return 100 * flops_per_token * tokens_per_sec / devices / peak_flops


def utc_now() -> str:
    """The time stamp of log.txt's '#' lines: '2026-11-27T14:13:00+00:00'."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------------------------------------------
# Live metrics


def check_wandb_installed() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb-project needs the wandb package: pip install wandb (and `wandb login`, or "
                         "WANDB_MODE=offline to keep the run on disk)")


class Metrics:
    """Scalars by step, sent to every writer that is on."""

    def __init__(self, run_dir: Path, start_step: int, cfg: Any, resuming: bool, config: dict[str, Any]):
        """cfg: the run's TrainConfig (its tensorboard and wandb_project); config: what W&B shows as the run's
        config."""
        self.tensorboard = self.wandb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard's readers drop the events an earlier session logged from this step on
            self.tensorboard = SummaryWriter(log_dir=str(run_dir), purge_step=start_step, flush_secs=FLUSH_SECONDS)
        if cfg.wandb_project:
            self.wandb = start_wandb(run_dir, cfg.wandb_project, resuming, config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, global_step=step)
        if self.wandb is not None:
            self.wandb.log(dict(scalars), step=step)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self, failed: bool = False) -> None:
        """Flush and close; a run that ended in an error or a stop is marked so on W&B (exit code 1), not as
        finished."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
        self.tensorboard = self.wandb = None


def start_wandb(run_dir: Path, project: str, resuming: bool, config: dict[str, Any]):
    """A W&B run in run_dir/wandb: the one this run directory used before when resuming, else a new one."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else uuid.uuid4().hex[:8]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=project, dir=str(run_dir), id=run_id, resume="allow", config=config,
                         name=run_dir.resolve().name)
    except Exception as e:  # not logged in, no network, a bad project name ...
        raise OSError(f"--wandb-project {project}: W&B could not start ({first_line(e)}); run `wandb login`, or set "
                      f"WANDB_MODE=offline to keep the run on disk and `wandb sync` it later") from None
    id_file.write_text(run_id + "\n")
    return run


# ----------------------------------------------------------------------------------------------------------------
# The run log


class RunLog:
    """What the master rank tells: the console, the run's append-only log.txt and, once opened, the live metrics.
    As a context manager it closes the live metrics at the end, marking a run that ended in an exception failed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics: Optional[Metrics] = None
        self.path = run_dir / "log.txt"  # created with its directory by the first line, so a run that fails
        # before it has anything to say (an unreachable hub, a bad flag) leaves no empty directory behind
        self.unwritable: Optional[str] = None  # why log.txt could not be appended to, once that happened

    def say(self, text: str) -> None:
        """On the console only."""
        if self.enabled:
            print(text, flush=True)

    def comment(self, text: str) -> None:
        """In log.txt only, as a '#' line."""
        self._write("# " + text)

    def note(self, text: str) -> None:
        """On the console and in log.txt, as a '#' line."""
        self.say(text)
        self.comment(text)

    def events(self, step: int, values: dict[str, float]) -> None:
        """Event lines of log.txt ({kind: value}, in order; see EVENT_FORMATS)."""
        for kind, value in values.items():
            self._write(event_line(step, kind, value))

    def _write(self, line: str) -> None:
        """Append a line; a failure (a full disk) is said once on stderr and does not end the run: the checkpoint,
        which needs the same disk, says what the run can do."""
        if not self.enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line.replace("\n", "\\n") + "\n")
        except OSError as e:
            if self.unwritable is None:
                self.unwritable = str(e)
                print(f"cannot append to {self.path} ({e}); its lines are lost until it can", file=sys.stderr,
                      flush=True)

    def header(self, config: dict[str, Any], model_config: dict[str, Any]) -> None:
        """The top of a run's section of log.txt: when, the full config, the model, library versions and commit."""
        self.comment(f"run started {utc_now()}")
        self.comment("config " + json.dumps(config))
        self.comment("model " + json.dumps(model_config))
        for line in describe_environment():
            self.comment(line)

    def open_metrics(self, cfg: Any, start_step: int, resuming: bool, config: dict[str, Any]) -> None:
        """The live metrics of the run (see Metrics), from start_step on."""
        if self.enabled and (cfg.tensorboard or cfg.wandb_project):
            self.metrics = Metrics(self.path.parent, start_step, cfg, resuming, config)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.log(step, values)

    def flush_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def console_gone(self, reason: str) -> None:
        """What log.txt says when the console stops taking lines (see cli.Console): the run goes on without it."""
        self.comment(f"the console went away ({reason}) at {utc_now()}; the run goes on, telling only this file "
                     f"and the live metrics")

    def __enter__(self) -> "RunLog":
        if self.enabled:
            CONSOLE_LISTENERS.append(self.console_gone)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.console_gone in CONSOLE_LISTENERS:
            CONSOLE_LISTENERS.remove(self.console_gone)
        if self.metrics is not None:
            self.metrics.close(failed=exc_type is not None)


def describe_environment() -> list[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import numpy as np
    import tiktoken
    import torch

    versions = f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, " \
               f"tiktoken {tiktoken.__version__}"
    if torch.cuda.is_available():
        versions += f", cuda {torch.version.cuda}, {torch.cuda.get_device_name()}"
    return [f"versions: {versions}", f"git commit: {commit}", f"command: {' '.join(sys.argv)}"]


def run_summary(ctx: Any, state: Any, evaluator: Any, grad_accum: int) -> list[str]:
    """The block printed at the start of a run: what will be trained, on what, for how long, and where it goes.
    ctx, state, evaluator: the run's context.RunContext, checkpoint.TrainState and evaluate.Evaluator."""
    cfg, model = ctx.cfg, state.model
    tokens_per_step = cfg.total_batch_size  # = B x T x grad_accum x world size, as TrainConfig.check makes sure
    when = [f"every {cfg.checkpoint_interval:,} steps"] if cfg.checkpoint_interval else []
    when += [f"every {cfg.checkpoint_minutes:g} minutes"] if cfg.checkpoint_minutes else []
    dtype = str(ctx.dtype).replace("torch.", "")
    precision = "fp32" if dtype == "float32" else f"{dtype} autocast"
    loss_form = f"in chunks of {cfg.loss_chunk_size:,}" if cfg.loss_chunk_size else "from whole logits"
    return [
        "run summary",
        f"  model       {cfg.model_name()}: {model.num_params():,} parameters, "
        f"{dataclasses.asdict(model.config)}",
        f"  batch       {tokens_per_step:,} tokens/step = {cfg.micro_batch_size} x {cfg.seq_len} x "
        f"{grad_accum} gradient accumulation x {ctx.ranks.world_size} ranks",
        f"  steps       {state.step:,} -> {cfg.max_steps:,} (warmup {cfg.warmup_steps:,}), "
        f"{cfg.max_steps * tokens_per_step:,} tokens in all, "
        f"{max(0, cfg.max_steps - state.step) * tokens_per_step:,} to go",
        f"  data        {cfg.data_dir}: {len(state.train_loader.paths)} train shards; validation on "
        f"{evaluator.val_tokens:,} val tokens ({evaluator.val_windows} windows of {cfg.micro_batch_size} x "
        f"{cfg.seq_len})",
        f"  HellaSwag   {evaluator.hellaswag_status}",
        f"  parallel    {cfg.parallel} over {ctx.ranks.world_size} ranks, activation checkpointing "
        f"{'per block' if cfg.activation_checkpointing == 'block' else 'off'}",
        f"  precision   {ctx.device}, {precision}, compile "
        f"{f'on ({cfg.compile_mode})' if ctx.use_compile else 'off'}, attention {cfg.attention}, loss {loss_form}",
        f"  run dir     {cfg.run_dir}: log.txt, checkpoints {', '.join(when + ['at the end'])} and on Ctrl-C or "
        f"SIGTERM (newest {cfg.keep_checkpoints or 'all'} kept)",
    ]


# ----------------------------------------------------------------------------------------------------------------
# The step timer


class StepTimer:
    """Wall time of each optimizer step, and what follows from it: tokens/s, MFU, the ETA and a projection."""

    def __init__(self, tokens_per_step: int, flops_per_token: int, peak_flops: Optional[float], world_size: int):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size = peak_flops, world_size
        self.times: list[float] = []
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()  # monotonic: a wall clock stepped back (NTP, a VM resumed) changes nothing

    def stop(self, device: Any) -> float:
        """The step's wall time, once the device's queued work is done."""
        from devices import synchronize

        synchronize(device)
        self.times.append(time.perf_counter() - self.t0)
        return self.times[-1]

    def seconds_per_step(self) -> float:
        recent = self.times[1:][-20:] or self.times  # the first step includes compilation
        return sum(recent) / len(recent)

    def rates(self) -> dict[str, float]:
        """The newest step's tokens/s and, where the device's peak is known, MFU in percent."""
        tokens_per_sec = self.tokens_per_step / self.times[-1]
        rates = {"perf/tokens_per_sec": tokens_per_sec}
        mfu = mfu_percent(self.flops_per_token, tokens_per_sec, self.peak_flops, self.world_size)
        if mfu is not None:
            rates["perf/mfu_percent"] = mfu
        return rates

    def report(self, steps_left: int) -> str:
        """'dt ... | tok/s ... | MFU ... | ETA ...' of the newest step."""
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

    def log_step(self, log: RunLog, step: int, values: dict[str, float], steps_left: int) -> None:
        """The step's line on the console, its events in log.txt ({"train": loss, "lr": lr, "norm": norm}) and its
        scalars with the timer's rates in the live metrics; once, first, the projection."""
        if projection := self.projection(steps_left):
            log.note(projection)
        log.say(f"step {step:5d} | loss {values['train']:.6f} | lr {values['lr']:.4e} | norm {values['norm']:.4f} | "
                f"{self.report(steps_left)}")
        log.events(step, values)
        log.scalars(step, {"train/loss": values["train"], "train/lr": values["lr"],
                           "train/grad_norm": values["norm"], **self.rates()})
