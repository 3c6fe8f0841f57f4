"""Live training metrics where users look for them: TensorBoard event files in the run directory (`tensorboard
--logdir RUN_DIR`), and Weights & Biases with --wandb-project. Only the master rank writes.

A resumed run continues the same curves without repeating a step: TensorBoard is told to drop what an earlier
session wrote from the resumed step on (its purge_step), and W&B continues the same run id, kept in the run
directory, where it ignores steps it already has.
"""

import importlib.util
import uuid
from pathlib import Path
from typing import Any

from cli import first_line

WANDB_ID_FILE = "wandb_run_id"
FLUSH_SECONDS = 30  # the most a killed run's TensorBoard curves can lag behind its log.txt


def check_wandb_installed() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb-project needs the wandb package: pip install wandb (and `wandb login`, or "
                         "WANDB_MODE=offline to keep the run on disk)")


class Metrics:
    """Scalars by step, sent to every writer that is on."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool, wandb_project: str, resuming: bool,
                 config: dict[str, Any]):
        self.tensorboard = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard's readers drop the events an earlier session logged from this step on
            self.tensorboard = SummaryWriter(log_dir=str(run_dir), purge_step=start_step, flush_secs=FLUSH_SECONDS)
        if wandb_project:
            self.wandb = start_wandb(run_dir, wandb_project, resuming, config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, global_step=step)
        if self.wandb is not None:
            self.wandb.log(dict(scalars), step=step)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self, failed: bool = False) -> None:
        """Flush and close; a run that ended in an error or a stop is marked so on W&B (exit code 1), not as
        finished."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
        self.tensorboard = self.wandb = None


def start_wandb(run_dir: Path, project: str, resuming: bool, config: dict[str, Any]):
    """A W&B run in run_dir/wandb: the one this run directory used before when resuming, else a new one."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else uuid.uuid4().hex[:8]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=project, dir=str(run_dir), id=run_id, resume="allow", config=config,
                         name=run_dir.resolve().name)
    except Exception as e:  # not logged in, no network, a bad project name ...
        raise OSError(f"--wandb-project {project}: W&B could not start ({first_line(e)}); run `wandb login`, or set "
                      f"WANDB_MODE=offline to keep the run on disk and `wandb sync` it later") from None
    id_file.write_text(run_id + "\n")
    return run
