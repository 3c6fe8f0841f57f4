"""Sample text from a checkpoint of ours, a run directory, a Hugging Face GPT-2 directory, or pretrained GPT-2.

    python sample.py                                  # the newest checkpoint in log/, streamed if -n 1
    python sample.py --init runs/quickstart -p "ROMEO." -n 1 -m 200
    python sample.py --init gpt2 -p "Hello, I'm a language model," -n 4 -m 32 --top-k 50

One sample is printed as it is generated; several are printed when all are done.
"""

import codecs
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from checkpoint import DEFAULT_RUN_DIR, load_model, newest_checkpoint
from cli import UsageError, first_line, in_unit_interval, non_negative, option, parse_dataclass, positive, run_cli, \
    seed_range
from devices import DEVICE_FLAG, DTYPE_FLAG, INFERENCE_DTYPE_HELP, autocast, device_and_dtype
from model import GPT
from tokenizer import EOT_ID, get_tokenizer


def sample_texts(
    model: GPT,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    device: torch.device,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int = 42,
    use_cache: bool = True,
    compile: bool = False,
    stop_at_eot: bool = False,
    write: Optional[Callable[[str], None]] = None,
) -> list[str]:
    """num_samples continuations of prompt (prompt included); an empty prompt starts from <|endoftext|>. With
    `write` (one sample only), the text is also handed to it piece by piece as it is generated. stop_at_eot: each
    sample ends before the first <|endoftext|> it generates (the model's end of a document).

    Runs on `device` (the model's) under the caller's autocast, if any."""
    enc = get_tokenizer()
    ids = enc.encode(prompt, allowed_special="all") if prompt else [EOT_ID]
    idx = torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(0).repeat(num_samples, 1)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    stream = TextStream(write) if write is not None else None
    if stream is not None:
        if num_samples != 1:
            raise ValueError("streaming prints one sample; ask for one")
        stream.feed(ids)
    out = model.generate(
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        generator=generator,
        use_cache=use_cache,
        vocab_limit=enc.n_vocab,
        compile=compile,
        on_token=(lambda column: stream.feed(column[0].tolist(), stop_at_eot)) if stream is not None else None,
    )
    if stream is not None:
        stream.close()
    rows = [row[: len(ids)] + until_eot(row[len(ids) :]) if stop_at_eot else row for row in out.tolist()]
    return [enc.decode(row) for row in rows]


def until_eot(ids: list[int]) -> list[int]:
    """Generated ids up to, not including, the first <|endoftext|>."""
    return ids[: ids.index(EOT_ID)] if EOT_ID in ids else ids


class TextStream:
    """Token ids in, text out as soon as it is whole: a character whose UTF-8 bytes span several tokens waits for
    its last one. What it writes adds up to the tokenizer's decode of all the ids."""

    def __init__(self, write: Callable[[str], None]):
        self.write, self.enc = write, get_tokenizer()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended = False  # at an <|endoftext|>, when asked to stop there

    def feed(self, ids: list[int], stop_at_eot: bool = False) -> None:
        if self.ended:
            return
        if stop_at_eot and EOT_ID in ids:
            ids, self.ended = until_eot(ids), True
        if text := self.decoder.decode(self.enc.decode_bytes(ids)):
            self.write(text)

    def close(self) -> None:
        if text := self.decoder.decode(b"", final=True):
            self.write(text)


