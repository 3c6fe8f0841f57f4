"""The one checkpoint format per mode and its one owner: the training state (TrainState, whose state_dict is the
checkpoint), atomic saves, safe loads (weights_only, or DCP), and "a model from --init" for every script.

A checkpoint holds tensors and plain Python values only, so torch.load(..., weights_only=True) reads it:
  model         the model's state_dict, keys as in model.py (never with _orig_mod. or module. prefixes)
  config        the GPTConfig, as a dict
  optimizer     AdamW's state_dict
  muon          Muon's state_dict, of the block matrices (--optimizer muon only)
  scaler        the gradient scaler's state_dict (fp16 runs only)
  train_config  the run's TrainConfig, as a dict
  step          optimizer steps done; the run continues with step `step`
  loader        where the train loader's next batch starts (epoch, shard or with --shuffle-documents document,
                position)
  data          the shards the run reads, per split: name, size and content digest (dataloader.data_fingerprint)
  rng           each rank's Python, numpy, torch and CUDA generator states (a list: rank r's at r; the CUDA state
                of that rank's own device)
  val_loss      the newest validation loss (None before the first)
  evaluated     whether the evaluations due at `step` are done (False when a stop cut them short)
  evaluation    their scalars ({"val/loss": ..., "hellaswag/acc_norm": ...}), which a resumed run's live metrics
                show again
A model alone (sample.py, export) needs only model and config.

Two forms, one per parallel mode. With DDP (or one process) a checkpoint is one file, ckpt_NNNNNN.pt, written by the
master rank. With FSDP2 it is a directory, ckpt_NNNNNN/, a torch.distributed.checkpoint (DCP) checkpoint of model
and optimizer (optimizer state keyed by parameter name), to which every rank writes its shards, plus state.pt with
the other keys; DCP loads it at any world size, and into one process. Either form appears whole or not at all: a
file is renamed into place once written, a directory once every rank has written its part. A save that fails (a
full disk) removes its partial write at once and leaves the older checkpoints as they were.

Nothing non-finite is saved or resumed: parameters and optimizer state are checked before a save and after a load
(first_non_finite), and a checkpoint's fields are checked before it is resumed (check_training_fields).
"""

import contextlib
import dataclasses
import errno
import os
import pickle
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Union

import numpy as np
import torch

from cli import Exit, first_line
from dataloader import ShardLoader
from distributed import Ranks
from files import atomic_file, remove, remove_stale_temporaries, sync_directory
from model import GPT, HF_MODEL_NAMES, GPTConfig, clean_name
from network import hub_unreachable

DEFAULT_RUN_DIR = "log"  # train_gpt2.py's --run-dir default, where sample.py looks when given no --init
CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d{6,})(\.pt)?$")  # a file, or a sharded checkpoint's directory
SHARDED_STATE = "state.pt"  # in a sharded checkpoint's directory: every key but model and optimizer
ZIP_MAGIC = b"PK\x03\x04"  # how a torch.save archive begins
HUB_ADVICE = ("On a machine that is online run GPT2LMHeadModel.from_pretrained({name!r}).save_pretrained('DIR'), "
              "copy DIR here and pass its path")


def checkpoint_path(run_dir: Union[str, Path], step: int, sharded: bool = False) -> Path:
    return Path(run_dir) / (f"ckpt_{step:06d}" if sharded else f"ckpt_{step:06d}.pt")


def is_sharded_checkpoint(path: Path) -> bool:
    """A DCP directory of ours: its .metadata and state.pt."""
    return path.is_dir() and (path / ".metadata").is_file() and (path / SHARDED_STATE).is_file()


def list_checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """The run's checkpoints, files and directories, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's name (ckpt_NNNNNN.pt or ckpt_NNNNNN/)."""
    return int(CHECKPOINT_PATTERN.match(path.name).group(1))


def newest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The run's checkpoint of the highest step, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_unfinished_checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """Delete the temporary files and directories of checkpoint saves that a kill interrupted."""
    return remove_stale_temporaries(run_dir, CHECKPOINT_PATTERN)


