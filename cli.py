"""The command-line conventions of every script: one-line errors, exit codes, defaults shown once in -h, one family
of value checks, flags made from a dataclass's fields (with presets), and SIGINT/SIGTERM recorded as a request to
stop rather than raised mid-step.

Kept free of torch so that fineweb.py and its tokenizer processes start fast.
"""

import argparse
import dataclasses
import os
import signal
import sys
import typing
from typing import Any, Callable, NoReturn, Optional, TypeVar, Union


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


# ----------------------------------------------------------------------------------------------------------------
# Value checks: each takes a value and returns None, or the problem in words. They check a dataclass field (see
# option) or, through `checked`, a flag as argparse reads it.

Check = Callable[[Any], Optional[str]]


def positive(value: float) -> Optional[str]:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: float) -> Optional[str]:
    return None if value >= 0 else f"must be >= 0, got {value}"  # also refuses nan


def fraction(value: float) -> Optional[str]:
    return None if 0 <= value <= 1 else f"must be in [0, 1], got {value}"


def checked(kind: type, check: Check) -> Callable[[str], Any]:
    """An argparse type: the text read as `kind`, refused with the check's problem."""

    def read(text: str) -> Any:
        value = kind(text)
        if problem := check(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    read.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return read


positive_int = checked(int, positive)
non_negative_int = checked(int, non_negative)
non_negative_float = checked(float, non_negative)


# ----------------------------------------------------------------------------------------------------------------
# Flags from a dataclass: each field is a flag (--field-name) with its help and check, and a preset is a set of
# other defaults. Not transformers' HfArgumentParser: it takes defaults from the dataclass only (no presets, so no
# `--preset X -h`), hands field metadata to argparse as they are (no checks), adds a --field_name twin of every flag
# and would import transformers into this torch-free module.

Config = TypeVar("Config")


def option(default: Any, help: str, check: Optional[Check] = None, **argparse_settings) -> Any:
    """A dataclass field that is a flag: its default, its help, a check of its value and other argparse settings."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "argparse": argparse_settings})


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_fields(config: Any) -> None:
    """Raise ValueError, naming the flag, for the first field whose check finds a problem (None is never checked)."""
    for f in dataclasses.fields(config):
        value, check = getattr(config, f.name), f.metadata.get("check")
        if check is not None and value is not None and (problem := check(value)):
            raise ValueError(f"{flag(f.name)} {problem}")


def dataclass_parser(defaults: Any, presets: dict[str, dict[str, Any]], description: str) -> ArgumentParser:
    """--preset and one flag per field of `defaults`' dataclass, with `defaults`' values as the defaults, so -h shows
    a preset's values."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--preset", default=next(iter(presets)), choices=presets,
                        help="a set of defaults that the other flags override; -h with it shows its values")
    for f in dataclasses.fields(defaults):
        settings = dict(f.metadata["argparse"])
        value_type = next((t for t in typing.get_args(f.type) if t is not type(None)), f.type)  # Optional[X] -> X
        if value_type is bool:
            settings.setdefault("action", argparse.BooleanOptionalAction)  # --x and --no-x, unless said otherwise
        else:
            settings.setdefault("type", value_type)
            if "choices" not in settings:
                settings["metavar"] = f.name.upper()
        parser.add_argument(flag(f.name), default=getattr(defaults, f.name), help=f.metadata["help"], **settings)
    return parser


def parse_dataclass(config_type: type[Config], presets: dict[str, dict[str, Any]], argv: Optional[list[str]],
                    description: str, check: Callable[[Config], None],
                    adjust: Optional[Callable[[Config, set[str]], None]] = None) -> Config:
    """--preset picks the defaults (the first preset when not given), then every flag given overrides its field;
    adjust(config, the names of the fields given), if any, may then change the others; a ValueError of `check` on
    the result is a usage error (exit code 2)."""
    preset_parser = ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset", default=next(iter(presets)), choices=presets)
    preset = preset_parser.parse_known_args(argv)[0].preset
    parser = dataclass_parser(config_type(**presets[preset]), presets, description)
    values = vars(parser.parse_args(argv))
    values.pop("preset")
    config = config_type(**values)
    if adjust is not None:
        adjust(config, given_fields(parser, argv))
    try:
        check(config)
    except ValueError as e:
        parser.error(str(e))
    return config


def given_fields(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> set[str]:
    """The fields whose flags this command line gives (abbreviated or not), as against those left at their defaults.
    Parses again with every default suppressed: the parser is spent afterwards."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0])) - {"preset"}


# ----------------------------------------------------------------------------------------------------------------
# Ends and stops


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

    def ending(self, where: str, shown: bool = True) -> Exit:
        """The Exit of a process this request stopped: 'stopped by SIGINT {where}' (on stderr if `shown`; the other
        ranks exit with the same code, silently)."""
        return Exit(f"stopped by {self.cause} {where}" if shown else "", self.exit_code)

    def on_signal(self, signum: int, frame=None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        else:  # os.write, not print: a handler may run while the main thread is inside a print
            os.write(2, f"{signal.Signals(signum).name} again: already stopping at the next step boundary\n".encode())

    def __enter__(self) -> "StopRequest":
        """Install the handlers (main thread only; elsewhere signals keep their behaviour)."""
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self.on_signal)
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
