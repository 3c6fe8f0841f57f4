"""Tokenize FineWeb-Edu (or local text) into GPT-2 token shards for train_gpt2.py.

    python fineweb.py                                   # FineWeb-Edu sample-10BT -> edu_fineweb10B/
    python fineweb.py --streaming                       # the same, without keeping the parquet files
    python fineweb.py --input 'books/*.txt' --out data/books --prefix books

Each shard is a 1-D uint16 .npy of --shard-size tokens (the last one shorter), named
{prefix}_{split}_{index:06d}.npy with one running index; every document starts with <|endoftext|>. The first
--val-tokens tokens form the val split, the rest train: with the defaults, shard 000000 is val and 000001... are
train, exactly build-nanogpt's layout. Output is deterministic, whatever --workers. A run that stops is resumed by
running the same command again: finished shards are kept and the result is byte-identical to an unbroken run.
"""

import glob
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from cli import UsageError, first_line, non_negative, option, parse_dataclass, positive, run_cli
from files import atomic_file, no_empty_directory_on_failure, remove_stale_temporaries
from network import hub_endpoint, offline_switch, unreachable
from tokenizer import EOT_ID, VOCAB_SHA256, get_tokenizer

BUNDLED_CORPUS = Path(__file__).resolve().parent / "assets" / "shakespeare"  # the quickstart's and bench.py's text
QUICKSTART_DATA = "data/shakespeare"  # where the quickstart tokenizes it on first use
FINEWEB_DATASET = "HuggingFaceFW/fineweb-edu"
FINEWEB_CONFIG = "sample-10BT"
SHARD_SIZE = 100_000_000
PROGRESS_DELAY = 0.5  # seconds before the tokenizing progress bar appears
MANIFEST = "manifest.json"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
BYTES_PER_TOKEN = 4  # GPT-2 BPE on English averages ~4 bytes per token; sizes the default local val split
# A pool task is a run of documents up to these sizes: large enough to amortise the pickling, small enough to
# keep every worker busy when documents are long (a book) or few.
DOCS_PER_TASK = 64
CHARS_PER_TASK = 1 << 18


@dataclass
class Source:
    """Where the documents come from; part of the manifest, so a resume can check it is the same input."""

    kind: str  # "hub" or "local"
    dataset: Optional[str] = None
    config: Optional[str] = None
    split: Optional[str] = None
    files: list[str] = field(default_factory=list)
    text_field: str = "text"


def expand_inputs(patterns: list[str]) -> list[str]:
    """Sorted files matching the paths/globs (a directory means the supported files inside it)."""
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = [str(p) for p in sorted(Path(pattern).rglob("*")) if p.suffix in LOCAL_SUFFIXES]
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise FileNotFoundError(f"--input {pattern}: no files match")
        for path in matches:
            if Path(path).suffix not in LOCAL_SUFFIXES:
                raise ValueError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
        files.extend(matches)
    return files