def save_checkpoint(path: Union[str, Path], state: dict[str, Any]) -> None:
    """Atomic (files.atomic_file): a crash or a signal mid-save leaves the older files intact."""
    with atomic_file(path) as f:
        torch.save(state, f)


def prune_checkpoints(run_dir: Union[str, Path], keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            remove(old)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; clear errors for a missing or broken file. Of a
    sharded checkpoint, this reads state.pt: everything but the model's and optimizer's tensors (see load_sharded).
    mmap: tensors memory-mapped, not read, for a look at the other keys."""
    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise ValueError(f"{path} is not a checkpoint directory of this project (no DCP .metadata and "
                             f"{SHARDED_STATE})")
        check_sharded_files(path)
        return read_checkpoint_file(path / SHARDED_STATE, map_location, ("config",), mmap)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return read_checkpoint_file(path, map_location, ("model", "config"), mmap)


def read_checkpoint_file(path: Path, map_location: Union[str, torch.device], required: tuple[str, ...],
                         mmap: bool = False) -> dict[str, Any]:
    """torch.load(weights_only=True) of a checkpoint file; a file that is not one, one line saying what it is not."""
    expected = "expected a ckpt_NNNNNN.pt that train_gpt2.py wrote, a run directory or a Hugging Face directory"
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    if not zipped:  # torch.save writes a zip archive; a log, an .npy, text or a bare pickle is none
        raise ValueError(f"{path} is not a checkpoint: not a file that torch.save wrote; {expected}")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes: noise beside the one line below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # objects beyond tensors and plain values: loading them could run code
        raise ValueError(f"{path} is not a checkpoint of this project: it holds Python objects other than tensors "
                         f"and plain values, which are never loaded (they could run code); {expected}") from None
    except Exception:  # an archive cut short or damaged (torch's own words are about zip internals)
        raise ValueError(f"{path} is damaged: torch.load cannot read its archive (cut short by a copy, a full disk or "
                         f"a crash?)") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise ValueError(f"{path} is not a checkpoint of this project (expected a dict with "
                         f"{' and '.join(repr(key) for key in required)})")
    return state


def check_sharded_files(path: Path) -> None:
    """A sharded checkpoint whose .metadata reads and whose every shard file is there, at least as long as the
    metadata says: a rank's file missing or cut short, or the metadata cut short, is a ValueError naming it (what
    DCP itself would raise on every rank, mid-load, as a CheckpointException)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metadata = FileSystemReader(str(path)).read_metadata()
        storage = dict(metadata.storage_data)
    except Exception as e:  # cut short, or not DCP's: pickle's and DCP's own words
        raise ValueError(f"{path}: its .metadata is damaged ({first_line(e)[:200]})") from None
    needed: dict[str, int] = {}
    for item in storage.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            raise ValueError(f"{path}: its shard {name} is missing")
        if shard.stat().st_size < size:
            raise ValueError(f"{path}: its shard {name} is cut short ({shard.stat().st_size:,} of {size:,} bytes)")


def newest_that_loads(run_dir: Union[str, Path], load: Callable[[Path], Any],
                      say: Callable[[str], None]) -> Optional[tuple[Path, Any]]:
    """The newest checkpoint of run_dir for which load(path) succeeds, and what it returned; each newer one that does
    not load (a disk fault, a copy cut short) is skipped, said in one line. None when there is no checkpoint; the
    last error when none loads."""
    error = None
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load(path)
        except (ValueError, OSError) as e:
            say(f"skipped {path}: {e}")
            error = e
    if error is not None:
        raise ValueError(f"no checkpoint in {run_dir} loads (the oldest: {error})")
    return None


