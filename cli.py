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
from pathlib import Path
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


def each(check: "Check") -> "Check":
    """The check of a list: each value's."""
    return lambda values: next((problem for value in values if (problem := check(value))), None)


def in_unit_interval(value: float) -> Optional[str]:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


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
# Flags from a dataclass, the one way every script takes its command line: each field is a flag (--field-name, or a
# positional argument) with its help, its check and its group in -h; a preset is a set of other defaults; with
# config_file, --config FILE (TOML or JSON) sets any of them. Not transformers' HfArgumentParser: it takes defaults
# from the dataclass only (no presets, so no `--preset X -h`), hands field metadata to argparse as they are (no
# checks), adds a --field_name twin of every flag and would import transformers into this torch-free module.

Config = TypeVar("Config")


def option(default: Any, help: str, check: Optional[Check] = None, *, group: str = "",
           aliases: tuple[str, ...] = (), positional: bool = False, **argparse_settings) -> Any:
    """A dataclass field that is a flag: its default, its one-line help, a check of its value, the group -h shows it
    in, other names for it (-n), or a positional argument instead of a flag; other argparse settings as they are."""
    value = dict(default_factory=lambda: list(default)) if isinstance(default, list) else dict(default=default)
    return dataclasses.field(**value, metadata={"help": help, "check": check, "group": group, "aliases": aliases,
                                                "positional": positional, "argparse": argparse_settings})


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_fields(config: Any) -> None:
    """Raise ValueError, naming the flag, for the first field whose check finds a problem (None is never checked)."""
    for f in dataclasses.fields(config):
        value, check = getattr(config, f.name), f.metadata.get("check")
        if check is not None and value is not None and (problem := check(value)):
            raise ValueError(f"{flag(f.name)} {problem}")


def value_type(field_type: Any) -> Any:
    """What argparse reads one value of a field as: Optional[X] -> X, list[X] -> X."""
    args = [t for t in typing.get_args(field_type) if t is not type(None)]
    if typing.get_origin(field_type) is list:
        return args[0]
    return value_type(args[0]) if typing.get_origin(field_type) is Union and args else field_type


def add_fields(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """One argument per field of `defaults`' dataclass, with `defaults`' values as the defaults (so -h shows a
    preset's), in its group of -h where it names one, in the order of the fields."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(defaults):
        meta, settings = f.metadata, dict(f.metadata["argparse"])
        group = meta["group"]
        target = groups.setdefault(group, parser.add_argument_group(group)) if group else parser
        kind = value_type(f.type)
        if kind is bool:
            settings.setdefault("action", argparse.BooleanOptionalAction)  # --x and --no-x, unless said otherwise
        else:
            settings.setdefault("type", kind)
            if "choices" not in settings:
                settings.setdefault("metavar", f.name.upper())
        if meta["positional"]:
            target.add_argument(f.name, help=meta["help"], **settings)
        else:
            short = [name for name in meta["aliases"] if not name.startswith("--")]
            longer = [name for name in meta["aliases"] if name.startswith("--")]
            target.add_argument(*short, flag(f.name), *longer, dest=f.name, default=getattr(defaults, f.name),
                                help=meta["help"], **settings)


def parse_dataclass(config_type: type[Config], presets: Optional[dict[str, dict[str, Any]]],
                    argv: Optional[list[str]], description: str, check: Callable[[Config], None] = check_fields,
                    adjust: Optional[Callable[[Config, set[str]], None]] = None, *,
                    config_file: bool = False) -> Config:
    """The command line as a config_type: the fields' defaults; then, with presets, --preset's (the first preset
    when not given); then, with config_file, those of --config FILE; then every argument given. adjust(config, the
    names of the fields given, on the command line or in the file), if any, may then change the others; a
    ValueError of adjust or of `check` on the result is a usage error (exit code 2)."""
    first = ArgumentParser(add_help=False)
    if presets:
        first.add_argument("--preset", default=None, choices=presets)
    if config_file:
        first.add_argument("--config", default=None)
    known = first.parse_known_args(argv)[0]
    from_file = {}
    if config_file and known.config:
        try:
            from_file = read_config_file(Path(known.config), config_type, presets)
        except ValueError as e:
            first.error(str(e))
    preset = (known.preset or from_file.pop("preset", None) or next(iter(presets))) if presets else None
    from_file.pop("preset", None)
    defaults = dict(presets[preset]) if presets else {}
    parser = ArgumentParser(description=description)
    if presets:
        parser.add_argument("--preset", default=next(iter(presets)), choices=presets,
                            help="a set of defaults that the other flags override; -h with it shows its values")
    if config_file:
        parser.add_argument("--config", default=None, metavar="FILE",
                            help="a TOML (or JSON) file of settings (max_lr = 3e-4), each a flag's name: after the "
                                 "preset, before the command line; a run directory's config.toml repeats its run")
    add_fields(parser, config_type(**{**defaults, **from_file}))
    values = vars(parser.parse_args(argv))
    values.pop("preset", None)
    values.pop("config", None)
    config = config_type(**values)
    try:
        if adjust is not None:
            adjust(config, given_fields(parser, argv) | set(from_file))
        check(config)
    except ValueError as e:
        parser.error(str(e))
    return config


def parse_subcommand(commands: dict[str, tuple[type, str]], argv: Optional[list[str]],
                     description: str) -> tuple[str, Any]:
    """A command line of subcommands, each its own dataclass ({name: (config type, one-line help)}): (the name
    given, its config), its fields' checks a usage error."""
    parser = ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{" + ",".join(commands) + "}",
                                help="what to run (each has its own -h)")
    for name, (config_type, help_text) in commands.items():
        add_fields(sub.add_parser(name, help=help_text, description=help_text), config_type())
    values = vars(parser.parse_args(argv))
    name = values.pop("subcommand")
    config = commands[name][0](**values)
    try:
        check_fields(config)
    except ValueError as e:
        parser.error(str(e))
    return name, config


