"""The one way this project writes a file that must never be seen half-written: checkpoints, shards, manifests,
downloads. Torch-free, so tokenizer processes import it cheaply.

A writer fills `NAME.PID.tmp` (one temporary name per process, so concurrent writers never share one), flushes it
to disk, then renames it over NAME: a crash leaves the old file or the new one, never half of one. A temporary file
that a killed writer leaves behind is deleted by `remove_stale_temporaries` when the next run starts.
"""

import contextlib
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Union

TEMPORARY = re.compile(r"^(?P<name>.+?)\.(\d+\.)?tmp$")  # NAME.PID.tmp, and NAME.tmp from older versions


def temporary_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_file(path: Union[str, Path]) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only once complete and on disk; on any exception (a
    KeyboardInterrupt too) the temporary file is removed and `path` keeps what it held before."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def readable_by_all(directory: Union[str, Path]) -> None:
    """Give the files in `directory` the mode a plain open() gives under the umask (0644 under the usual 022): some
    writers (transformers' safetensors shards, written through a private temporary file) leave 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(directory).iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Union[str, Path], pattern: re.Pattern) -> list[Path]:
    """Delete the temporary files and directories (a sharded checkpoint is written as NAME.tmp/) in `directory`
    whose final name matches `pattern`: what a killed writer left."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        m = TEMPORARY.match(path.name)
        if m and pattern.match(m.group("name")):
            remove(path)
            removed.append(path)
    return removed


def remove(path: Path) -> None:
    """Delete a file or a whole directory (a sharded checkpoint), if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def no_empty_directory_on_failure(directory: Union[str, Path]) -> Iterator[Path]:
    """For work that creates `directory` (and its missing parents): if it fails, the directories it created and left
    empty are removed again, so a failed command leaves nothing behind."""
    directory = Path(directory)
    missing = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    try:
        yield directory
    except BaseException:
        for path in missing:
            with contextlib.suppress(OSError):  # not empty, or already gone
                path.rmdir()
        raise


LOCK_NAME = ".lock"  # in a run directory: what the running process holds (see hold_directory)


@contextlib.contextmanager
def hold_directory(directory: Union[str, Path], holder: str) -> Iterator[None]:
    """An exclusive OS-level lock (flock) on `directory`, created if missing, for the life of the context. The
    operating system releases it on any exit, SIGKILL included, so no stale lock is ever left behind. A second
    holder is refused with a BlockingIOError naming the first: `holder` (e.g. "a training run"), its pid, host and
    start, which the holder writes into the lock file. A directory this made and left holding only the lock file is
    removed again. Where flock does not exist (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    directory = Path(directory)
    missing = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holding = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "another process"
            raise BlockingIOError(f"{directory} is in use by {holding}; wait for it to end, or use another "
                                  f"directory") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, started {started})".encode(), 0)
        yield
    finally:
        if missing and [p.name for p in directory.iterdir()] == [LOCK_NAME]:  # made here, and nothing came of it
            lock.unlink(missing_ok=True)
            for path in missing:
                with contextlib.suppress(OSError):
                    path.rmdir()
        os.close(fd)  # closing the descriptor releases the lock
