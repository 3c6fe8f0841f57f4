"""Any lm-evaluation-harness task on a checkpoint of ours: the model exported as a Hugging Face directory
(export_hf.py), then the harness itself run on it, its own tasks and scoring, its table printed as it prints it.

    python harness.py --init log --tasks hellaswag,lambada_openai,arc_easy,piqa,winogrande     # online: the hub
    python harness.py --init runs/quickstart --tasks my_task --include-path my_tasks/          # a local task file

Needs lm-evaluation-harness (`pip install -r requirements-test.txt`: lm_eval 0.4.13 with its hf extra); training,
sampling and hellaswag.py do not.
"""

import difflib
import importlib.util
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cli import Exit, UsageError, first_line, option, parse_dataclass, positive, run_cli
from export_hf import export_hf

LM_EVAL_INSTALL = "pip install -r requirements-test.txt (lm_eval[hf]==0.4.13)"


def lm_eval_command(model_dir: Path, args) -> list[str]:
    """The lm_eval command line for an exported model and this command's flags."""
    command = [sys.executable, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={model_dir},dtype={args.dtype}", "--tasks", args.tasks,
               "--device", args.device, "--batch_size", str(args.batch_size)]
    for flag, value in (("--include_path", args.include_path), ("--limit", args.limit),
                        ("--num_fewshot", args.num_fewshot), ("--output_path", args.output_path)):
        if value is not None:
            command += [flag, str(value)]
    return command + (["--log_samples"] if args.output_path else [])


@dataclass
class HarnessConfig:
    """Every field is a flag (--field-name); the first two must be given."""

    init: Optional[str] = option(None, "checkpoint (.pt or sharded ckpt_NNNNNN/), run directory (its newest), "
                                       "Hugging Face GPT-2 directory or hub name", required=True)
    tasks: Optional[str] = option(None, "the harness's task names, comma-separated (lm_eval --tasks)", required=True)
    include_path: Optional[str] = option(None, "a directory of the user's own task files (YAML)")
    limit: Optional[int] = option(None, "only the first N examples of each task", positive)
    num_fewshot: Optional[int] = option(None, "examples in each prompt (the task's default when not given)")
    batch_size: int = option(8, "the harness's batch size", positive)
    device: str = option("cpu", "the harness's device: cpu, cuda, cuda:N, mps")
    dtype: str = option("float32", "the exported weights' dtype as the harness loads them",
                        choices=("float32", "bfloat16", "float16"))
    output_path: Optional[str] = option(None, "where the harness writes its results and samples")


def parse_args(argv: Optional[list[str]] = None) -> HarnessConfig:
    return parse_dataclass(HarnessConfig, None, argv, first_line(__doc__))


def check_tasks(tasks: str, include_path: Optional[str]) -> None:
    """Every task name the harness knows (its own, --include-path's, or a task file), before anything is exported: an
    unknown one is a ValueError naming it and the nearest names."""
    from lm_eval.tasks import TaskManager

    names = [name.strip() for name in tasks.split(",") if name.strip() and not Path(name.strip()).is_file()]
    if include_path:  # the user's own tasks first: indexing the harness's ~15,000 takes seconds
        local = TaskManager(include_path=include_path, include_defaults=False)
        names = [name for name in names if not local.match_tasks([name])]
    if not names:
        return
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if not manager.match_tasks([name])]
    if unknown:
        near = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `lm_eval ls tasks` lists them"
        raise ValueError(f"--tasks: lm-evaluation-harness has no task {', '.join(map(repr, unknown))}{hint}")


def run_harness(command: list[str]) -> None:
    """Run lm_eval, its output shown as it comes; a failure ends in one line: its error, without its traceback."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1)
    held: list[str] = []  # a traceback, from its first line on: told in one line if lm_eval fails
    for line in proc.stderr:
        if held or line.startswith("Traceback (most recent call last)"):
            held.append(line)
        else:
            sys.stderr.write(line)
    code = proc.wait()
    if code:
        error = next((line.strip() for line in reversed(held) if line.strip() and not line.startswith(" ")), "")
        raise Exit(f"error: lm_eval failed (exit code {code}){': ' + error if error else '; its messages are above'}",
                   1)
    sys.stderr.writelines(held)  # a traceback lm_eval survived: its own to tell


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.include_path and not Path(args.include_path).is_dir():
        raise UsageError(f"--include-path {args.include_path}: not a directory")
    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"lm-evaluation-harness is not installed: {LM_EVAL_INSTALL}")
    check_tasks(args.tasks, args.include_path)
    with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
        model_dir = export_hf(args.init, Path(tmp) / "hf")
        print(f"exported {args.init} to {model_dir}; running lm-evaluation-harness on {args.tasks}", flush=True)
        run_harness(lm_eval_command(model_dir, args))


if __name__ == "__main__":
    run_cli(main)
