"""Sample text from a checkpoint of ours, a run directory, a Hugging Face GPT-2 directory, or pretrained GPT-2.

    python sample.py                                  # the newest checkpoint in log/, streamed if -n 1
    python sample.py --init runs/quickstart -p "ROMEO." -n 1 -m 200
    python sample.py --init gpt2 -p "Hello, I'm a language model," -n 4 -m 32 --top-k 50

One sample is printed as it is generated; several are printed when all are done.
"""

import codecs
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from checkpoint import DEFAULT_RUN_DIR, load_model, newest_checkpoint
from cli import ArgumentParser, first_line, non_negative_float, positive_int, run_cli, seed_int
from devices import INFERENCE_DTYPE_HELP, add_device_flags, autocast, device_and_dtype
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


def default_init(parser) -> str:
    """With no --init: the default run directory (load_model takes its newest checkpoint that loads, and says which),
    else a usage error saying what to pass."""
    if newest_checkpoint(DEFAULT_RUN_DIR) is None:
        parser.error(f"no --init, and no checkpoint in {DEFAULT_RUN_DIR}/ (train_gpt2.py's default run directory) to "
                     f"sample from: pass --init with a checkpoint, a run directory (runs/quickstart), a Hugging Face "
                     f"GPT-2 directory, or a hub name (gpt2)")
    return DEFAULT_RUN_DIR


def read_prompt(parser, path: str) -> str:
    """--prompt-file's text; a file that is not there or not text is a usage error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--prompt-file {path}: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}")


def print_flushed(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def parse_args(argv: Optional[list[str]] = None):
    parser = ArgumentParser(description=first_line(__doc__))
    parser.add_argument("--init", default=None,
                        help=f"checkpoint (.pt, or a sharded ckpt_NNNNNN/ directory), run directory (its newest "
                             f"checkpoint), Hugging Face GPT-2 directory, or hub name (gpt2, ...); default: the newest "
                             f"checkpoint in {DEFAULT_RUN_DIR}/")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("-p", "--prompt", default="Hello, I'm a language model,", help="empty: <|endoftext|>")
    prompt.add_argument("--prompt-file", default=None, help="the prompt from a UTF-8 text file, as it is")
    parser.add_argument("-n", "--num-samples", type=positive_int, default=4, help="how many samples")
    parser.add_argument("-m", "--max-new-tokens", type=positive_int, default=32, help="tokens to add to each")
    parser.add_argument("--top-k", type=positive_int, default=50, help="sample among the k likeliest tokens")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 means greedy")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed of the sampler")
    add_device_flags(parser, INFERENCE_DTYPE_HELP)
    parser.add_argument("--stop-at-eot", action="store_true",
                        help="end each sample at the first <|endoftext|> it generates")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the cached decoding step, once (a CUDA graph per token on a GPU); pays off "
                             "for long samples")
    args = parser.parse_args(argv)
    args.device, args.dtype = device_and_dtype(parser, args.device, args.dtype)
    if args.prompt_file is not None:
        args.prompt = read_prompt(parser, args.prompt_file)
    args.init = args.init or default_init(parser)
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    model = load_model(args.init, args.device).cast_for_inference(args.dtype)  # weights in the compute dtype
    vocab = min(model.config.vocab_size, get_tokenizer().n_vocab)
    if args.top_k > vocab:
        raise ValueError(f"--top-k {args.top_k} is larger than the vocabulary ({vocab})")
    streaming = args.num_samples == 1
    if streaming:
        print_flushed("sample 1: ")
    with autocast(args.device, args.dtype):
        texts = sample_texts(
            model,
            args.prompt,
            args.num_samples,
            args.max_new_tokens,
            args.device,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            use_cache=not args.no_cache,
            compile=args.compile,
            stop_at_eot=args.stop_at_eot,
            write=print_flushed if streaming else None,
        )
    if streaming:
        print()
    else:
        for i, text in enumerate(texts, start=1):
            print(f"sample {i}: {text}")


if __name__ == "__main__":
    run_cli(main)
