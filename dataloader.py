"""(x, y) batches from pretokenized uint16 shards, memory-mapped, split across ranks, resumable.

The shards of one split are read as one continuous token stream, in shard order (or a seeded per-epoch
permutation of it). Each step takes a round of `world_size` consecutive windows of B*T tokens (+1 for the
shifted targets); rank r takes the r-th. Windows run across shard boundaries and on into the next epoch, so no
usable tail of any shard is skipped and every rank switches shards at the same point.
"""

import re
from pathlib import Path
from typing import Union

import numpy as np
import torch

from tokenizer import N_VOCAB

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
        seed: int = 1337,
        vocab_size: int = N_VOCAB,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.split, self.B, self.T, self.rank, self.world_size = split, B, T, rank, world_size
        self.device = torch.device(device)
        self.shuffle, self.seed, self.vocab_size = shuffle, seed, vocab_size
        self.paths = list_shards(data_dir, split)
        self.shards = [load_shard(p) for p in self.paths]
        self._checked: set[int] = set()
        self.num_tokens = sum(len(s) for s in self.shards)  # in the split
        window = B * T * world_size + 1
        if self.num_tokens < window:
            raise ValueError(
                f"the '{split}' split of {data_dir} has {self.num_tokens:,} tokens, shorter than one window of "
                f"B*T*world_size+1 = {window:,}; use a smaller batch or more data"
            )
        self.reset()

    def reset(self) -> None:
        """Back to the first token of epoch 0."""
        self.epoch, self.shard, self.position = 0, 0, 0
        self._check_tokens(self._order(0)[0])

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()

    def _check_tokens(self, i: int) -> None:
        """Every id < vocab_size; one vectorised pass the first time a shard is used."""
        if i not in self._checked:
            biggest = int(self.shards[i].max())
            if biggest >= self.vocab_size:
                raise ValueError(f"{self.paths[i]}: token id {biggest} >= vocab_size {self.vocab_size}")
            self._checked.add(i)

    def _walk(
        self, epoch: int, shard: int, position: int, n: int, read: bool = True
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Read (or with read=False only skip) n tokens of the stream from (epoch, shard, position); also return
        the location just after them."""
        pieces = []
        while True:
            index = self._order(epoch)[shard]
            tokens = self.shards[index]
            take = min(n, len(tokens) - position)
            if read:
                self._check_tokens(index)
                pieces.append(tokens[position : position + take])
            n -= take
            position += take
            if position == len(tokens):
                epoch, shard, position = (epoch + 1, 0, 0) if shard + 1 == len(self.shards) else (epoch, shard + 1, 0)
            if n == 0:
                return (np.concatenate(pieces) if read else None), (epoch, shard, position)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and next-token targets, each (B, T) int64 on the loader's device."""
        BT = self.B * self.T
        start = (self.epoch, self.shard, self.position)
        _, mine = self._walk(*start, self.rank * BT, read=False)
        window, _ = self._walk(*mine, BT + 1)
        _, (self.epoch, self.shard, self.position) = self._walk(*start, BT * self.world_size, read=False)
        buf = torch.from_numpy(window.astype(np.int64))  # (B*T + 1,)
        x = buf[:-1].view(self.B, self.T)  # (B, T)
        y = buf[1:].view(self.B, self.T)  # (B, T)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, int]:
        """Where the next round starts; the same on every rank, so a run may resume on another world size."""
        return {"epoch": self.epoch, "shard": self.shard, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, shard, position = int(state["epoch"]), int(state["shard"]), int(state["position"])
        if not 0 <= shard < len(self.shards) or not 0 <= position < len(self.shards[self._order(epoch)[shard]]):
            raise ValueError(f"data loader state {state} does not fit the shards in {self.paths[0].parent}")
        self.epoch, self.shard, self.position = epoch, shard, position
