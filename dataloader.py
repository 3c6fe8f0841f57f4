"""(x, y) batches from pretokenized uint16 shards, memory-mapped, split across ranks, resumable.

The shards of one split are read as one continuous token stream, epoch after epoch. An epoch is a sequence of
units that together hold every token of the split once: the shards in order; or the shards in a seeded per-epoch
permutation (shuffle); or the documents, split where each begins at <|endoftext|>, in a seeded per-epoch
permutation across all shards (shuffle_documents: a different order every epoch, as build-nanogpt's PR #52 found
the repeated order of the same shards leaves a periodic pattern in the loss). Each step takes a round of
`world_size` consecutive windows of B*T tokens (+1 for the shifted targets); rank r takes the r-th. Windows run
across unit boundaries and on into the next epoch, so nothing usable is skipped, and where the stream stands
(epoch, unit, position) is the same on every rank: a run resumes at any world size.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from fineweb import MANIFEST  # fineweb.py's record of the shards it wrote, with their SHA-256
from tokenizer import EOT_ID, N_VOCAB

SHARD_PATTERN = re.compile(r"^(?P<prefix>.+)_(?P<split>[a-z]+)_(?P<index>\d{6,})\.npy$")


def list_shards(data_dir: Union[str, Path], split: str) -> list[Path]:
    """The shard files of one split in data_dir, ordered by shard index."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    found = []
    for path in data_dir.iterdir():
        m = SHARD_PATTERN.match(path.name)
        if m and m.group("split") == split:
            found.append((int(m.group("index")), path.name, path))
    if not found:
        raise FileNotFoundError(f"no '{split}' shards (*_{split}_NNNNNN.npy) in {data_dir}")
    return [path for _, _, path in sorted(found)]


# A shard's content digest: whole up to WHOLE_DIGEST_BYTES (the quickstart's, the tests'), else SAMPLED_BLOCKS blocks
# spread over the file (a FineWeb shard of 200 MB: 1 MiB read, not all of it, at every start).
WHOLE_DIGEST_BYTES = 16 * 2**20
SAMPLED_BLOCKS, BLOCK_BYTES = 16, 2**16


