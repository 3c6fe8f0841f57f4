"""Every command that README.md and docs/ show runs as written: each names a script of the repository and flags that
script takes, with values it accepts (parsed as the script parses them, which touches no disk); the links between
the pages lead somewhere; the README stays a short front door."""

import re
import shlex

import pytest

import bench
import evaluate
import export_hf
import fineweb
import harness
import hellaswag
import plot
import sample
import train_gpt2
from cli import parse_dataclass
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSERS = {
    "train_gpt2.py": train_gpt2.parse_config,
    "evaluate.py": evaluate.parse_config,
    "sample.py": sample.parse_config,
    "hellaswag.py": lambda argv: parse_dataclass(hellaswag.HellaSwagConfig, None, argv, ""),
    "harness.py": harness.parse_args,
    "export_hf.py": lambda argv: parse_dataclass(export_hf.ExportConfig, None, argv, ""),
    "plot.py": lambda argv: parse_dataclass(plot.PlotConfig, None, argv, ""),
    "fineweb.py": lambda argv: parse_dataclass(fineweb.FinewebConfig, None, argv, ""),
    "bench.py": bench.parse_args,
}


def commands():
    """(page, script, its arguments) of every command line in the pages' bash blocks that runs a script of ours."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                for part in re.split(r"&&|\|", line.split("  #")[0]):
                    words = shlex.split(part)
                    script = next((i for i, w in enumerate(words) if w.endswith((".py", ".sbatch")) and
                                   not w.startswith("-")), None)
                    if script is not None and words[0] in ("python", "python3", "torchrun", "sbatch"):
                        # an sbatch job's flags after the script are train_gpt2.py's
                        name = "train_gpt2.py" if words[script].endswith(".sbatch") else words[script]
                        found.append((page.name, name, words[script + 1 :]))
    return found


def test_the_pages_show_commands_of_every_script():
    scripts = {script for _, script, _ in commands()}
    assert scripts == set(PARSERS), scripts ^ set(PARSERS)


@pytest.mark.parametrize("page,script,args", commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_command_shown_parses_as_its_script_parses_it(page, script, args, capsys):
    if args == ["-h"]:
        return
    try:
        PARSERS[script](args)
    except SystemExit as e:
        pytest.fail(f"{page}: {script} {' '.join(args)}: {capsys.readouterr().err.strip()} (exit {e.code})")


def test_every_link_between_the_pages_leads_to_a_file():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_000
    headings = re.findall(r"(?m)^## (.+)$", text)
    assert headings[:3] == ["Two commands", "Sample", "The real run: GPT-2 124M on FineWeb-Edu"]
    assert "pip install -r requirements-test.txt && python3 -m pytest -q tests" in text  # what CI runs


def test_the_readmes_file_table_names_every_module():
    first_cells = re.findall(r"(?m)^\| (`[^|]+) \|", (ROOT / "README.md").read_text())
    named = [name for cell in first_cells for name in re.findall(r"`([^`/]+\.py)`", cell)]
    assert sorted(named) == sorted(path.name for path in ROOT.glob("*.py"))
