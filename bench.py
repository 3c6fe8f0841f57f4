"""Speed figures, measured side by side in one run (these machines are noisy; compare ratios, not absolutes).

    python bench.py data                      # tokenizer pipeline vs single-thread encode_ordinary; loader ms/batch
    python bench.py generate --model gpt2     # KV-cache vs cache-free sampling, tokens/s
"""

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from common import ArgumentParser, pick_device, positive_int, run_cli, synchronize

ROOT = Path(__file__).resolve().parent


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of fn over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_data(args) -> None:
    from dataloader import ShardLoader
    from fineweb import Source, build_shards, expand_inputs, iter_local_documents
    from tokenizer import get_tokenizer

    files = expand_inputs(args.input or [str(ROOT / "assets" / "shakespeare")])
    docs = list(iter_local_documents(files, "text")) * args.copies  # enough text to amortise the pool start-up
    enc = get_tokenizer()
    t0 = time.perf_counter()
    n_tokens = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    single = n_tokens / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        import json

        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        t0 = time.perf_counter()
        build_shards(Source("local", files=[str(corpus)]), Path(tmp) / "out", "b", shard_size=10_000_000,
                     workers=args.workers)
        pipeline = n_tokens / (time.perf_counter() - t0)
        loader = ShardLoader(Path(tmp) / "out", "train", args.batch_size, args.seq_len)
        per_batch = median_time(loader.next_batch, 50, torch.device("cpu"))
    print(f"tokens: {n_tokens:,} ({len(docs)} documents)")
    print(f"single-thread encode_ordinary: {single:,.0f} tokens/s")
    print(f"fineweb.py pipeline, {args.workers} workers: {pipeline:,.0f} tokens/s = {pipeline / single:.2f}x "
          f"single-thread (goal >= {0.8 * args.workers:.1f}x)")
    print(f"ShardLoader.next_batch B={args.batch_size} T={args.seq_len}: {1000 * per_batch:.3f} ms/batch")


def bench_generate(args) -> None:
    from checkpoint import load_model
    from model import GPT, config_from_preset

    device = pick_device(args.device)
    torch.manual_seed(0)
    model = (load_model(args.init, device) if args.init else GPT(config_from_preset(args.model)).to(device)).eval()
    prompt = torch.randint(0, 50257, (args.batch, 8), device=device)
    rows = []
    for use_cache in (True, False):
        seconds = median_time(lambda: model.generate(prompt, args.tokens, temperature=0, use_cache=use_cache),
                              args.repeats, device)
        rows.append((use_cache, args.batch * args.tokens / seconds))
    print(f"{args.init or args.model} on {device}, batch {args.batch}, {args.tokens} new tokens, greedy:")
    for use_cache, tps in rows:
        print(f"  {'KV cache  ' if use_cache else 'cache-free'}: {tps:,.1f} tokens/s")
    print(f"  speed-up: {rows[0][1] / rows[1][1]:.1f}x")


def main(argv: Optional[list[str]] = None) -> None:
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="tokenizer and loader throughput")
    data.add_argument("--input", nargs="+", help="text files (default: the bundled corpus)")
    data.add_argument("--copies", type=positive_int, default=8, help="repeat the documents this many times")
    data.add_argument("--workers", type=positive_int, default=2)
    data.add_argument("--batch-size", type=positive_int, default=16)
    data.add_argument("--seq-len", type=positive_int, default=1024)
    gen = sub.add_parser("generate", help="sampling throughput with and without the KV cache")
    gen.add_argument("--model", default="gpt2", help="a model.PRESETS shape with random weights")
    gen.add_argument("--init", default="", help="or real weights: checkpoint, HF directory or hub name")
    gen.add_argument("--tokens", type=positive_int, default=256)
    gen.add_argument("--batch", type=positive_int, default=1)
    gen.add_argument("--repeats", type=positive_int, default=3)
    gen.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    {"data": bench_data, "generate": bench_generate}[args.what](args)


if __name__ == "__main__":
    run_cli(main)
