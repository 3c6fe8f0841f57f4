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
from pathlib import Path
from typing import Optional

from cli import ArgumentParser, Exit, first_line, positive_int, run_cli
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


def parse_args(argv: Optional[list[str]] = None):
    parser = ArgumentParser(description=first_line(__doc__))
    parser.add_argument("--init", required=True, help="checkpoint (.pt or sharded ckpt_NNNNNN/), run directory (its "
                                                      "newest), Hugging Face GPT-2 directory or hub name")
    parser.add_argument("--tasks", required=True, help="the harness's task names, comma-separated (lm_eval --tasks)")
    parser.add_argument("--include-path", default=None, help="a directory of the user's own task files (YAML)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N examples of each task")
    parser.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (the task's default)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="the harness's batch size")
    parser.add_argument("--device", default="cpu", help="the harness's device: cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the exported weights' dtype as the harness loads them")
    parser.add_argument("--output-path", default=None, help="where the harness writes its results and samples")
    args = parser.parse_args(argv)
    if args.include_path and not Path(args.include_path).is_dir():
        parser.error(f"--include-path {args.include_path}: not a directory")
    return args


def check_tasks(tasks: str, include_path: Optional[str]) -> None:
    """Every task name the harness knows (its own, --include-path's, or a task file), before anything is exported: an
    unknown one is a ValueError naming it and the nearest names."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = [name for name in names if not manager.match_tasks([name]) and not Path(name).is_file()]
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
    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"lm-evaluation-harness is not installed: {LM_EVAL_INSTALL}")
    check_tasks(args.tasks, args.include_path)
    with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
        model_dir = export_hf(args.init, Path(tmp) / "hf")
        print(f"exported {args.init} to {model_dir}; running lm-evaluation-harness on {args.tasks}", flush=True)
        run_harness(lm_eval_command(model_dir, args))


if __name__ == "__main__":
    run_cli(main)