def set_aside_previous_run(run_dir: Union[str, Path], from_step: int = 0,
                           keep: Optional[Path] = None) -> Optional[tuple[Path, int]]:
    """Move the checkpoints in run_dir of step `from_step` and later (but `keep`) into one new directory beside
    them, previous_run_<UTC time>/, so that the run there prunes only its own (and a plain rerun resumes it); from
    step 0 (a new run), the TensorBoard event files go too (log.txt stays: the new run's header follows the old
    lines). Return that directory and how many checkpoints moved, or None when none did."""
    run_dir = Path(run_dir)
    keep = keep.resolve() if keep is not None else None
    checkpoints = [path for path in list_checkpoints(run_dir) if checkpoint_step(path) >= from_step
                   and path.resolve() != keep]
    if not checkpoints:
        return None
    aside = run_dir / time.strftime("previous_run_%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir()
    events = list(run_dir.glob("events.out.tfevents.*")) if from_step == 0 else []
    for path in [*checkpoints, *events]:
        os.replace(path, aside / path.name)
    sync_directory(run_dir)
    return aside, len(checkpoints)


@contextlib.contextmanager
def one_process_is_meant() -> Iterator[None]:
    """Without DCP's warning that it assumes one process when there is no process group: here that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def load_sharded(path: Path, tensors: dict[str, Any], no_dist: bool = False) -> dict[str, Any]:
    """Fill `tensors` ({"model": ..., "optimizer": ...}: state dicts to load into, plain or sharded) from a sharded
    checkpoint, resharded to this run's world size; no_dist: in this process alone, whatever the other ranks do."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with one_process_is_meant():
            dcp.load(tensors, checkpoint_id=str(path), no_dist=no_dist or not dist.is_initialized())
    except (Exception, CheckpointException) as e:  # keys that do not fit, a shard damaged inside ...
        raise ValueError(f"{path}: the sharded checkpoint does not load: {describe_error(e)[:300]}") from None
    return tensors


def underlying_errors(error: BaseException) -> list[BaseException]:
    """The error and what lies beneath it: its causes and, of DCP's CheckpointException (which derives from
    BaseException and gathers every rank's failure), each rank's error."""
    found, todo = [], [error]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in found):
            continue
        found.append(e)
        todo += [e.__cause__, e.__context__]
        todo += [failure[0] for failure in getattr(e, "failures", {}).values() if isinstance(failure, tuple)]
    return found


def describe_error(error: BaseException) -> str:
    """The first line of the deepest error that says something: a CheckpointException's own words are a list of
    ranks and tracebacks."""
    errors = [e for e in underlying_errors(error) if not hasattr(e, "failures")]
    return first_line(errors[-1] if errors else error)


# ----------------------------------------------------------------------------------------------------------------
# The training state


def rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch and CUDA generator states as tensors and plain values
    (weights_only-loadable); of CUDA, its own device's (the current one) only: a rank uses no other, and another
    machine may have fewer devices."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore rng_state()'s states; of CUDA, into this process's device. Older checkpoints hold every visible
    device's state (a list, as torch.cuda.get_rng_state_all gives it): this device's is taken where it is there."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        device, cuda = torch.cuda.current_device(), state["cuda"]
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(rng: Union[dict[str, Any], list[dict[str, Any]]], rank: int) -> dict[str, Any]:
    """A rank's generator states of a checkpoint's rng: rank r's of the list (rank 0's for a rank the saving run
    did not have: another world size, which resumes within tolerance, not bitwise), or the one dict that
    checkpoints before the list held."""
    if isinstance(rng, dict):
        return rng
    return rng[rank] if rank < len(rng) else rng[0]


class Progress(NamedTuple):
    """How far a training state is: optimizer steps done, and whether the evaluations due at that step are done."""

    step: int
    evaluated: bool


