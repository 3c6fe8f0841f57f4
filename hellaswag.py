"""HellaSwag accuracy, scored "completion style" as in build-nanogpt and llm.c, so the numbers compare with theirs.

    python hellaswag.py -m gpt2 --split val
    python hellaswag.py -m log/ckpt_019073.pt --limit 1000

Each example's context is followed by each of its 4 endings (encoded with a leading space); the model's
cross-entropy over the ending tokens picks the answer: `acc` by the lowest summed loss, `acc_norm` by the lowest
mean loss per token. Published with this scoring on val: Hugging Face gpt2 acc 0.2859 / acc_norm 0.2955,
gpt2-xl 0.3842 / 0.4893.
"""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from cli import ArgumentParser, first_line, positive_int, run_cli
from devices import add_device_flags, autocast, device_and_dtype
from files import atomic_file, no_empty_directory_on_failure
from network import unreachable
from tokenizer import get_tokenizer

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
SPLITS = ("train", "val")
HIDDEN_LABELS = "HellaSwag's test split hides its labels (they are empty), so it cannot be scored; use val"
DEFAULT_CACHE = Path(__file__).resolve().parent / "hellaswag"


def cache_dir() -> Path:
    return Path(os.environ.get("HELLASWAG_CACHE", DEFAULT_CACHE))


def check_split(split: str) -> None:
    if split == "test":
        raise ValueError(f"split 'test': {HIDDEN_LABELS}")
    if split not in SPLITS:
        raise ValueError(f"unknown HellaSwag split {split!r}; choose from {', '.join(SPLITS)}")


def download(split: str, directory: Optional[Path] = None, path_flag: str = "--data") -> Path:
    """hellaswag_{split}.jsonl in the cache, downloaded once (atomically, with a progress bar). Offline, the error
    comes in seconds, names `path_flag` (how the calling script takes a local file) and leaves no directory."""
    check_split(split)
    directory = directory or cache_dir()
    path = directory / f"hellaswag_{split}.jsonl"
    if path.is_file():
        return path
    url = URL.format(split=split)
    advice = f"put hellaswag_{split}.jsonl in {directory} or pass its path with {path_flag}"
    if reason := unreachable(url):
        raise OSError(f"cannot download HellaSwag: {reason}; {advice}")
    try:
        with no_empty_directory_on_failure(directory):
            directory.mkdir(parents=True, exist_ok=True)
            # atomic_file's per-process temporary name: ranks may download at once
            with urllib.request.urlopen(url, timeout=30) as response, atomic_file(path) as f:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path.name}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise OSError(f"could not download {url} ({getattr(e, 'reason', e)}); {advice}") from None
    return path


