"""files.py: the one atomic writer, and the clean-up of what a killed writer leaves."""

import os
import re

import pytest

from files import atomic_file, remove_stale_temporaries


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "ckpt_000001.pt"
    with atomic_file(path) as f:
        f.write(b"first")
        # while it is written, only this process's temporary file exists
        assert not path.exists() and [p.name for p in tmp_path.iterdir()] == [f"ckpt_000001.pt.{os.getpid()}.tmp"]
    assert path.read_bytes() == b"first"
    for interruption in (KeyboardInterrupt, OSError):  # Ctrl-C, a full disk ...
        with pytest.raises(interruption):
            with atomic_file(path) as f:
                f.write(b"half of the second")
                raise interruption()
        assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["ckpt_000001.pt"]


def test_stale_temporaries_are_removed_only_for_matching_names(tmp_path):
    names = ["ckpt_000003.pt.1234.tmp", "ckpt_000002.pt.tmp", "ckpt_000004.pt", "other.pt.99.tmp", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, re.compile(r"^ckpt_\d{6}\.pt$"))
    assert sorted(p.name for p in removed) == ["ckpt_000002.pt.tmp", "ckpt_000003.pt.1234.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000004.pt", "notes.tmp", "other.pt.99.tmp"]
    assert remove_stale_temporaries(tmp_path / "absent", re.compile(".*")) == []
