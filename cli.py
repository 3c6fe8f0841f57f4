"""The command-line conventions of every script: one-line errors, exit codes, defaults shown once in -h, and
SIGINT/SIGTERM recorded as a request to stop rather than raised mid-step.

Kept free of torch so that fineweb.py and its tokenizer processes start fast.
"""

import argparse
import os
import signal
import sys
from typing import Callable, NoReturn, Optional, Union


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each flag's default appended once: not where the help already states
    its default, nor where there is none to state (None, an empty string, an on/off switch)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        help_text = action.help or ""
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)  # --x alone: no value
        if "default" in help_text or action.default in (None, "", argparse.SUPPRESS) or not action.option_strings \
                or switch:
            return help_text
        return help_text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2) and defaults shown in -h."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def first_line(text: Union[str, BaseException]) -> str:
    """The first non-empty line of a text or of an exception's message (an exception without one: its type)."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    if lines:
        return lines[0].strip()
    return type(text).__name__ if isinstance(text, BaseException) else ""


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


class Exit(Exception):
    """An end that is not a failure of the program (a run stopped by a signal): `message` on stderr, if any, then
    exit with `code`."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class StopRequest:
    """SIGINT and SIGTERM (Ctrl-C; how Slurm, Kubernetes and torchrun ask a job to end) recorded instead of raised,
    so that a run can stop at a step boundary of its choosing. Later signals only say that the stop is under way:
    nothing in progress, a checkpoint being written least of all, is interrupted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: Optional[signal.Signals] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def cause(self) -> str:
        """The signal this process received or, on a rank that received none, the peer's request the ranks agreed
        on."""
        return self.signal.name if self.signal else "a peer's stop request"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (SIGTERM's for a peer's)."""
        return 128 + (self.signal or signal.SIGTERM)

    def record(self, signum: int, frame=None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        else:  # os.write, not print: a handler may run while the main thread is inside a print
            os.write(2, f"{signal.Signals(signum).name} again: already stopping at the next step boundary\n".encode())

    def __enter__(self) -> "StopRequest":
        """Install the handlers (main thread only; elsewhere signals keep their behaviour)."""
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self.record)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main; a user mistake (bad path, bad file, bad value) or a diverged run (FloatingPointError)
    is one line on stderr and exit 1; an Exit is its message and code.

    Set GPT_DEBUG=1 to see the full traceback instead.
    """
    prog = os.path.basename(sys.argv[0])
    try:
        main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exit as e:
        if str(e):
            print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(e.code)
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("GPT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