def iter_local_documents(files: list[str], text_field: str) -> Iterator[str]:
    """.txt: the whole file is one document; .jsonl: one per line; .parquet: one per row."""
    for path in files:
        suffix = Path(path).suffix
        if suffix == ".txt":
            yield Path(path).read_text(encoding="utf-8", errors="replace")
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line_number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_number}: bad JSON ({e.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise ValueError(f"{path}:{line_number}: no string field {text_field!r}")
                    yield record[text_field]
        else:
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            if text_field not in parquet.schema_arrow.names:
                raise ValueError(f"{path}: no column {text_field!r} (columns: {parquet.schema_arrow.names})")
            for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
                yield from (text or "" for text in batch.column(0).to_pylist())


def iter_hub_documents(source: Source, streaming: bool, start: int) -> Iterator[str]:
    """Documents of a Hugging Face dataset from index `start` on."""
    if not offline_switch() and (reason := unreachable(hub_endpoint())):  # with a switch set: the local cache
        raise OSError(f"cannot reach the Hugging Face hub for {source.dataset}: {reason}. Offline? Use --input "
                      f"with local .txt/.jsonl/.parquet files")
    from datasets import load_dataset

    try:
        ds = load_dataset(source.dataset, name=source.config, split=source.split, streaming=streaming)
    except Exception as e:  # offline, unknown dataset or config ...
        raise OSError(
            f"could not load {source.dataset} ({source.config}) from the Hugging Face hub: {first_line(e)}. "
            f"Offline? Use --input with local .txt/.jsonl/.parquet files"
        ) from None
    if start:
        ds = ds.skip(start) if streaming else ds.select(range(start, len(ds)))
    for record in ds:
        yield record[source.text_field]


def iter_documents(source: Source, streaming: bool = False, start: int = 0) -> Iterator[str]:
    if source.kind == "hub":
        return iter_hub_documents(source, streaming, start)
    return itertools.islice(iter_local_documents(source.files, source.text_field), start, None)


def tokenize_document(text: str) -> np.ndarray:
    """<|endoftext|> then the document's tokens, as uint16."""
    # encode_to_numpy with no special tokens allowed is encode_ordinary, minus the Python list of ints it builds
    tokens = get_tokenizer().encode_to_numpy(text, allowed_special=set(), disallowed_special=())  # uint32
    if tokens.size and tokens.max() >= 2**16:
        raise ValueError(f"token id {tokens.max()} does not fit in uint16")
    out = np.empty(len(tokens) + 1, dtype=np.uint16)
    out[0] = EOT_ID
    out[1:] = tokens
    return out


def tokenize_documents(texts: list[str]) -> list[np.ndarray]:
    return [tokenize_document(text) for text in texts]


def task_batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in documents:
        batch.append(text)
        chars += len(text)
        if len(batch) == DOCS_PER_TASK or chars >= CHARS_PER_TASK:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenized_stream(documents: Iterable[str], workers: int) -> Iterator[np.ndarray]:
    """Token arrays in document order, tokenized by a pool of `workers` processes (in-process for 1)."""
    batches = task_batches(documents)
    if workers == 1:
        for batch in batches:
            yield from tokenize_documents(batch)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        for arrays in pool.imap(tokenize_documents, batches, chunksize=1):
            yield from arrays


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}_{split}_{index:06d}.npy"


class HashingWriter:
    """A file wrapper that hashes what is written through it, so a shard is never held twice in memory."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def write_shard(path: Path, tokens: np.ndarray) -> str:
    """Atomically write one shard (temporary file, then rename); return the file's SHA-256."""
    with atomic_file(path) as f:
        writer = HashingWriter(f)
        np.save(writer, tokens, allow_pickle=False)
    return writer.sha256.hexdigest()


def write_manifest(out_dir: Path, manifest: dict) -> None:
    with atomic_file(out_dir / MANIFEST) as f:
        f.write((json.dumps(manifest, indent=1) + "\n").encode())


SETTING_FLAGS = {"files": "--input", "text_field": "--text-field", "dataset": "--dataset", "config": "--config",
                 "split": "--split", "prefix": "--prefix", "shard_size": "--shard-size", "val_tokens": "--val-tokens"}


def settings_differences(old: dict, new: dict) -> list[str]:
    """'--flag: OLD before, NEW now' for each setting that differs (the source's fields flattened)."""
    def flat(settings: dict) -> dict:
        return {**{k: v for k, v in settings.items() if k != "source"}, **settings.get("source", {})}

    old, new = flat(old), flat(new)
    return [f"{SETTING_FLAGS.get(key, key)}: {old.get(key)!r} before, {new.get(key)!r} now"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def start_or_resume(out_dir: Path, settings: dict) -> dict:
    """The manifest to continue from: a fresh one, or the one left by an earlier run with the same settings. An
    unfinished run with other settings is started over (its shards replaced); a finished one is refused."""
    path = out_dir / MANIFEST
    ours = re.compile(rf"^({re.escape(settings['prefix'])}_.+\.npy|{re.escape(MANIFEST)})$")
    remove_stale_temporaries(out_dir, ours)  # what a killed run was writing
    if path.exists():
        manifest = json.loads(path.read_text())
        if differences := settings_differences(manifest.get("settings", {}), settings):
            if manifest.get("complete"):
                raise ValueError(f"{out_dir} holds a finished tokenization with other settings "
                                 f"({'; '.join(differences)}); choose another --out or delete that directory")
            print(f"{out_dir}: an unfinished run with other settings ({'; '.join(differences)}) is started over")
            for shard in manifest["shards"]:
                (out_dir / shard["name"]).unlink(missing_ok=True)
            path.unlink()
            return start_or_resume(out_dir, settings)
        for shard in manifest["shards"]:
            if not (out_dir / shard["name"]).is_file():
                raise ValueError(f"{out_dir / shard['name']} is listed in {path} but missing; delete {out_dir}")
        return manifest
    if any(out_dir.glob(f"{settings['prefix']}_*.npy")):
        raise ValueError(f"{out_dir} has {settings['prefix']}_*.npy shards but no {MANIFEST}; choose another --out")
    return {"settings": settings, "shards": [], "next": {"document": 0, "offset": 0}, "complete": False}


def build_shards(source: Source, out_dir: Path, prefix: str = "edufineweb", *, shard_size: int = SHARD_SIZE,
                 val_tokens: Optional[int] = None, workers: int = 1, streaming: bool = False) -> dict:
    """Tokenize the source into shards in out_dir (resuming an earlier run); return the finished manifest."""
    settings = {
        "source": asdict(source),
        "prefix": prefix,
        "shard_size": shard_size,
        "val_tokens": default_val_tokens(source, shard_size) if val_tokens is None else val_tokens,
        "dtype": "uint16",
        "eot": EOT_ID,
        "tokenizer": f"gpt2 (tiktoken ranks sha256 {VOCAB_SHA256})",
    }
    with no_empty_directory_on_failure(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        return write_shards(source, out_dir, settings, workers, streaming)


def tokenize_bundled_corpus(out_dir: Path, prefix: str) -> dict:
    """The bundled Shakespeare plays as shards in out_dir, in one process."""
    return build_shards(Source("local", files=expand_inputs([str(BUNDLED_CORPUS)])), out_dir, prefix, workers=1)


def is_quickstart_data(data_dir: str) -> bool:
    """Whether a data directory is the quickstart's, however it is written (./data/shakespeare, an absolute
    path ...): the one that the bundled corpus is tokenized into on first use."""
    return Path(data_dir).resolve() == Path(QUICKSTART_DATA).resolve()


def bundled_corpus_missing(data_dir: str) -> bool:
    """Whether a run on data_dir must first tokenize the bundled corpus there: the quickstart's, not yet made."""
    return is_quickstart_data(data_dir) and not any(Path(data_dir).glob("*_train_*.npy"))


def write_shards(source: Source, out_dir: Path, settings: dict, workers: int, streaming: bool) -> dict:
    """build_shards' work, once out_dir exists: `settings` are the manifest's."""
    shard_size, val_tokens = settings["shard_size"], settings["val_tokens"]
    manifest = start_or_resume(out_dir, settings)
    if manifest["complete"]:
        print(f"{out_dir}: already complete ({len(manifest['shards'])} shards)")
        return manifest

    written = sum(s["tokens"] for s in manifest["shards"])  # tokens in finished shards

    def capacity() -> int:  # the next shard: val until val_tokens are written, then train
        return min(shard_size, val_tokens - written) if written < val_tokens else shard_size

    buffer = np.empty(capacity(), dtype=np.uint16)
    fill = 0
    first_doc, skip = manifest["next"]["document"], manifest["next"]["offset"]
    documents = iter_documents(source, streaming, first_doc)
    doc_index = first_doc - 1
    # shown from its first half second on (an input refused at once prints its one line alone), and closed on an
    # error too, so the error's line starts on a line of its own
    with tqdm(desc=f"tokenizing -> {out_dir}", unit="tok", unit_scale=True, initial=written, dynamic_ncols=True,
              total=expected_tokens(source), delay=PROGRESS_DELAY) as bar:
        for doc_index, tokens in enumerate(tokenized_stream(documents, workers), start=first_doc):
            pos = skip if doc_index == first_doc else 0  # the start of a resumed document went to the last shard
            while pos < len(tokens):
                take = min(len(buffer) - fill, len(tokens) - pos)
                buffer[fill : fill + take] = tokens[pos : pos + take]
                fill, pos = fill + take, pos + take
                bar.update(take)
                if fill == len(buffer):
                    resume_at = {"document": doc_index, "offset": pos} if pos < len(tokens) else \
                        {"document": doc_index + 1, "offset": 0}
                    written = finish_shard(out_dir, manifest, buffer, written, resume_at)
                    buffer, fill = np.empty(capacity(), dtype=np.uint16), 0
    if fill:
        written = finish_shard(out_dir, manifest, buffer[:fill], written, {"document": doc_index + 1, "offset": 0})
    if written == 0:
        raise ValueError("the input holds no documents")
    if written <= val_tokens:
        raise ValueError(
            f"all {written:,} tokens went to val (--val-tokens {val_tokens:,}); nothing is left for train"
        )
    manifest["complete"] = True
    manifest["total_tokens"] = written
    manifest["documents"] = doc_index + 1
    write_manifest(out_dir, manifest)
    return manifest


def finish_shard(out_dir: Path, manifest: dict, tokens: np.ndarray, written: int, resume_at: dict) -> int:
    """Write a full buffer as the next shard and record where a resumed run picks up (resume_at: the document and
    the offset in it); return the tokens written so far."""
    index = len(manifest["shards"])
    split = "val" if written < manifest["settings"]["val_tokens"] else "train"
    name = shard_name(manifest["settings"]["prefix"], split, index)
    digest = write_shard(out_dir / name, tokens)
    manifest["shards"].append({"name": name, "split": split, "tokens": int(len(tokens)), "sha256": digest})
    manifest["next"] = resume_at
    write_manifest(out_dir, manifest)
    return written + len(tokens)


def expected_tokens(source: Source) -> Optional[int]:
    """The progress bar's total where the dataset states its size: FineWeb's sample-NBT configs hold ~N billion
    GPT-2 tokens. Local text has no stated size, so its bar counts without a total."""
    m = re.fullmatch(r"sample-(\d+)BT", source.config or "")
    return int(m.group(1)) * 10**9 if source.kind == "hub" and m else None


def default_val_tokens(source: Source, shard_size: int) -> int:
    """FineWeb: one whole shard (build-nanogpt's layout). Local text: about a tenth, estimated from file sizes."""
    if source.kind == "hub":
        return shard_size
    total_bytes = sum(os.path.getsize(f) for f in source.files)
    return max(1, min(shard_size, total_bytes // BYTES_PER_TOKEN // 10))


@dataclass
class FinewebConfig:
    """Every field is a flag (--field-name), in its group of -h."""

    input: Optional[list[str]] = option(None, "local .txt (one document per file), .jsonl or .parquet files "
                                              "instead of FineWeb-Edu", group="source", nargs="+",
                                        metavar="PATH_OR_GLOB")
    text_field: str = option("text", "field/column holding the text (.jsonl, .parquet, hub)", group="source")
    dataset: str = option(FINEWEB_DATASET, "Hugging Face dataset (without --input)", group="source")
    config: str = option(FINEWEB_CONFIG, "its configuration", group="source")
    split: str = option("train", "its split", group="source")
    streaming: bool = option(False, "stream the dataset; keep no parquet files", group="source",
                             action="store_true")
    out: str = option("edu_fineweb10B", "output directory", group="shards")
    prefix: str = option("edufineweb", "shard file name prefix", group="shards")
    shard_size: int = option(SHARD_SIZE, "tokens per shard", positive, group="shards")
    val_tokens: Optional[int] = option(None, "tokens for the val split (when not given: one shard for FineWeb, "
                                             "~10% of local input)", non_negative, group="shards")
    workers: int = option(max(1, (os.cpu_count() or 2) - 1), "tokenizer processes", positive, group="performance")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_dataclass(FinewebConfig, None, argv, first_line(__doc__))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a directory")
    if args.input:
        source = Source(kind="local", files=expand_inputs(args.input), text_field=args.text_field)
    else:
        source = Source(kind="hub", dataset=args.dataset, config=args.config, split=args.split,
                        text_field=args.text_field)
    manifest = build_shards(source, Path(args.out), args.prefix, shard_size=args.shard_size,
                            val_tokens=args.val_tokens, workers=args.workers, streaming=args.streaming)
    splits = {s: sum(x["tokens"] for x in manifest["shards"] if x["split"] == s) for s in ("val", "train")}
    print(f"{args.out}: {len(manifest['shards'])} shards, {splits['val']:,} val + {splits['train']:,} train tokens")


if __name__ == "__main__":
    run_cli(main)
