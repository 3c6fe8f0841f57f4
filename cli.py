"""The command-line conventions of every script: one-line errors, exit codes, defaults shown once in -h, one family
of value checks, flags made from a dataclass's fields (with presets), and SIGINT/SIGTERM recorded as a request to
stop rather than raised mid-step.

Kept free of torch so that fineweb.py and its tokenizer processes start fast.
"""

import argparse
import contextlib
import dataclasses
import difflib
import errno
import io
import os
import signal
import sys
import typing
from typing import Any, Callable, Iterator, NoReturn, Optional, TypeVar, Union


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
    """argparse with one-line usage errors (exit code 2; under torchrun said by rank 0 alone), the nearest flag
    suggested for an unknown one, no abbreviated flags (--max-step is not --max-steps) and defaults shown in -h."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message += self.suggestion(message.removeprefix("unrecognized arguments: ").split())
        self.exit(2, f"{self.prog}: error: {message}\n" if is_master_process() else None)

    def suggestion(self, unknown: list[str]) -> str:
        """'; did you mean --max-steps?' for the first unknown flag that is close to one of ours."""
        flags = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        for word in (w.split("=", 1)[0] for w in unknown if w.startswith("--")):
            longer = sorted((f for f in flags if f.startswith(word)), key=len)  # what an abbreviation meant
            close = longer or difflib.get_close_matches(word, flags, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


def is_master_process() -> bool:
    """Rank 0 of a torchrun job (RANK, which torchrun sets), or a process on its own: the one that speaks for all
    where every rank would say the same."""
    return os.environ.get("RANK", "0") == "0"


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


SEED_MAX = 2**32 - 1  # the largest seed numpy takes (torch takes up to 2**64 - 1)


def seed_range(value: int) -> Optional[str]:
    return None if 0 <= value <= SEED_MAX else f"must be in 0..{SEED_MAX} (numpy's seeds), got {value}"


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
seed_int = checked(int, seed_range)


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
    """SIGINT (Ctrl-C), SIGTERM (how Slurm, Kubernetes and torchrun ask a job to end) and SIGHUP (a hang-up: the
    terminal or SSH session went away) recorded instead of raised, so that a run can stop at a step boundary of its
    choosing. A signal ignored when the process started stays ignored (SIGINT in a script's `cmd &`, SIGHUP under
    nohup), as Python leaves an ignored SIGINT; SIGTERM always stops. With watch_parent, the end of the parent process
    (a torchrun agent that was killed) is a stop request too, noticed whenever `requested` is read. Later signals only
    say that the stop is under way: nothing in progress, a checkpoint being written least of all, is interrupted."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, watch_parent: bool = False):
        self.cause: Optional[str] = None  # what asked to stop: a signal's name, or the parent's end
        self.exit_code = 128 + signal.SIGTERM  # 128 + the signal's number, as a shell reports a process it ended
        self._parent = os.getppid() if watch_parent else None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        if self.cause is None and self._parent is not None and os.getppid() != self._parent:
            self.cause = f"the end of its parent process (pid {self._parent}, torchrun's agent)"
        return self.cause is not None

    def ending(self, where: str, shown: bool = True) -> Exit:
        """The Exit of a process this request stopped: 'stopped by SIGINT {where}' (on stderr if `shown`; the other
        ranks exit with the same code, silently). On a rank that received no request itself, the cause is the
        peer's request the ranks agreed on, and the code SIGTERM's."""
        cause = self.cause or "a peer's stop request"
        return Exit(f"stopped by {cause} {where}" if shown else "", self.exit_code)

    def on_signal(self, signum: int, frame=None) -> None:
        if self.cause is None:
            self.cause, self.exit_code = signal.Signals(signum).name, 128 + signum
            return
        try:  # os.write, not print: a handler may run while the main thread is inside a print
            os.write(2, f"{signal.Signals(signum).name} again: already stopping at the next step boundary\n".encode())
        except OSError:  # no console any more: nothing to tell it
            pass

    def __enter__(self) -> "StopRequest":
        """Install the handlers (main thread only; elsewhere signals keep their behaviour)."""
        try:
            for s in self.SIGNALS:
                if s != signal.SIGTERM and signal.getsignal(s) is signal.SIG_IGN:
                    continue
                self._previous[s] = signal.signal(s, self.on_signal)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------------------------------------------
# The console, which a program can outlive


CONSOLE_LISTENERS: list[Callable[[str], None]] = []  # told once, the first time a console stream fails


class Console:
    """sys.stdout or sys.stderr, whose failure to write never ends the program: a reader that went away (a closed
    pipe: `| head`, a killed `| tee`), a dead terminal (EIO), a full disk under a redirect. At the first failure the
    stream's descriptor is pointed at the null device, so that what is still buffered, what C code and child
    processes write there, and Python's own flush at exit all go quietly, and CONSOLE_LISTENERS hear why once (a run
    notes it in its log.txt, which holds every line the console had). Everything but write and flush is the
    stream's."""

    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name
        self.gone: Optional[str] = None  # why it went, once it did: 'stdout: EPIPE'

    def write(self, text: str) -> int:
        if self.gone is None:
            try:
                return self.stream.write(text)
            except OSError as e:
                self.lose(e)
        return len(text)

    def flush(self) -> None:
        if self.gone is None:
            try:
                self.stream.flush()
            except OSError as e:
                self.lose(e)

    def lose(self, error: OSError) -> None:
        self.gone = f"{self.name}: {errno.errorcode.get(error.errno, error.strerror or 'error')}"
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):  # no descriptor of its own (a test's capture)
            pass
        for listener in list(CONSOLE_LISTENERS):
            listener(self.gone)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def guarded_console() -> Iterator[None]:
    """sys.stdout and sys.stderr as Console streams for the life of the context (once: nested, it does nothing)."""
    if isinstance(sys.stdout, Console):
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Console(sys.stdout, "stdout"), Console(sys.stderr, "stderr")
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # here, where a failure is muted, not in Python's flush at exit
        sys.stdout, sys.stderr = saved


def run_cli(main: Callable[[], None]) -> None:
    """Run a script's main with a console it can outlive (see Console); a user mistake (bad path, bad file, bad
    value) or a diverged run (FloatingPointError) is one line on stderr and exit 1; an Exit is its message and code.

    Set GPT_DEBUG=1 to see the full traceback instead.
    """
    prog = os.path.basename(sys.argv[0])
    with guarded_console():
        code = run_main(main, prog)
    if code:
        sys.exit(code)


def run_main(main: Callable[[], None], prog: str) -> int:
    """main's exit code, having said on stderr why it ended, if it did not succeed."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's usage errors and -h
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exit as e:
        if str(e):
            print(f"{prog}: {e}", file=sys.stderr)
        return e.code
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("GPT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
