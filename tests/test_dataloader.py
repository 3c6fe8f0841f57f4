"""The shard loader: every token once per epoch across ranks, exact resume, clear errors."""

import numpy as np
import pytest
import torch

from dataloader import ShardLoader, list_shards


def write_shards(tmp_path, lengths, split="train", start_index=0, prefix="t"):
    """Shards whose token at stream position i is i, so positions can be read back from the batches."""
    offset = 0
    for k, n in enumerate(lengths):
        path = tmp_path / f"{prefix}_{split}_{start_index + k:06d}.npy"
        np.save(path, np.arange(offset, offset + n, dtype=np.uint16))
        offset += n
    return offset


def collect_round_robin(loaders, rounds):
    xs, ys = [], []
    for _ in range(rounds):
        for loader in loaders:  # rank order = stream order within a round
            x, y = loader.next_batch()
            xs.append(x.flatten())
            ys.append(y.flatten())
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_token_is_visited_once_per_epoch_across_ranks(tmp_path, world_size):
    total = write_shards(tmp_path, [1000, 1500, 701])
    B, T = 2, 8
    loaders = [ShardLoader(tmp_path, "train", B, T, rank=r, world_size=world_size) for r in range(world_size)]
    rounds = -(-total // (B * T * world_size))  # enough rounds to cover the epoch
    x, y = collect_round_robin(loaders, rounds)
    stream = np.concatenate([np.arange(total), np.arange(total)])  # epoch 0 then epoch 1
    n = rounds * B * T * world_size
    assert np.array_equal(x, stream[:n])  # no token skipped, none twice, none overlapping between ranks
    # targets are the next token; at the end of the epoch that is the first token of the next one
    expected_y = np.concatenate([stream[1 + i : 1 + i + B * T] for i in range(0, n, B * T)])
    assert np.array_equal(y, expected_y)
    assert loaders[0].state_dict()["epoch"] == 1


def test_batches_have_the_right_shape_type_and_targets(tmp_path):
    write_shards(tmp_path, [5000])
    x, y = ShardLoader(tmp_path, "train", 4, 16).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])


