"""cli.py's generic pieces on a dataclass of their own: flags from fields, presets as defaults (shown by -h), value
checks as one-line usage errors, and the one family of checks behind argparse types."""

import argparse
import dataclasses
from typing import Optional

import pytest

from cli import check_fields, fraction, non_negative_float, option, parse_dataclass, positive, positive_int


@dataclasses.dataclass
class Knobs:
    """A stand-in for a script's config."""

    steps: int = option(10, "how many steps", positive)
    ratio: float = option(0.5, "a share", fraction)
    name: str = option("plain", "a label", choices=("plain", "fancy"))
    verbose: bool = option(False, "say more")
    limit: Optional[int] = option(None, "no limit when not given", positive)


PRESETS = {"default": {}, "long": dict(steps=1000, name="fancy")}


def no_more_checks(knobs):
    check_fields(knobs)


def parse(argv):
    return parse_dataclass(Knobs, PRESETS, argv, "a test script", no_more_checks)


def test_flags_override_the_preset_which_overrides_the_fields():
    assert parse([]) == Knobs()
    assert parse(["--preset", "long"]) == Knobs(steps=1000, name="fancy")
    assert parse(["--preset", "long", "--steps", "3", "--verbose", "--limit", "7"]) == \
        Knobs(steps=3, name="fancy", verbose=True, limit=7)
    assert parse(["--verbose", "--no-verbose", "--ratio", "1"]) == Knobs(ratio=1.0)


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--ratio", "1.5"], "--ratio must be in [0, 1], got 1.5"),
    (["--limit", "-2"], "--limit must be positive, got -2"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--name", "odd"], "argument --name: invalid choice: 'odd'"),
    (["--preset", "short"], "argument --preset: invalid choice: 'short'"),
])
def test_a_bad_value_is_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_help_shows_the_chosen_presets_defaults_once(capsys):
    for argv, steps in ((["-h"], 10), (["--preset", "long", "-h"], 1000)):
        with pytest.raises(SystemExit) as e:
            parse(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and f"how many steps (default: {steps})" in out
        assert "no limit when not given" in out and "(default: None)" not in out
        assert "--verbose, --no-verbose say more (default: False)" in out  # a switch with its two spellings


def test_the_checks_behind_argparse_types():
    assert positive_int("3") == 3 and non_negative_float("0") == 0.0
    for read, text in ((positive_int, "0"), (non_negative_float, "-1"), (non_negative_float, "nan")):
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            read(text)
    with pytest.raises(ValueError):
        positive_int("1.5")
    assert positive(1) is None and positive(0) == "must be positive, got 0"
    assert fraction(0) is None and fraction(1) is None and fraction(-0.1) is not None


def parse_with_files(argv):
    return parse_dataclass(Knobs, PRESETS, argv, "a test script", no_more_checks, config_file=True)


def test_a_config_file_sets_flags_after_the_preset_and_before_the_command_line(tmp_path, capsys):
    file = tmp_path / "knobs.toml"
    file.write_text('preset = "long"\nsteps = 7\nratio = 1\nverbose = true\n')  # an int where a float belongs: fine
    assert parse_with_files(["--config", str(file)]) == Knobs(steps=7, ratio=1.0, name="fancy", verbose=True)
    assert parse_with_files(["--config", str(file), "--steps", "9", "--preset", "default"]) == \
        Knobs(steps=9, ratio=1.0, verbose=True)  # the command line over the file, and its preset over the file's
    (tmp_path / "knobs.json").write_text('{"limit": 3, "name": "plain"}')
    assert parse_with_files(["--config", str(tmp_path / "knobs.json")]) == Knobs(limit=3)
    for text, message in (('stepz = 3', "unknown setting 'stepz'; did you mean 'steps'?"),
                          ('steps = "7"', "steps = '7', where a int belongs"),
                          ('ratio = 3.0', "--ratio must be in [0, 1], got 3.0"),
                          ('preset = "short"', "preset 'short': choose from default, long"),
                          ('steps = ', "--config")):
        file.write_text(text)
        with pytest.raises(SystemExit) as e:
            parse_with_files(["--config", str(file)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):
        parse_with_files(["--config", str(tmp_path / "none.toml")])
    assert "none.toml: No such file or directory" in capsys.readouterr().err
