"""Sample text from a checkpoint of ours, a Hugging Face GPT-2 directory, or pretrained GPT-2.

    python sample.py --init gpt2 -p "Hello, I'm a language model," -n 4 -m 32 --top-k 50
"""

from typing import Optional

import torch

from checkpoint import load_model
from cli import ArgumentParser, first_line, non_negative_float, non_negative_int, positive_int, run_cli
from common import add_device_flags, autocast, device_and_dtype
from model import GPT
from tokenizer import EOT_ID, get_tokenizer


def sample_texts(
    model: GPT,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    device: torch.device,
    temperature: float = 1.0,
    top_k: Optional[int] = 50,
    seed: int = 42,
    use_cache: bool = True,
    compile: bool = False,
) -> list[str]:
    """num_samples continuations of prompt (prompt included); an empty prompt starts from <|endoftext|>.

    Runs on `device` (the model's) under the caller's autocast, if any."""
    enc = get_tokenizer()
    ids = enc.encode(prompt, allowed_special="all") if prompt else [EOT_ID]
    idx = torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(0).repeat(num_samples, 1)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        generator=generator,
        use_cache=use_cache,
        vocab_limit=enc.n_vocab,
        compile=compile,
    )
    return [enc.decode(row) for row in out.tolist()]


def parse_args(argv: Optional[list[str]] = None):
    parser = ArgumentParser(description=first_line(__doc__))
    parser.add_argument("--init", default="gpt2", help="checkpoint .pt, Hugging Face GPT-2 directory, or hub name")
    parser.add_argument("-p", "--prompt", default="Hello, I'm a language model,", help="empty: <|endoftext|>")
    parser.add_argument("-n", "--num-samples", type=positive_int, default=4, help="how many samples")
    parser.add_argument("-m", "--max-new-tokens", type=positive_int, default=32, help="tokens to add to each")
    parser.add_argument("--top-k", type=positive_int, default=50, help="sample among the k likeliest tokens")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0 means greedy")
    parser.add_argument("--seed", type=non_negative_int, default=42, help="random seed of the sampler")
    add_device_flags(parser)
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the cached decoding step (CUDA graphs on a GPU); pays off for long samples")
    args = parser.parse_args(argv)
    args.device, args.dtype = device_and_dtype(parser, args.device, args.dtype)
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    model = load_model(args.init, args.device)
    vocab = min(model.config.vocab_size, get_tokenizer().n_vocab)
    if args.top_k > vocab:
        raise ValueError(f"--top-k {args.top_k} is larger than the vocabulary ({vocab})")
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
        )
    for i, text in enumerate(texts, start=1):
        print(f"sample {i}: {text}")


if __name__ == "__main__":
    run_cli(main)