def test_shuffle_permutes_shard_order_per_epoch_and_is_seeded(tmp_path):
    lengths = [64] * 6
    total = write_shards(tmp_path, lengths)
    loader = ShardLoader(tmp_path, "train", 1, 64, shuffle=True, seed=5)
    epochs = []
    for _ in range(3):
        firsts = [int(loader.next_batch()[0][0, 0]) // 64 for _ in range(6)]
        epochs.append(firsts)
    assert all(sorted(e) == list(range(6)) for e in epochs)  # every shard once per epoch
    assert len({tuple(e) for e in epochs}) > 1  # a new order each epoch
    again = ShardLoader(tmp_path, "train", 1, 64, shuffle=True, seed=5)
    assert [int(again.next_batch()[0][0, 0]) // 64 for _ in range(6)] == epochs[0]
    assert total == 384
    assert [int(ShardLoader(tmp_path, "train", 1, 64).next_batch()[0][0, 0])] == [0]  # default: no shuffle


def test_state_dict_resume_gives_identical_batches(tmp_path):
    write_shards(tmp_path, [700, 900, 333])
    loader = ShardLoader(tmp_path, "train", 3, 10, rank=1, world_size=2)
    for _ in range(37):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(50)]
    resumed = ShardLoader(tmp_path, "train", 3, 10, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [resumed.next_batch() for _ in range(50)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_splits_are_kept_apart(tmp_path):
    write_shards(tmp_path, [100], split="val", prefix="p")
    write_shards(tmp_path, [300, 300], split="train", start_index=1, prefix="p")
    assert [p.name for p in list_shards(tmp_path, "val")] == ["p_val_000000.npy"]
    assert [p.name for p in list_shards(tmp_path, "train")] == ["p_train_000001.npy", "p_train_000002.npy"]


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        ShardLoader(tmp_path / "nope", "train", 1, 8)
    with pytest.raises(FileNotFoundError, match="no 'train' shards"):
        ShardLoader(tmp_path, "train", 1, 8)
    np.save(tmp_path / "a_train_000000.npy", np.arange(100, dtype=np.int32))
    with pytest.raises(ValueError, match="1-D uint16"):
        ShardLoader(tmp_path, "train", 1, 8)
    np.save(tmp_path / "a_train_000000.npy", np.zeros((10, 10), dtype=np.uint16))
    with pytest.raises(ValueError, match="1-D uint16"):
        ShardLoader(tmp_path, "train", 1, 8)
    np.save(tmp_path / "a_train_000000.npy", np.zeros(16, dtype=np.uint16))
    with pytest.raises(ValueError, match="shorter than one window"):
        ShardLoader(tmp_path, "train", 2, 8)
    bad = np.zeros(1000, dtype=np.uint16)
    bad[500] = 60000
    np.save(tmp_path / "a_train_000000.npy", bad)
    with pytest.raises(ValueError, match="token id 60000 >= vocab_size 50257"):
        ShardLoader(tmp_path, "train", 1, 8)
    (tmp_path / "a_train_000000.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match="not a readable .npy shard"):
        ShardLoader(tmp_path, "train", 1, 8)


def test_bad_token_in_a_later_shard_is_caught_when_reached(tmp_path):
    np.save(tmp_path / "a_train_000000.npy", np.zeros(64, dtype=np.uint16))
    bad = np.zeros(64, dtype=np.uint16)
    bad[3] = 50300
    np.save(tmp_path / "a_train_000001.npy", bad)
    loader = ShardLoader(tmp_path, "train", 1, 32)
    loader.next_batch()
    with pytest.raises(ValueError, match="a_train_000001.npy: token id 50300"):
        loader.next_batch()


def write_documents(tmp_path, shard_lengths, seed=0):
    """Shards of documents, each <|endoftext|> then tokens naming its number (100 + 7 * doc + j, all < EOT), of
    random lengths; a document runs on across shard boundaries as fineweb.py's do. Returns the documents in order,
    each a tuple of tokens."""
    from tokenizer import EOT_ID

    rng = np.random.default_rng(seed)
    stream, documents = [], []
    while len(stream) < sum(shard_lengths):
        doc = (EOT_ID, *(100 + 7 * len(documents) + j for j in range(int(rng.integers(2, 40)))))
        documents.append(doc)
        stream.extend(doc)
    stream = np.array(stream[: sum(shard_lengths)], dtype=np.uint16)
    documents[-1] = documents[-1][: len(stream) - sum(len(d) for d in documents[:-1])]  # the cut last one
    for k, (start, end) in enumerate(zip(np.cumsum([0] + shard_lengths[:-1]), np.cumsum(shard_lengths))):
        np.save(tmp_path / f"d_train_{k:06d}.npy", stream[start:end])
    return documents


def epoch_stream(loaders, num_tokens, B, T):
    """One epoch of the stream as the ranks read it: each round's windows in rank order."""
    rounds = num_tokens // (B * T * len(loaders))
    return collect_round_robin(loaders, rounds)[0]


def split_documents(stream):
    from tokenizer import EOT_ID

    starts = list(np.flatnonzero(stream == EOT_ID)) + [len(stream)]
    return [tuple(int(t) for t in stream[a:b]) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_document_shuffle_reads_every_document_once_per_epoch_in_a_new_order(tmp_path, world_size):
    """Shards of 240, 360 and 120 tokens, documents running across their boundaries (720 tokens = one epoch = 15
    rounds of 48 at every world size here): each epoch reads every document once, whole and contiguous, in a seeded
    order that is not the shards' and differs between epochs; the same stream at every world size."""
    documents = write_documents(tmp_path, [240, 360, 120])
    B, T = 2, 24 // world_size  # B * T * world_size = 48
    loaders = [ShardLoader(tmp_path, "train", B, T, rank=r, world_size=world_size, shuffle_documents=True, seed=3)
               for r in range(world_size)]
    first, second = epoch_stream(loaders, 720, B, T), epoch_stream(loaders, 720, B, T)
    for epoch in (first, second):
        assert sorted(split_documents(epoch)) == sorted(documents)  # each once, whole: a permutation of them
    assert split_documents(first) != documents and split_documents(first) != split_documents(second)
    one = ShardLoader(tmp_path, "train", 2, 12, shuffle_documents=True, seed=3)
    assert np.array_equal(epoch_stream([one], 720, 2, 12), first)  # the same stream at any world size
    other_seed = ShardLoader(tmp_path, "train", 2, 12, shuffle_documents=True, seed=4)
    assert not np.array_equal(epoch_stream([other_seed], 720, 2, 12), first)


def test_document_shuffle_resumes_bitwise_mid_epoch_at_another_world_size(tmp_path):
    write_documents(tmp_path, [240, 360, 120])
    whole = ShardLoader(tmp_path, "train", 2, 8, shuffle_documents=True, seed=3)
    stream = epoch_stream([whole], 720 * 2, 2, 8)  # two epochs
    first = ShardLoader(tmp_path, "train", 2, 8, shuffle_documents=True, seed=3)
    head = collect_round_robin([first], 29)[0]  # past the first epoch's middle: 464 tokens
    state = first.state_dict()
    assert set(state) == {"epoch", "document", "position"} and state["position"] > 0  # mid-document
    two = [ShardLoader(tmp_path, "train", 2, 4, rank=r, world_size=2, shuffle_documents=True, seed=3)
           for r in range(2)]
    for loader in two:
        loader.load_state_dict(state)
    tail = collect_round_robin(two, 90 - 29)[0]
    assert np.array_equal(np.concatenate([head, tail]), stream)
    with pytest.raises(ValueError, match="another data order"):
        ShardLoader(tmp_path, "train", 2, 8, shuffle=True).load_state_dict(state)