@dataclass
class SampleConfig:
    """Every field is a flag (--field-name, some with a short one), in its group of -h."""

    init: str = option("", f"the model: a checkpoint (.pt, or a sharded ckpt_NNNNNN/), a run directory (its newest), "
                           f"a Hugging Face GPT-2 directory or a hub name (gpt2, ...); when not given, the newest "
                           f"checkpoint in {DEFAULT_RUN_DIR}/", group="model")
    prompt: str = option("Hello, I'm a language model,", "the prompt; empty: <|endoftext|>", aliases=("-p",),
                         group="prompt")
    prompt_file: str = option("", "the prompt from a UTF-8 text file, as it is (instead of --prompt)",
                              group="prompt")
    num_samples: int = option(4, "how many samples", positive, aliases=("-n",), group="sampling")
    max_new_tokens: int = option(32, "tokens to add to each", positive, aliases=("-m",), group="sampling")
    temperature: float = option(1.0, "divide the logits by this; 0 means greedy", non_negative, group="sampling")
    top_k: int = option(50, "sample among the k likeliest tokens", positive, group="sampling")
    top_p: float = option(1.0, "nucleus sampling: among the likeliest tokens whose probabilities add up to p, after "
                               "temperature and top-k; 1: all", in_unit_interval, group="sampling")
    repetition_penalty: float = option(1.0, "each token already in the text has its logit divided by this (times it "
                                            "where negative), as transformers does; 1: none", positive,
                                       group="sampling")
    seed: int = option(42, "seed of the sampler", seed_range, group="sampling")
    stop_at_eot: bool = option(False, "end each sample at the first <|endoftext|> it generates", group="sampling",
                               action="store_true")
    device: str = option(**DEVICE_FLAG, group="performance")
    dtype: str = option(**{**DTYPE_FLAG, "help": INFERENCE_DTYPE_HELP}, group="performance")
    cache: bool = option(True, "the KV cache; --no-cache recomputes the whole context for every token",
                         group="performance")
    compile: bool = option(False, "torch.compile the cached decoding step, once (a CUDA graph per token on a GPU)",
                           group="performance")


def one_prompt(cfg: SampleConfig, given: set[str]) -> None:
    if {"prompt", "prompt_file"} <= given:
        raise ValueError("--prompt and --prompt-file: pick one")


def parse_config(argv: Optional[list[str]] = None) -> SampleConfig:
    return parse_dataclass(SampleConfig, None, argv, first_line(__doc__), adjust=one_prompt)


def prompt_of(cfg: SampleConfig) -> str:
    """The prompt: --prompt-file's text, or --prompt; a file that is not there or not text is a usage error."""
    if not cfg.prompt_file:
        return cfg.prompt
    try:
        return Path(cfg.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt-file {cfg.prompt_file}: "
                         f"{e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") from None


def model_to_sample(cfg: SampleConfig) -> str:
    """--init, or with none the default run directory (load_model takes its newest checkpoint that loads, and says
    which); with none there either, a usage error saying what to pass."""
    if cfg.init:
        return cfg.init
    if newest_checkpoint(DEFAULT_RUN_DIR) is None:
        raise UsageError(f"no --init, and no checkpoint in {DEFAULT_RUN_DIR}/ (train_gpt2.py's default run directory) "
                         f"to sample from: pass --init with a checkpoint, a run directory (runs/quickstart), a "
                         f"Hugging Face GPT-2 directory, or a hub name (gpt2)")
    return DEFAULT_RUN_DIR


def print_flushed(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Optional[list[str]] = None) -> None:
    cfg = parse_config(argv)
    device, dtype = device_and_dtype(cfg.device, cfg.dtype)
    prompt, init = prompt_of(cfg), model_to_sample(cfg)
    model = load_model(init, device).cast_for_inference(dtype)  # weights in the compute dtype
    vocab = min(model.config.vocab_size, get_tokenizer().n_vocab)
    if cfg.top_k > vocab:
        raise ValueError(f"--top-k {cfg.top_k} is larger than the vocabulary ({vocab})")
    streaming = cfg.num_samples == 1
    if streaming:
        print_flushed("sample 1: ")
    with autocast(device, dtype):
        texts = sample_texts(model, prompt, cfg.num_samples, cfg.max_new_tokens, device,
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, use_cache=cfg.cache,
                             compile=cfg.compile, stop_at_eot=cfg.stop_at_eot,
                             write=print_flushed if streaming else None)
    if streaming:
        print()
    else:
        for i, text in enumerate(texts, start=1):
            print(f"sample {i}: {text}")


if __name__ == "__main__":
    run_cli(main)
