"""HellaSwag accuracy both ways that GPT-2's published figures were scored, side by side, so that each compares with
its own kind.

    python hellaswag.py -m gpt2 --split val
    python hellaswag.py -m log/ckpt_019073.pt --limit 1000

Completion style (build-nanogpt's and llm.c's; the one in log.txt): the context `ctx` as it is, followed by each of
the 4 endings with a leading space; `acc` picks the ending of the highest summed log-likelihood, `acc_norm` the
highest per token. Harness style (EleutherAI's lm-evaluation-harness 0.4, the leaderboards'): the context is
"activity_label: ctx_a Ctx_b" and every text loses WikiHow's bracketed artifacts; the continuation's tokens are those
of the whole text past the context's; `acc` as above, `acc_norm` per character of the ending. For OpenAI's GPT-2
124M on val (llm.c's dev/data/hellaswag.py records both): completion style acc 0.2859 / acc_norm 0.2955, harness
style acc 0.2892 / acc_norm 0.3114 (gpt2-xl: acc_norm 0.4893 / 0.5089).
"""

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from cli import first_line, option, parse_dataclass, positive, run_cli
from devices import DEVICE_FLAG, DTYPE_FLAG, autocast, device_and_dtype
from files import atomic_file, no_empty_directory_on_failure
from network import unreachable
from tokenizer import get_tokenizer

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
SPLITS = ("train", "val")
HIDDEN_LABELS = "HellaSwag's test split hides its labels (they are empty), so it cannot be scored; use val"
DEFAULT_CACHE = Path(__file__).resolve().parent / "hellaswag"
# OpenAI's GPT-2 124M on val, as published (llm.c's dev/data/hellaswag.py): what each convention's figures compare with
PUBLISHED_GPT2 = {"completion": (0.2859, 0.2955), "harness": (0.2892, 0.3114)}  # (acc, acc_norm)


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
    parsed = {"ctx": example["ctx"], "endings": endings, "label": parse_label(example.get("label"), where)}
    if all(isinstance(example.get(field), str) for field in HARNESS_FIELDS):  # what harness style reads
        parsed.update({field: example[field] for field in HARNESS_FIELDS})
    return parsed


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


HARNESS_FIELDS = ("activity_label", "ctx_a", "ctx_b")


class Judgement(NamedTuple):
    """Whether each way of picking an ending picked the example's label."""

    acc: bool  # completion style: the highest summed log-likelihood
    acc_norm: bool  # completion style: per token
    harness_acc: Optional[bool]  # harness style (None where the example lacks activity_label, ctx_a, ctx_b)
    harness_acc_norm: Optional[bool]  # harness style: per character of the ending


def harness_style_applies(examples: list[dict]) -> bool:
    """Whether every example has the fields harness style reads (parse_example keeps them where they are)."""
    return all(HARNESS_FIELDS[0] in example for example in examples)


def harness_preprocess(text: str) -> str:
    """lm-evaluation-harness's clean-up of HellaSwag text (its tasks/hellaswag/utils.py): WikiHow's bracketed
    artifacts out, " [title]" as a sentence end."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def completion_rows(example: dict) -> tuple[list[int], list[list[int]], list[float]]:
    """Completion style: the context's tokens, each ending's (with its leading space), and each one's length in
    tokens (acc_norm's divisor)."""
    enc = get_tokenizer()
    endings = [enc.encode(" " + ending) for ending in example["endings"]]
    return enc.encode(example["ctx"]), endings, [float(len(e)) for e in endings]


def harness_rows(example: dict) -> tuple[list[int], list[list[int]], list[float]]:
    """Harness style: the query's tokens, each continuation's (the tokens of query + " " + ending past the query's,
    as the harness splits a pair), and each ending's length in characters (acc_norm's divisor)."""
    enc = get_tokenizer()
    query = harness_preprocess(f"{example['activity_label']}: {example['ctx_a']} {example['ctx_b'].capitalize()}")
    choices = [harness_preprocess(ending) for ending in example["endings"]]
    context = enc.encode(query)
    continuations = [enc.encode(query + " " + choice)[len(context) :] for choice in choices]
    return context, continuations, [float(len(choice)) for choice in choices]


def score_examples(model: nn.Module, examples: list[dict], device: torch.device, batch_size: int = 8,
                   progress: bool = False) -> dict[str, Optional[int]]:
    """The one scoring function: counts of examples right, each way (harness style: None unless every example has
    its fields)."""
    judged = judge_examples(model, examples, device, batch_size, progress)
    counts = {"total": len(judged)}
    for name in Judgement._fields:
        marks = [getattr(j, name) for j in judged]
        counts[f"{name}_correct"] = None if None in marks else sum(marks)
    return counts


@torch.no_grad()
def judge_examples(model: nn.Module, examples: list[dict], device: torch.device, batch_size: int = 8,
                   progress: bool = False) -> list[Judgement]:
    """Each example judged both ways; ceil(len / batch_size) forward passes of its 4 (or, with harness style, 8)
    rows."""
    block_size = model.config.block_size if hasattr(model, "config") else 1024
    judged = []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(examples), batch_size), disable=not progress, desc="HellaSwag", unit="batch"):
        batch = examples[start : start + batch_size]
        styles = [completion_rows] + ([harness_rows] if harness_style_applies(batch) else [])
        requests = [style(example) for example in batch for style in styles]
        lls = ending_log_likelihoods(model, requests, block_size, device)  # (n * styles, 4)
        labels = torch.tensor([e["label"] for e in batch], device=device).repeat_interleave(len(styles))
        lengths = torch.tensor([lens for _, _, lens in requests], device=device)  # (n * styles, 4)
        acc = (lls.argmax(dim=1) == labels).view(len(batch), len(styles)).tolist()
        acc_norm = ((lls / lengths).argmax(dim=1) == labels).view(len(batch), len(styles)).tolist()
        for a, n in zip(acc, acc_norm):
            judged.append(Judgement(a[0], n[0], *((a[1], n[1]) if len(a) > 1 else (None, None))))
    model.train(was_training)
    return judged