@dataclass
class TrainState:
    """Everything a run continues from, the one owner of what its checkpoint holds: state_dict() is the checkpoint
    (the keys in the module docstring) and load_state_dict() resumes from one. `model` is the plain model, not its
    compiled or DDP-wrapped views, so the keys carry no prefixes."""

    model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only; saved when enabled
    train_loader: ShardLoader
    train_config: dict[str, Any]  # the command's TrainConfig, which a resumed run is checked against
    step: int = 0  # optimizer steps done; the run continues with step `step`
    val_loss: Optional[float] = None  # the newest
    evaluations: Optional[dict[str, float]] = None  # the scalars of the evaluations done at `step` ({} when none
    # was due), or None while they are still to do: a new step, or a stop that cut them short
    sharded: bool = False  # checkpoints as DCP directories (--parallel fsdp), else files
    data: dict[str, Any] = field(default_factory=dict)  # what the run reads (dataloader.data_fingerprint)
    rank: int = 0  # this process's: whose generator states it saves and resumes
    muon: Optional[torch.optim.Optimizer] = None  # with --optimizer muon: of the block matrices (AdamW: the rest)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] + ([self.muon] if self.muon is not None else [])

    def progress(self) -> Progress:
        return Progress(self.step, self.evaluations is not None)

    def record_evaluations(self, scalars: Optional[dict[str, float]]) -> None:
        """Take the evaluations of this step: their scalars, or None if a stop cut them short (they are still due)."""
        self.evaluations = scalars
        if scalars is not None:
            self.val_loss = scalars.get("val/loss", self.val_loss)

    def next_step(self) -> None:
        self.step, self.evaluations = self.step + 1, None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (see the module docstring), with this rank's generator states alone under "rng" (the
        save gathers every rank's); sharded, model and optimizer are DCP's state dicts: keyed by parameter name, of
        the tensors (shards under FSDP2) this rank holds."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model, optimizer = get_state_dict(self.model, self.optimizer)
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        state = {
            "model": model,
            "config": dataclasses.asdict(self.model.config),
            "optimizer": optimizer,
            "train_config": dict(self.train_config),
            "step": self.step,
            "loader": self.train_loader.state_dict(),
            "data": dict(self.data),
            "rng": [rng_state()],
            "val_loss": self.val_loss,
            "evaluated": self.evaluations is not None,
            "evaluation": dict(self.evaluations or {}),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.muon is not None:
            state["muon"] = self.muon.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (its fields as check_training_fields has them): weights, optimizer, scaler,
        data position, this rank's generator states and progress."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.muon is not None:
            self.muon.load_state_dict(state["muon"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(rank_rng_state(state["rng"], self.rank))
        self.step, self.val_loss = state["step"], state.get("val_loss")
        self.evaluations = dict(state.get("evaluation") or {}) if state.get("evaluated", True) else None


def check_training_fields(checkpoint: dict[str, Any], path: Path) -> None:
    """A checkpoint a run can continue from: its training keys there and of their types, its step a whole number
    >= 0 and, where its name carries a step (ckpt_NNNNNN), that step. A ValueError naming the field otherwise."""
    for key in ("step", "loader", "rng") if path.is_dir() else ("optimizer", "step", "loader", "rng"):
        if key not in checkpoint:  # (a sharded checkpoint's optimizer state is in its DCP files)
            raise ValueError(f"{path} holds a model but no training state ({key!r} is missing) to resume")
    step = checkpoint["step"]
    if type(step) is not int or step < 0:
        raise ValueError(f"{path}: its step {step!r} is not a whole number >= 0")
    named = CHECKPOINT_PATTERN.match(path.name)
    if named and int(named.group(1)) != step:
        raise ValueError(f"{path} holds step {step}, not the step {int(named.group(1))} of its name (renamed or "
                         f"copied over?)")
    kinds = {"optimizer": dict, "loader": dict, "rng": (dict, list), "train_config": dict, "data": dict,
             "evaluation": dict, "evaluated": bool, "val_loss": (int, float)}
    for key, kind in kinds.items():
        value = checkpoint.get(key)
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{path}: its {key!r} is {type(value).__name__} {str(value)[:40]!r}, not what a "
                             f"checkpoint of this project holds")
    if not all(type(v) is int for v in checkpoint["loader"].values()):
        raise ValueError(f"{path}: its data loader position {checkpoint['loader']} is not whole numbers")


def first_non_finite(model: torch.nn.Module, *optimizers: torch.optim.Optimizer) -> Optional[str]:
    """The first parameter or optimizer-state tensor holding a NaN or an infinity, named ('transformer.h.0.mlp.c_fc
    .weight (nan)', 'exp_avg of transformer.wte.weight (inf)'), or None. This rank's part under FSDP2. One device
    sync for all of them."""
    names = {p: clean_name(name) for name, p in model.named_parameters()}
    tensors = [(name, p) for p, name in names.items()]
    for p, slots in (item for optimizer in optimizers for item in optimizer.state.items()):
        tensors += [(f"{slot} of {names.get(p, 'a parameter')}", value) for slot, value in slots.items()
                    if isinstance(value, torch.Tensor) and value.is_floating_point()]
    local = [(name, t.to_local() if hasattr(t, "to_local") else t) for name, t in tensors]
    local = [(name, t.detach()) for name, t in local if t.numel()]
    if not local:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in local]).tolist()
    for (name, t), ok in zip(local, finite):
        if not ok:
            return f"{name} ({'nan' if torch.isnan(t).any() else 'inf'})"
    return None


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (its partial write removed, the older ones kept), in one line."""


def save_training_state(state: TrainState, run_dir: Union[str, Path], keep: int, ranks: Ranks,
                        tensors_saved: bool = False) -> Path:
    """Write the state as its step's checkpoint in run_dir, atomically, with every rank's generator states, then
    delete all but the newest `keep` (0 keeps all); return its path. Every rank calls it: the master writes a file;
    every rank writes its part of a sharded checkpoint (tensors_saved: this run's checkpoint of this step holds its
    tensors already, see save_sharded). A failure on any rank is one CheckpointWriteError on the master (an Exit,
    silent, on the others), its partial write already removed."""
    from torch.distributed.checkpoint.api import CheckpointException

    path = checkpoint_path(run_dir, state.step, state.sharded)
    full = state.state_dict()
    full["rng"] = ranks.gather(full["rng"][0])
    failure = None
    try:
        if state.sharded:
            save_sharded(full, path, ranks.master, tensors_saved)
        elif ranks.master:
            save_checkpoint(path, full)
    except (Exception, CheckpointException) as e:  # a full disk, a lost mount, a permission ...
        failure = e
    needed = ranks.all_sum([tensor_bytes(full)])[0] if state.sharded else tensor_bytes(full)
    if ranks.any_rank(failure is not None)[0]:
        raise write_failure(path, failure, int(needed), ranks.master)
    if ranks.master:
        prune_checkpoints(run_dir, keep)
    return path


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a (nested) state dict: about what torch.save or DCP writes of it."""
    if isinstance(value, torch.Tensor):
        local = value.to_local() if hasattr(value, "to_local") else value
        return local.numel() * local.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def write_failure(path: Path, error: Optional[BaseException], needed: int, master: bool) -> BaseException:
    """The end of a run whose checkpoint could not be written, once the partial write is gone: on the master, the
    one line saying why (a full disk: how much is free and how much the checkpoint needs) and what is kept."""
    if not master:
        return Exit("", 1)
    remove(path.with_name(path.name + ".tmp"))  # a sharded save's directory (a file's is gone with atomic_file)
    free = shutil.disk_usage(path.parent).free
    full = free < needed or error is not None and any(is_disk_full(e) for e in underlying_errors(error))
    kept = list_checkpoints(path.parent)  # the older ones: a failed save renames nothing into place
    kept_line = f"; the newest checkpoint, {kept[-1]}, is kept as it was" if kept else ""
    if full:
        why = (f"the disk holding {path.parent} is full ({megabytes(free)} free; the checkpoint needs about "
               f"{megabytes(needed)})")
    else:
        why = describe_error(error) if error else "a peer could not write its part"
    return CheckpointWriteError(f"cannot write checkpoint {path}: {why}; its partial write is removed{kept_line}")


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or a quota, as an OSError or in the words of torch's writer (which turns it into 'unexpected pos')."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return bool(re.search(r"No space left|quota exceeded|unexpected pos", str(error), re.I))


def megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def save_sharded(full: dict[str, Any], path: Path, master: bool, tensors_saved: bool = False) -> None:
    """The DCP checkpoint of model and optimizer in `full` (a TrainState's state_dict), written by every rank into
    path.tmp/, then the master's state.pt and the rename to path/, over what was there (a damaged checkpoint of the
    same step, which the run skipped). tensors_saved, for the same step again (its evaluations done since this run
    saved or resumed it): only state.pt is replaced, as no optimizer step lies between."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    plain = {key: value for key, value in full.items() if key not in ("model", "optimizer")}
    if tensors_saved and path.is_dir():
        if master:
            save_checkpoint(path / SHARDED_STATE, plain)
        return
    tmp = path.with_name(path.name + ".tmp")  # one name for every rank; a killed save's is removed at the next start
    with one_process_is_meant():
        dcp.save({"model": full["model"], "optimizer": full["optimizer"]}, checkpoint_id=str(tmp),
                 no_dist=not dist.is_initialized())  # with several ranks, a collective
    if master:  # dcp.save returns on the master once every rank's shards are written
        save_checkpoint(tmp / SHARDED_STATE, plain)
        old = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # removed at the next start, should a kill come now
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        sync_directory(path.parent)
        remove(old)


def load_training_state(state: TrainState, path: Path, checkpoint: dict[str, Any]) -> None:
    """Resume `state` from the checkpoint at path; `checkpoint` is what load_checkpoint read there, its fields
    checked (check_training_fields; of a sharded one, state.pt: its model and optimizer tensors are loaded here,
    resharded to this run's world size). A state that does not fit this run (another shape, data the loader's
    position does not fit) is a ValueError naming the checkpoint; one that is not finite, a FloatingPointError
    naming the tensor."""
    if path.is_dir():
        current = state.state_dict()  # the shapes and shards to load into
        checkpoint = {**checkpoint, **load_sharded(path, {"model": current["model"],
                                                          "optimizer": current["optimizer"]})}
    try:
        state.load_state_dict(checkpoint)
    except (KeyError, TypeError, RuntimeError, IndexError) as e:  # fields of the right type, but not this run's
        raise ValueError(f"{path} does not resume this run: {first_line(e)[:300]}") from None
    if bad := first_non_finite(state.model, *state.optimizers):
        raise FloatingPointError(f"{path} holds non-finite values: {bad}")


def remove_superseded_checkpoints(run_dir: Union[str, Path], final_step: int, interval: int) -> list[Path]:
    """At the end of a run: delete the checkpoints written for a crash or a stop (by time, or on a stop request),
    which the final one supersedes; those on the --checkpoint-interval grid stay."""
    removed = []
    for path in list_checkpoints(run_dir):
        step = checkpoint_step(path)
        if step < final_step and not (interval and step % interval == 0):
            remove(path)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# When a run writes checkpoints, and what it ends with when it cannot


def due(interval: int, step: int, last: bool) -> bool:
    """Whether what runs every `interval` steps (an evaluation, a checkpoint) is due at `step`: 0 turns it off, and
    the last step has every one that is on."""
    return bool(interval) and (step % interval == 0 or last)


class CheckpointSchedule:
    """When a checkpoint is written (ctx: the run's context.RunContext): every --checkpoint-interval steps, every
    --checkpoint-minutes (the master's monotonic clock, which no NTP step or VM resume turns back), at the end and on
    a stop request; never twice for the same progress, never for step 0, never of non-finite state. The end's
    supersedes those written for a crash or a stop: they go."""

    def __init__(self, ctx: Any, state: TrainState, resumed: Optional[Path]):
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
               for rank, what in enumerate(ranks.gather(first_non_finite(state.model, *state.optimizers))) if what]
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

    def diverged(self, error: FloatingPointError) -> Exception:
        """The end of a run whose loss or gradient norm is not finite (error: what was not, at which step), true
        about the checkpoints."""
        return self.failure(FloatingPointError(f"{error}; stopped before the update. {self.kept()}; try a lower "
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
# A model from --init


def config_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> GPTConfig:
    """The GPTConfig a checkpoint's model was made with; a clear error for one this code cannot build."""
    try:
        return GPTConfig(**state["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: bad model config {state['config']!r}: {e}") from None


def model_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> GPT:
    model = GPT(config_from_checkpoint(state, source))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit the model config: {first_line(e)}") from None
    return model


def model_from_sharded(path: Path) -> GPT:
    """The model of a sharded checkpoint, whole, in this process (whatever the world size that wrote it)."""
    model = GPT(config_from_checkpoint(load_checkpoint(path), str(path)))
    tensors = load_sharded(path, {"model": model.state_dict()}, no_dist=True)
    model.load_state_dict(tensors["model"])
    return model


def is_run_directory(path: Path) -> bool:
    """A directory that stands for its newest checkpoint: neither a checkpoint itself nor a Hugging Face model."""
    return path.is_dir() and not (path / "config.json").is_file() and not CHECKPOINT_PATTERN.match(path.name)


def model_at(path: Path) -> GPT:
    """The model of one checkpoint of ours: a file, or a sharded checkpoint's directory."""
    return model_from_sharded(path) if path.is_dir() else model_from_checkpoint(load_checkpoint(path), str(path))


def say_on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_model(init: str, device: Union[str, torch.device] = "cpu",
               say: Callable[[str], None] = say_on_stderr) -> GPT:
    """--init for every script: our checkpoint (a .pt file or a sharded checkpoint's directory), a run directory
    (its newest checkpoint that loads: which one is said through `say`, and each newer one skipped), a
    save_pretrained directory, or a GPT-2 hub name (from the Hugging Face cache when the hub cannot be reached)."""
    path = Path(init)
    if is_run_directory(path):
        found = newest_that_loads(path, model_at, say)
        if found is None:
            raise FileNotFoundError(f"{init} holds neither checkpoints (ckpt_NNNNNN.pt or ckpt_NNNNNN/) nor a "
                                    f"Hugging Face model (config.json)")
        chosen, model = found
        say(f"using {chosen}")
    elif path.is_file() or path.is_dir() and CHECKPOINT_PATTERN.match(path.name):
        model = model_at(path)
    elif path.is_dir():
        model = GPT.from_pretrained(str(path))
    elif init in HF_MODEL_NAMES:
        model = model_from_hub(init)
    elif init.endswith(".pt") or "/" in init or "\\" in init:
        raise FileNotFoundError(f"no such checkpoint or directory: {init}{what_is_there(path.parent)}")
    else:
        raise ValueError(
            f"unknown model {init!r}: pass a checkpoint (.pt), a run directory, a Hugging Face GPT-2 directory, "
            f"or one of {', '.join(HF_MODEL_NAMES)}"
        )
    return model.to(device)


def train_config_of(init: str) -> dict[str, Any]:
    """The TrainConfig, as a dict, of the run that wrote a checkpoint of ours (or a run directory's newest); {} for
    anything else. Memory-mapped: a large checkpoint is not read for it."""
    path = Path(init)
    path = newest_checkpoint(path) if is_run_directory(path) else path
    try:
        return dict(load_checkpoint(path, mmap=True).get("train_config") or {}) if path is not None else {}
    except (ValueError, OSError):  # not a checkpoint of ours (a hub name, an HF directory): load_model's to tell
        return {}


def what_is_there(directory: Path) -> str:
    """'; DIR holds ckpt_000050.pt, ckpt_000100.pt' when a directory holds checkpoints, for a path not found."""
    found = list_checkpoints(directory)
    return f"; {directory} holds {', '.join(p.name for p in found)}" if found else ""


def model_from_hub(name: str) -> GPT:
    """OpenAI's GPT-2 weights from the Hugging Face hub, or from its local cache when the hub is out of reach (in
    seconds: the probe comes before transformers' retries)."""
    offline = hub_unreachable()
    if offline and not in_hub_cache(name):
        raise OSError(
            f"could not load {name!r}: the hub cannot be reached ({offline}) and it is not in the Hugging Face "
            f"cache. {HUB_ADVICE.format(name=name)}"
        )
    try:
        return GPT.from_pretrained(name, local_files_only=offline is not None)
    except Exception as e:  # a broken cache entry, hub down, no disk space ...
        raise OSError(f"could not load {name!r} ({first_line(e)}). {HUB_ADVICE.format(name=name)}") from None


def in_hub_cache(name: str) -> bool:
    """Whether a hub model's config is in the local Hugging Face cache (without importing transformers)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)
