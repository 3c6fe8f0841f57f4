"""The one GPT-2 tokenizer of the project, built offline from the bundled BPE ranks."""

import base64
import functools
import hashlib
from pathlib import Path

import tiktoken

VOCAB_FILE = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257
# tiktoken's "gpt2" split pattern: GPT-2's original regex, written with possessive quantifiers.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _read_ranks(path: Path) -> dict[bytes, int]:
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
        mergeable_ranks=_read_ranks(VOCAB_FILE),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )
