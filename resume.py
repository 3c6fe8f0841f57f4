"""Where a training run continues from, and what a command may change when it does: the resume policy of
train_gpt2.py, behind resume_point (before the model is built) and continue_from (once its state is).

A run continues from its run directory's newest checkpoint that it can continue from (a newer one that it cannot is
skipped in one line), or from --resume-from's; --no-resume sets the earlier run aside instead. A command that
would continue with another model or data stream is refused in one line naming the flags; other changes are logged.
--no-resume and --resume-from act on a run's first start only: a launcher's restart of the same command continues.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from checkpoint import (check_training_fields, checkpoint_step, config_from_checkpoint, is_run_directory,
                        list_checkpoints, load_checkpoint, load_training_state, newest_checkpoint, newest_that_loads,
                        remove_unfinished_checkpoints, set_aside_previous_run, TrainState)
from cli import Exit, flag
from dataloader import data_changes
from distributed import Ranks, launcher_restart
from metrics import RunLog
from model import DEFAULT_MODEL, PADDED_VOCAB_SIZE, GPTConfig, config_from_preset

# The shape flags that override a --model preset's fields.
SHAPE_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")
# Flags that, changed on resume, would change the model or the stream of training data: refused. The model's shape
# (--model, --vocab-size) is compared with the checkpoint's model config instead.
RESUME_FIXED = ("init_from", "seq_len", "total_batch_size", "data_dir", "shuffle", "shuffle_documents", "dropout",
                "optimizer")
RESUME_IGNORED = ("model", "vocab_size", *SHAPE_FLAGS, "resume", "resume_from", "run_dir", "allow_data_change")


@dataclass
class ResumePoint:
    """What a run continues from: a checkpoint (its path and what load_checkpoint read there) or nothing (a new
    run), and the lines to log once it has continued."""

    path: Optional[Path] = None
    checkpoint: Optional[dict[str, Any]] = None
    notes: tuple[str, ...] = ()


def resume_point(cfg: Any, ranks: Ranks, log: RunLog, data: dict[str, Any]) -> ResumePoint:
    """The checkpoint this run continues from, having refused (said once, by the master) a command or data that does
    not fit it, and moved aside what the command asks to (--no-resume, --resume-from). A finished run ends here with
    an Exit of code 0. cfg: train_gpt2.TrainConfig; data: the shards the run reads (dataloader.data_fingerprint)."""
    if ranks.master:
        remove_unfinished_checkpoints(cfg.run_dir)  # what a kill during a save left behind
        if cfg.resume is False and (aside := set_aside_previous_run(cfg.run_dir)):
            log.note(f"--no-resume: the previous run's {aside[1]} checkpoint(s) and TensorBoard events are set aside "
                     f"in {aside[0]}; this run starts at step 0 and prunes only its own")
    ranks.barrier()  # no rank looks for checkpoints while they move
    try:
        path, checkpoint = find_resume_checkpoint(cfg, log)
        if checkpoint is None:
            return ResumePoint()
        changed = resume_changes(cfg, checkpoint, path)
        data_changed = allowed_data_changes(cfg, checkpoint, path, data)
    except (ValueError, FloatingPointError):
        raise_on_master(ranks)
    if checkpoint["step"] >= cfg.max_steps and checkpoint.get("evaluated", True):
        raise already_finished(cfg, ranks, path, checkpoint)
    if cfg.resume_from and ranks.master and (aside := set_aside_previous_run(cfg.run_dir, checkpoint["step"], path)):
        log.note(f"--resume-from {path}: {aside[1]} checkpoint(s) in {cfg.run_dir} of step {checkpoint['step']} and "
                 f"later are set aside in {aside[0]}, so that the run directory holds this run alone")
    notes = [f"changed since the checkpoint: {', '.join(changed)}"] if changed else []
    if data_changed:
        notes.append(f"--allow-data-change: resuming on other shards than the checkpoint's: {'; '.join(data_changed)}")
    return ResumePoint(path, checkpoint, tuple(notes))


def continue_from(state: TrainState, point: ResumePoint, ranks: Ranks, log: RunLog) -> None:
    """Load the checkpoint into the new run's state, refusing one that holds non-finite values (it was saved after
    the run had diverged, by a version that did not check), naming the tensor and the checkpoint to go back to."""
    try:
        load_training_state(state, point.path, point.checkpoint)
    except FloatingPointError as e:
        older = [p for p in list_checkpoints(point.path.parent) if checkpoint_step(p) < point.checkpoint["step"]]
        back = f"pass --resume-from {older[-1]} to go back to the one before, or " if older else "pass "
        if ranks.master:
            raise FloatingPointError(f"{e}; it is not resumed: {back}--no-resume to start over") from None
        raise Exit("", 1) from None
    except ValueError:
        raise_on_master(ranks)
    log.note(f"resumed from {point.path} at step {state.step}")
    for note in point.notes:
        log.note(note)


def raise_on_master(ranks: Ranks) -> None:
    """Within an `except`, for refusals that every rank reaches alike (they read the same files): the master raises
    the error, to say it in one line; the other ranks end silently with the same exit code."""
    if ranks.master:
        raise
    raise Exit("", 1) from None


def already_finished(cfg: Any, ranks: Ranks, path: Path, checkpoint: dict[str, Any]) -> Exit:
    """The one line a rerun of a finished run ends with, having written nothing (exit code 0)."""
    val = f", final val loss {checkpoint['val_loss']:.4f}" if checkpoint.get("val_loss") is not None else ""
    message = (f"already finished at step {checkpoint['step']} ({path}{val}); nothing to do: pass a larger "
               f"--max-steps to train on, or sample with: python sample.py --init {cfg.run_dir}")
    return Exit(message if ranks.master else "", 0)


def resumable(path: Path) -> dict[str, Any]:
    """What a checkpoint a run can continue from holds (see checkpoint.check_training_fields)."""
    checkpoint = load_checkpoint(path)
    check_training_fields(checkpoint, path)
    return checkpoint


def find_resume_checkpoint(cfg: Any, log: RunLog) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
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


def allowed_data_changes(cfg: Any, checkpoint: dict[str, Any], path: Path, data: dict[str, Any]) -> list[str]:
    """Refuse, in one line naming the shards, to resume on other data than the checkpoint recorded (a shard
    replaced, added or removed), unless --allow-data-change: then return the changes, for log.txt."""
    changes = data_changes(checkpoint.get("data") or {}, data)  # checkpoints before the record: nothing to compare
    if changes and not cfg.allow_data_change:
        raise ValueError(f"cannot resume {path}: the shards in {cfg.data_dir} changed since it was saved "
                         f"({'; '.join(changes)}); put back the shards it read, or pass --allow-data-change to go "
                         f"on with these")
    return changes


def shape_given(cfg: Any) -> dict[str, int]:
    return {name: getattr(cfg, name) for name in SHAPE_FLAGS if getattr(cfg, name) is not None}


def shape_conflicts(cfg: Any, weights: GPTConfig, with_defaults: bool) -> list[str]:
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


def resume_changes(cfg: Any, checkpoint: dict[str, Any], path: Path) -> list[str]:
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
            f"cannot resume {path} with this command: {'; '.join(refused)} would change the model, its data or its "
            f"optimizer "
            f"(checkpoint: {saved_shape.describe()}); rerun with the checkpoint's values, or "
            f"pass another --run-dir to start a new run"
        )
    return changed


def first_start_only(cfg: Any) -> tuple[Any, Optional[str]]:
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


def rerun_advice(cfg: Any) -> str:
    """How to continue this run from its newest checkpoint: the same command, but for --no-resume and --resume-from,
    which would set that checkpoint aside and start over, or go back."""
    if cfg.resume is False or cfg.resume_from:
        return f"rerun the same command without {'--no-resume' if cfg.resume is False else '--resume-from'}"
    return "rerun the same command"