def shard_digest(path: Path) -> str:
    """A BLAKE2b digest of a shard's bytes: all of them, or for a large one SAMPLED_BLOCKS evenly spaced blocks."""
    size, digest = path.stat().st_size, hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= WHOLE_DIGEST_BYTES:
            while block := f.read(2**20):
                digest.update(block)
        else:
            for i in range(SAMPLED_BLOCKS):
                f.seek(i * (size - BLOCK_BYTES) // (SAMPLED_BLOCKS - 1))
                digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()


def data_fingerprint(data_dir: Union[str, Path], splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """What a run reads, to tell on resume whether the data changed: per split, each shard's name, size in bytes
    and content digest, and the SHA-256 that fineweb.py's manifest lists for it where there is one."""
    data_dir = Path(data_dir)
    listed = {}
    if (data_dir / MANIFEST).is_file():
        try:
            listed = {s["name"]: s["sha256"] for s in json.loads((data_dir / MANIFEST).read_text())["shards"]}
        except (ValueError, KeyError, TypeError):  # not fineweb.py's: the shards' own digests still tell
            pass
    fingerprint = {}
    for split in splits:
        fingerprint[split] = [{"name": p.name, "bytes": p.stat().st_size, "digest": shard_digest(p),
                               **({"sha256": listed[p.name]} if p.name in listed else {})}
                              for p in list_shards(data_dir, split)]
    return fingerprint


def data_changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the shards differ from a recorded fingerprint (data_fingerprint), one phrase per shard:
    'edufineweb_train_000003.npy replaced (other content)', '... removed', '... added'."""
    changes = []
    for split in sorted(recorded.keys() & now.keys()):
        before, after = ({s["name"]: s for s in shards} for shards in (recorded[split], now[split]))
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if new is None:
                changes.append(f"{name} removed")
            elif old is None:
                changes.append(f"{name} added")
            elif old["bytes"] != new["bytes"]:
                changes.append(f"{name} replaced ({old['bytes']:,} bytes before, {new['bytes']:,} now)")
            elif old["digest"] != new["digest"] or old.get("sha256", new.get("sha256")) != new.get("sha256"):
                changes.append(f"{name} replaced (other content, the same size)")
    return changes


def check_data_dir(data_dir: Union[str, Path], splits: tuple[str, ...]) -> None:
    """--data-dir must hold shards of each split: a ValueError naming the flag, and how to make them, if not."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise ValueError(f"--data-dir {data_dir} is a file, not a directory of shards")
    if not Path(data_dir).exists():
        raise ValueError(f"--data-dir: data directory not found: {data_dir}; make FineWeb-Edu's shards with "
                         f"`python fineweb.py` (README: The real run), or start with the bundled corpus: "
                         f"`python train_gpt2.py --preset quickstart`")
    try:
        for split in splits:
            list_shards(data_dir, split)
    except FileNotFoundError as e:
        raise ValueError(f"--data-dir: {e}") from None


def load_shard(path: Union[str, Path]) -> np.ndarray:
    """Memory-map one shard, checking that it is a non-empty 1-D uint16 array."""
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # bad magic, truncated header, pickled object array ...
        raise ValueError(f"{path} is not a readable .npy shard: {e}") from None
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D uint16 token array, got {tokens.dtype} of shape {tokens.shape}")
    if tokens.size == 0:
        raise ValueError(f"{path}: empty shard")
    return tokens


class ShardLoader:
    def __init__(
        self,
        data_dir: Union[str, Path],
        split: str,
        B: int,
        T: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: Union[str, torch.device] = "cpu",
        shuffle: bool = False,
        shuffle_documents: bool = False,
        seed: int = 1337,
        vocab_size: int = N_VOCAB,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.split, self.B, self.T, self.rank, self.world_size = split, B, T, rank, world_size
        self.device = torch.device(device)
        self.shuffle, self.shuffle_documents, self.seed, self.vocab_size = shuffle, shuffle_documents, seed, vocab_size
        self.paths = list_shards(data_dir, split)
        self.shards = [load_shard(p) for p in self.paths]
        self._checked: set[int] = set()
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])  # where each shard starts in the stream
        self.num_tokens = int(self.offsets[-1])  # in the split
        window = B * T * world_size + 1
        if self.num_tokens < window:
            raise ValueError(
                f"the '{split}' split of {data_dir} has {self.num_tokens:,} tokens, shorter than one window of "
                f"B*T*world_size+1 = {window:,}; use a smaller batch or more data"
            )
        self.doc_starts = self._document_starts() if shuffle_documents else None
        if shuffle_documents and self.num_units == 1:
            raise ValueError(f"the '{split}' split of {data_dir} is one document (no <|endoftext|> after its first "
                             f"token), so shuffling its documents would change nothing: shuffle whole shards "
                             f"instead (--shuffle), or tokenize it with fineweb.py, which begins every document "
                             f"with <|endoftext|>")
        self._orders: dict[int, np.ndarray] = {}  # the unit order of the epochs at hand
        self.reset()

    def _document_starts(self) -> np.ndarray:
        """Where each document begins in the stream: at each <|endoftext|> (and at 0), then the stream's end."""
        starts = [np.flatnonzero(np.asarray(shard) == EOT_ID) + offset
                  for shard, offset in zip(self.shards, self.offsets)]
        return np.unique(np.concatenate([[0], *starts, [self.num_tokens]]).astype(np.int64))

    @property
    def num_units(self) -> int:
        return len(self.doc_starts) - 1 if self.shuffle_documents else len(self.shards)

    def reset(self) -> None:
        """Back to the first token of epoch 0 (its shard's tokens checked now: a bad shard fails at once)."""
        self.epoch, self.unit, self.position = 0, 0, 0
        self._read(self._span(0, 0)[0], self._span(0, 0)[0] + 1)

    def _order(self, epoch: int) -> np.ndarray:
        """The units of an epoch, in order: shards, or a seeded permutation of the shards or the documents."""
        if epoch not in self._orders:
            if not (self.shuffle or self.shuffle_documents):
                order = np.arange(self.num_units)
            else:  # documents: another stream of the generator than the shards', so the two orders never coincide
                streams = [self.seed, epoch] + ([1] if self.shuffle_documents else [])
                order = np.random.default_rng(streams).permutation(self.num_units)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # the epoch before, at most
            self._orders[epoch] = order
        return self._orders[epoch]

    def _span(self, epoch: int, unit: int) -> tuple[int, int]:
        """Where the unit-th unit of an epoch lies in the stream: [start, end)."""
        index = int(self._order(epoch)[unit])
        bounds = self.doc_starts if self.shuffle_documents else self.offsets
        return int(bounds[index]), int(bounds[index + 1])

    def _read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the stream, across shard boundaries, each shard checked on first use."""
        pieces = []
        while start < end:
            i = int(np.searchsorted(self.offsets, start, side="right")) - 1
            self._check_tokens(i)
            stop = min(end, int(self.offsets[i + 1]))
            pieces.append(self.shards[i][start - self.offsets[i] : stop - self.offsets[i]])
            start = stop
        return np.concatenate(pieces)

    def _check_tokens(self, i: int) -> None:
        """Every id < vocab_size; one vectorised pass the first time a shard is used."""
        if i not in self._checked:
            biggest = int(self.shards[i].max())
            if biggest >= self.vocab_size:
                raise ValueError(f"{self.paths[i]}: token id {biggest} >= vocab_size {self.vocab_size}")
            self._checked.add(i)

    def _walk(
        self, epoch: int, unit: int, position: int, n: int, read: bool = True
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Read (or with read=False only skip) n tokens of the stream from (epoch, unit, position); also return
        the location just after them."""
        pieces = []
        while True:
            start, end = self._span(epoch, unit)
            take = min(n, end - start - position)
            if read:
                pieces.append(self._read(start + position, start + position + take))
            n -= take
            position += take
            if position == end - start:
                epoch, unit, position = (epoch + 1, 0, 0) if unit + 1 == self.num_units else (epoch, unit + 1, 0)
            if n == 0:
                return (np.concatenate(pieces) if read else None), (epoch, unit, position)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and next-token targets, each (B, T) int64 on the loader's device."""
        BT = self.B * self.T
        start = (self.epoch, self.unit, self.position)
        _, mine = self._walk(*start, self.rank * BT, read=False)
        window, _ = self._walk(*mine, BT + 1)
        _, (self.epoch, self.unit, self.position) = self._walk(*start, BT * self.world_size, read=False)
        buf = torch.from_numpy(window.astype(np.int64))  # (B*T + 1,)
        x = buf[:-1].view(self.B, self.T)  # (B, T)
        y = buf[1:].view(self.B, self.T)  # (B, T)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, int]:
        """Where the next round starts; the same on every rank, so a run may resume on another world size. The
        unit is a shard, or with shuffle_documents a document ("document" instead of "shard")."""
        return {"epoch": self.epoch, "document" if self.shuffle_documents else "shard": self.unit,
                "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        key = "document" if self.shuffle_documents else "shard"
        if key not in state:
            raise ValueError(f"data loader state {state} is not one of a loader over {key}s: another data order")
        epoch, unit, position = int(state["epoch"]), int(state[key]), int(state["position"])
        fits = 0 <= unit < self.num_units and 0 <= position < np.diff(self._span(epoch, unit))[0]
        if not fits:
            raise ValueError(f"data loader state {state} does not fit the shards in {self.paths[0].parent}")
        self.epoch, self.unit, self.position = epoch, unit, position
