"""The one GPT-2 tokenizer of the project, built offline from the bundled BPE ranks."""

import base64
import functools
import hashlib
from pathlib import Path

import tiktoken

VOCAB_FILE = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256  # <|endoftext|>: the last id, after the 50,000 merges and 256 bytes
N_VOCAB = 50257  # GPT-2's vocabulary size
# tiktoken's "gpt2" split pattern: GPT-2's original regex, written with possessive quantifiers.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def read_ranks(path: Path) -> dict[bytes, int]:
    """The BPE ranks of a tiktoken file, refused unless it is byte for byte GPT-2's."""
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != VOCAB_SHA256:
        raise ValueError(f"{path} is not the GPT-2 BPE ranks file (SHA-256 mismatch); restore it from git")
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's tokenizer, identical to tiktoken.get_encoding("gpt2"), with no download."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=read_ranks(VOCAB_FILE),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


# ----------------------------------------------------------------------------------------------------------------
# The same vocabulary in GPT-2's original files (encoder.json/vocab.json + merges.txt), for Hugging Face exports.


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte: printable Latin-1 bytes stand for themselves, the
    other 68 take code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _merge_parts(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: byte-pair encoding with only the merges ranked before it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best = min(
            (ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)
        )
        if best[0] >= rank:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {rank} ({token!r}) is not the merge of two earlier tokens")
    return parts[0], parts[1]


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """vocab.json's {token string: id} and merges.txt's lines, rebuilt from the bundled ranks (ranks are ids)."""
    ranks = read_ranks(VOCAB_FILE)
    to_unicode = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[EOT_TOKEN] = EOT_ID
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _merge_parts(token, rank, ranks)
            merges.append(f"{text(left)} {text(right)}")
    return vocab, merges