def given_fields(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> set[str]:
    """The fields whose arguments this command line gives, as against those left at their defaults. Parses again
    with every default suppressed: the parser is spent afterwards."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0])) - {"preset", "config"}


def is_list(field_type: Any) -> bool:
    return any(typing.get_origin(t) is list for t in (field_type, *typing.get_args(field_type)))


def read_config_file(path: Path, config_type: type, presets: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The settings of a TOML (or, by its suffix, JSON) file, one per field (max_lr or max-lr), checked against the
    fields' types, and 'preset' where there are presets. A ValueError naming the file and the setting."""
    import json
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
        table = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"--config {path}: {e.strerror if isinstance(e, OSError) else first_line(e)}") from None
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    settings = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "preset" and presets:
            if value not in presets:
                raise ValueError(f"--config {path}: preset {value!r}: choose from {', '.join(presets)}")
        elif name not in fields:
            near = difflib.get_close_matches(name, list(fields), n=1)
            raise ValueError(f"--config {path}: unknown setting {key!r}" +
                             (f"; did you mean {near[0]!r}?" if near else ""))
        else:
            wanted = list if is_list(fields[name].type) else value_type(fields[name].type)
            value = float(value) if wanted is float and type(value) is int else value
            if type(value) is not wanted:
                raise ValueError(f"--config {path}: {key} = {value!r}, where a {wanted.__name__} belongs")
        settings[name] = value
    return settings


def toml_value(value: Any) -> str:
    """A setting's value as TOML writes it: strings and lists as JSON does (TOML reads those), booleans in lower
    case, numbers as Python writes them."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (str, list)) else repr(value)


def write_config_file(path: Path, settings: dict[str, Any]) -> None:
    """Settings as a TOML file that read_config_file reads back; None, which stands for a default, is left out."""
    from files import atomic_file

    with atomic_file(path) as f:
        f.write("".join(f"{name} = {toml_value(value)}\n" for name, value in settings.items()
                        if value is not None).encode())


# ----------------------------------------------------------------------------------------------------------------
# Ends and stops


class UsageError(ValueError):
    """A command this machine or its disk cannot run as given (--device cuda without a GPU, a --data-dir that is not
    there), found when the run starts rather than while the arguments are read: a usage error all the same."""


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
    except UsageError as e:  # every rank finds the same: said once
        if is_master_process():
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("GPT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
