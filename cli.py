"""The command-line conventions of every script: one-line errors, exit codes, defaults shown in -h.

Kept free of torch so that fineweb.py and its tokenizer processes start fast.
"""

import argparse
import os
import sys
from typing import Callable, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2) and defaults shown in -h."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main; a user mistake (bad path, bad file, bad value) or a diverged run (FloatingPointError)
    is one line on stderr and exit 1.

    Set GPT_DEBUG=1 to see the full traceback instead.
    """
    prog = os.path.basename(sys.argv[0])
    try:
        main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("GPT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
