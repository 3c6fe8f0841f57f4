"""The one checkpoint format: atomic saves, safe loads (weights_only), and "a model from --init" for every script.

A checkpoint is a dict of tensors and plain Python values, so torch.load(..., weights_only=True) reads it:
model, optimizer, config, train_config, step, loader, rng, val_loss.
"""

import os
import re
from pathlib import Path
from typing import Any, Union

import torch

from model import GPT, HF_MODEL_NAMES, GPTConfig

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d{6,})\.pt$")


def checkpoint_path(run_dir: Union[str, Path], step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step:06d}.pt"


def list_checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """The run's checkpoints, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Union[str, Path], state: dict[str, Any]) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash mid-save leaves older files intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prune_checkpoints(run_dir: Union[str, Path], keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; clear errors for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, disallowed pickled objects ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint: {reason[:200]}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a checkpoint of this project (expected a dict with 'model' and 'config')")
    return state


def model_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> GPT:
    try:
        config = GPTConfig(**state["config"])
    except TypeError as e:
        raise ValueError(f"{source}: bad model config {state['config']!r}: {e}") from None
    model = GPT(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit the model config: {str(e).splitlines()[0]}") from None
    return model


def load_model(init: str, device: Union[str, torch.device] = "cpu") -> GPT:
    """--init for every script: our checkpoint (.pt), a save_pretrained directory, or a GPT-2 hub name."""
    path = Path(init)
    if path.is_file():
        model = model_from_checkpoint(load_checkpoint(path), source=str(path))
    elif path.is_dir() or init in HF_MODEL_NAMES:
        model = GPT.from_pretrained(init)
    elif init.endswith(".pt") or os.sep in init:
        raise FileNotFoundError(f"no such checkpoint or directory: {init}")
    else:
        raise ValueError(
            f"unknown model {init!r}: pass a checkpoint (.pt), a Hugging Face GPT-2 directory, "
            f"or one of {', '.join(HF_MODEL_NAMES)}"
        )
    return model.to(device)
