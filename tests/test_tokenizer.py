import pytest

from tokenizer import EOT_ID, VOCAB_FILE, read_ranks, get_tokenizer


def test_gpt2_ids():
    enc = get_tokenizer()
    assert enc.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID] == [50256]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257


def test_round_trip_of_bundled_text():
    enc = get_tokenizer()
    text = (VOCAB_FILE.parent / "shakespeare" / "hamlet.txt").read_text()[:20000]
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_vocabulary_file_is_checked(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(VOCAB_FILE.read_bytes()[:-10])
    with pytest.raises(ValueError, match="SHA-256"):
        read_ranks(bad)