def ending_log_likelihoods(model: nn.Module, requests: list[tuple[list[int], list[list[int]], list[float]]],
                           block_size: int, device: torch.device) -> torch.Tensor:
    """(len(requests), 4) summed log-likelihoods, in fp32, of each request's 4 endings after its context, in one
    forward pass. A row longer than the model's context keeps its last block_size + 1 tokens, as the harness
    truncates: the first is input only."""
    rows, counted = [], []
    for context, endings, _ in requests:
        for ending in endings:
            rows.append((context + ending)[-(block_size + 1) :])
            counted.append(min(len(ending), len(rows[-1]) - 1))
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)  # (R, W), padded on the right
    ending = torch.zeros(len(rows), width - 1)  # (R, W - 1): 1 where the target is an ending token
    for i, (row, n) in enumerate(zip(rows, counted)):
        tokens[i, : len(row)] = torch.tensor(row)
        ending[i, len(row) - 1 - n : len(row) - 1] = 1.0
    tokens, ending = tokens.to(device), ending.to(device)
    logits, _ = model(tokens[:, :-1])  # (R, W - 1, V)
    log_probs = F.log_softmax(logits.float(), dim=-1).gather(2, tokens[:, 1:, None])[..., 0]  # (R, W - 1)
    return (log_probs * ending).sum(dim=1).view(len(requests), -1)  # (requests, 4)


def split_problem(split: str) -> Optional[str]:
    """--split's check: 'test: HellaSwag's test split hides its labels ...', or None for a split that scores."""
    try:
        check_split(split)
    except ValueError as e:
        return f"{split}: {str(e).split(': ', 1)[1] if split == 'test' else e}"
    return None


@dataclass
class HellaSwagConfig:
    """Every field is a flag (--field-name), in its group of -h."""

    model: str = option("gpt2", "the model: checkpoint (.pt or sharded ckpt_NNNNNN/), run directory (its newest), "
                                "Hugging Face GPT-2 directory or hub name", group="model", aliases=("-m",))
    split: str = option("val", f"which split: {', '.join(SPLITS)} (test's labels are hidden)", split_problem,
                        group="data")
    data: str = option("", "a local hellaswag_{split}.jsonl instead of the cached download", group="data")
    limit: Optional[int] = option(None, "score only the first N examples", positive, group="data")
    batch_size: int = option(8, "examples per forward pass", positive, group="performance")
    device: str = option(**DEVICE_FLAG, group="performance")
    dtype: str = option(**DTYPE_FLAG, group="performance")


def main(argv: Optional[list[str]] = None) -> None:
    from checkpoint import load_model

    cfg = parse_dataclass(HellaSwagConfig, None, argv, first_line(__doc__))
    device, dtype = device_and_dtype(cfg.device, cfg.dtype)
    examples = load_examples(cfg.split, cfg.data or None, cfg.limit)
    model = load_model(cfg.model, device)
    with autocast(device, dtype):
        counts = score_examples(model, examples, device, cfg.batch_size, progress=True)
    print(f"{cfg.model} on HellaSwag {cfg.split} ({counts['total']} examples):")
    for line in describe_counts(counts):
        print(line)


def describe_counts(counts: dict[str, Optional[int]]) -> list[str]:
    """A line per convention: its acc and acc_norm, beside OpenAI's GPT-2 124M's published figures of that kind."""
    n, lines = counts["total"], []
    for style, prefix, how in (("completion", "", "build-nanogpt, llm.c"), ("harness", "harness_", "lm-eval-harness")):
        acc, acc_norm = counts[f"{prefix}acc_correct"], counts[f"{prefix}acc_norm_correct"]
        if acc is None:
            lines.append(f"  {style + ' style':17s} n/a: the examples lack activity_label, ctx_a and ctx_b")
            continue
        published = PUBLISHED_GPT2[style]
        lines.append(f"  {style + ' style':17s} acc {acc / n:.4f} ({acc}/{n}) | acc_norm {acc_norm / n:.4f} "
                     f"({acc_norm}/{n})   [{how}; OpenAI GPT-2 124M: acc {published[0]:.4f}, acc_norm "
                     f"{published[1]:.4f}]")
    return lines


if __name__ == "__main__":
    run_cli(main)
