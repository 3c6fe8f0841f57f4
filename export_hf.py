"""Export a checkpoint of ours as a Hugging Face transformers GPT-2 directory (config, safetensors, tokenizer).

    python export_hf.py log/ckpt_019073.pt hf/my-gpt2
    python export_hf.py log/ckpt_019073.pt gpt2-124M.pt --weights-only --dtype bfloat16   # 1/6 the size, ours

The directory then loads with GPT2LMHeadModel.from_pretrained / AutoTokenizer.from_pretrained, and from there in
lm-eval-harness, vLLM or a transformers pipeline. The vocabulary padded to 50,304 rows for speed is cut back to
GPT-2's 50,257 (the extra rows are never produced by the tokenizer), and Linear weights become Conv1D again.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from checkpoint import CHECKPOINT_PATTERN, list_checkpoints, load_model, save_checkpoint, train_config_of
from cli import first_line, option, parse_dataclass, run_cli
from devices import DTYPES
from files import readable_by_all
from tokenizer import EOT_ID, N_VOCAB, gpt2_vocab_and_merges


def write_tokenizer(out_dir: Path, context: int) -> None:
    """GPT-2's vocab.json and merges.txt, rebuilt from the bundled ranks, plus transformers' tokenizer files, with
    the model's context as the tokenizer's longest input."""
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_vocab_and_merges()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = GPT2Tokenizer.from_pretrained(out_dir, model_max_length=context)
    tokenizer.save_pretrained(out_dir)  # adds tokenizer_config.json etc.


def fit_generation_config(hf, context: int) -> None:
    """Generation defaults that fit the model: at most its context in all (transformers' text-generation pipeline
    otherwise asks for 256 new tokens, past a small model's position table), sampling as OpenAI's gpt2 config
    does, and <|endoftext|> for padding."""
    generation = hf.generation_config
    generation.max_length = context
    generation.do_sample = True
    generation.bos_token_id = generation.eos_token_id = generation.pad_token_id = EOT_ID


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """OUT_DIR must not be a run directory (an export there would shadow its checkpoints: --init DIR would load the
    export), nor hold anything already, unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} is a file, not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if list_checkpoints(out_dir) or (out_dir / "log.txt").is_file():
        raise ValueError(f"OUT_DIR {out_dir} is a run directory: an export there would stand in for its checkpoints "
                         f"(--init {out_dir} would load it); pick a directory of its own, such as {out_dir / 'hf'}")
    if not overwrite:
        raise ValueError(f"OUT_DIR {out_dir} is not empty; pass --overwrite to replace what it holds, or pick "
                         f"another directory")


def export_hf(init: Union[str, Path], out_dir: Union[str, Path], vocab_size: int = N_VOCAB,
              overwrite: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """Write our model (checkpoint, run directory, HF directory or hub name) as a transformers GPT2LMHeadModel
    directory, its weights in `dtype`: a new or empty directory (or, with overwrite, one that is not a run
    directory)."""
    check_out_dir(Path(out_dir), overwrite)
    model = load_model(str(init))
    try:
        hf = model.to_hf(vocab_size).to(dtype)
    except ValueError as e:
        raise ValueError(f"{init}: {e}") from None
    fit_generation_config(hf, model.config.block_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir, safe_serialization=True)
    write_tokenizer(out_dir, model.config.block_size)
    readable_by_all(out_dir)
    return out_dir


def export_weights(init: Union[str, Path], out: Union[str, Path], dtype: torch.dtype = torch.float32,
                   overwrite: bool = False) -> Path:
    """Our model alone as a checkpoint of ours (model, config and, from a checkpoint of ours, the run's settings),
    its weights in `dtype`: what sample.py, --init-from and --eval-only read, without the AdamW state that makes a
    training checkpoint three times larger."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; --weights-only writes one .pt file")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix != ".pt" or CHECKPOINT_PATTERN.match(out.name):
        raise ValueError(f"{out}: name the weights-only file NAME.pt, not ckpt_NNNNNN.pt (the name of a run's "
                         f"resumable checkpoints)")
    model = load_model(str(init)).to(dtype)
    state = {"model": model.state_dict(), "config": dataclasses.asdict(model.config)}
    if train_config := train_config_of(str(init)):
        state["train_config"] = train_config
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, state)
    return out


@dataclass
class ExportConfig:
    """Every argument of the command line: the checkpoint and where it goes, then flags (--field-name)."""

    init: Optional[str] = option(None, "our checkpoint (.pt or sharded ckpt_NNNNNN/), a run directory (its newest), "
                                       "an HF directory or a hub name", positional=True, metavar="CHECKPOINT")
    out_dir: Optional[str] = option(None, "the directory to write: new or empty, and not a run directory (with "
                                          "--weights-only: a NAME.pt file)", positional=True, metavar="OUT_DIR")
    overwrite: bool = option(False, "write into a directory that holds files already", action="store_true")
    dtype: str = option("float32", "the weights' dtype", choices=tuple(DTYPES))
    weights_only: bool = option(False, "instead of a Hugging Face directory, write OUT_DIR as one .pt file of ours: "
                                       "the model without the optimizer state", action="store_true")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_dataclass(ExportConfig, None, argv, first_line(__doc__))
    if args.weights_only:
        out = export_weights(args.init, args.out_dir, DTYPES[args.dtype], args.overwrite)
        print(f"wrote {out} ({out.stat().st_size / 2**20:,.1f} MiB): sample with python sample.py --init {out}")
        return
    out = export_hf(args.init, args.out_dir, overwrite=args.overwrite, dtype=DTYPES[args.dtype])
    print(f"wrote {out}: load it with GPT2LMHeadModel.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    run_cli(main)