def parse_label(label: Any, where: str) -> int:
    """The index of the right ending: an integer, or its decimal string as in the Hugging Face dataset's export."""
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if label in ("", None):
        raise ValueError(f"{where}: no label; {HIDDEN_LABELS}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 3:
        raise ValueError(f"{where}: 'label' must be an integer in 0..3, got {label!r}")
    return label


def parse_example(line: str, where: str) -> dict[str, Any]:
    try:
        example = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: bad JSON ({e.msg})") from None
    if not isinstance(example, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for field in ("ctx", "endings"):
        if field not in example:
            raise ValueError(f"{where}: missing field {field!r}")
    endings = example["endings"]
    if not isinstance(example["ctx"], str):
        raise ValueError(f"{where}: 'ctx' must be a string")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        raise ValueError(f"{where}: 'endings' must be a list of exactly 4 strings")
    return {"ctx": example["ctx"], "endings": endings, "label": parse_label(example.get("label"), where)}


def load_examples(split: str = "val", path: Optional[str] = None, limit: Optional[int] = None,
                  path_flag: str = "--data") -> list[dict]:
    """Examples from a local file, or from the cache (downloading once); malformed lines name their number."""
    file = Path(path) if path else download(split, path_flag=path_flag)
    if file.is_dir():
        raise ValueError(f"{path_flag} {file} is a directory; expected a HellaSwag .jsonl file (hellaswag_val.jsonl)")
    if not file.is_file():
        raise FileNotFoundError(f"HellaSwag file not found: {file}")
    examples, number = [], 0
    with open(file, encoding="utf-8") as f:
        try:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    examples.append(parse_example(line, f"{file}:{number}"))
                if limit and len(examples) == limit:
                    break
        except UnicodeDecodeError:
            raise ValueError(f"{file} is not a HellaSwag .jsonl file: not UTF-8 text (near line {number + 1})") \
                from None
    if not examples:
        raise ValueError(f"{file}: no examples")
    return examples


def load_for_training(path: str, interval: int) -> tuple[Optional[list[dict]], str]:
    """The val examples that training scores every `interval` steps (None when off) and a line for its run
    summary: off, saying why, when the default download is out of reach; a `path` (--hellaswag-path) that cannot
    be read stops the run, as it was asked for."""
    if not interval:
        return None, "off (--hellaswag-interval 0)"
    try:
        examples = load_examples("val", path or None, path_flag="--hellaswag-path")
    except (OSError, ValueError) as e:
        if path:
            raise type(e)(f"--hellaswag-path: {e}") from None
        return None, f"off for this run: {e}"
    return examples, f"{len(examples):,} val examples every {interval:,} steps"


def render_example(example: dict, block_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Four token rows (context + ending) and masks marking the ending tokens; too long rows keep their end."""
    enc = get_tokenizer()
    ctx = enc.encode(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        end = enc.encode(" " + ending)  # a leading space: the ending continues the context's last word
        rows.append((ctx + end)[-block_size:])
        masks.append(([0] * len(ctx) + [1] * len(end))[-block_size:])
    return rows, masks


def score_examples(model: nn.Module, examples: list[dict], device: torch.device, batch_size: int = 8,
                   progress: bool = False) -> dict[str, int]:
    """The one scoring function: counts of examples right by acc (summed loss) and acc_norm (mean loss)."""
    right = judge_examples(model, examples, device, batch_size, progress)
    return {"total": len(right), "acc_correct": sum(acc for acc, _ in right),
            "acc_norm_correct": sum(acc_norm for _, acc_norm in right)}


@torch.no_grad()
def judge_examples(model: nn.Module, examples: list[dict], device: torch.device, batch_size: int = 8,
                   progress: bool = False) -> list[tuple[bool, bool]]:
    """For each example, whether acc and whether acc_norm pick its label; ceil(len / batch_size) forward passes."""
    block_size = model.config.block_size if hasattr(model, "config") else 1024
    right = []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(examples), batch_size), disable=not progress, desc="HellaSwag", unit="batch"):
        batch = examples[start : start + batch_size]
        rows, masks = [], []
        for example in batch:
            r, m = render_example(example, block_size)
            rows += r
            masks += m
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)  # (4 * n, W), padded on the right
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (r, m) in enumerate(zip(rows, masks)):
            tokens[i, : len(r)] = torch.tensor(r)
            mask[i, : len(m)] = torch.tensor(m)
        tokens, mask = tokens.to(device), mask.to(device)
        logits, _ = model(tokens)  # (4n, W, V)
        losses = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), reduction="none"
        ).view(len(rows), width - 1)  # (4n, W - 1): loss of predicting token t + 1
        ending = mask[:, 1:].float()  # (4n, W - 1), padding and context excluded
        summed = (losses * ending).sum(dim=1).view(-1, 4)  # (n, 4)
        mean = summed / ending.sum(dim=1).view(-1, 4)  # (n, 4)
        labels = torch.tensor([e["label"] for e in batch], device=device)
        right += zip((summed.argmin(dim=1) == labels).tolist(), (mean.argmin(dim=1) == labels).tolist())
    model.train(was_training)
    return right


def parse_args(argv: Optional[list[str]] = None):
    parser = ArgumentParser(description=first_line(__doc__))
    parser.add_argument("-m", "--model", default="gpt2", help="checkpoint (.pt or sharded ckpt_NNNNNN/), run directory "
                                                               "(its newest), Hugging Face GPT-2 directory, hub name")
    parser.add_argument("--split", default="val", help=f"which HellaSwag split: {', '.join(SPLITS)} (test's labels "
                                                       f"are hidden)")
    parser.add_argument("--data", default=None, help="a local hellaswag_{split}.jsonl instead of the cached download")
    parser.add_argument("--limit", type=positive_int, default=None, help="score only the first N examples")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per forward pass")
    add_device_flags(parser)
    args = parser.parse_args(argv)
    try:
        check_split(args.split)
    except ValueError as e:
        parser.error(f"--split {args.split}: {str(e).split(': ', 1)[1]}")
    args.device, args.dtype = device_and_dtype(parser, args.device, args.dtype)
    return args


def main(argv: Optional[list[str]] = None) -> None:
    from checkpoint import load_model

    args = parse_args(argv)
    examples = load_examples(args.split, args.data, args.limit)
    model = load_model(args.model, args.device)
    with autocast(args.device, args.dtype):
        counts = score_examples(model, examples, args.device, args.batch_size, progress=True)
    n = counts["total"]
    print(f"{args.model} on HellaSwag {args.split} ({n} examples): "
          f"acc {counts['acc_correct'] / n:.4f} ({counts['acc_correct']}/{n}) | "
          f"acc_norm {counts['acc_norm_correct'] / n:.4f} ({counts['acc_norm_correct']}/{n})")


if __name__ == "__main__":
    run_cli(main)
