"""What every part of a run reads and none changes, made once when a run (training, or an evaluation) starts: the
command's settings, this process's place among the ranks, its device and autocast dtype, the run's log and the stop
request; and the one way a run starts: stop handlers, the process group, the log, in that order."""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from cli import Exit, StopRequest
from dataloader import ShardLoader
from devices import allow_tf32, autocast, compile_model, compile_wanted, pick_dtype
from distributed import Ranks, process_group, under_torchrun
from files import hold_directory
from metrics import RunLog


@dataclass(frozen=True)
class RunContext:
    """cfg: the command's settings (train_gpt2.TrainConfig, or evaluate.EvalConfig: the fields of the same names);
    rerun: how to continue from the newest checkpoint, for the lines a run ends with."""

    cfg: Any
    ranks: Ranks
    device: torch.device
    dtype: torch.dtype
    log: RunLog
    stop: StopRequest
    rerun: str = "rerun the same command"

    @property
    def use_compile(self) -> bool:
        return compile_wanted(self.cfg.compile, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model for fixed-shape forward passes (validation) with --attention's kernel: through torch.compile
        when wanted."""
        model.set_attention(self.cfg.attention)
        return compile_model(model, self.cfg.compile_mode) if self.use_compile else model

    def loader(self, split: str, vocab_size: int) -> ShardLoader:
        """This rank's batches of a split of --data-dir; the train split shuffled with --shuffle or
        --shuffle-documents."""
        cfg, train = self.cfg, split == "train"
        return ShardLoader(cfg.data_dir, split, cfg.micro_batch_size, cfg.seq_len, rank=self.ranks.rank,
                           world_size=self.ranks.world_size, device=self.device,
                           shuffle=getattr(cfg, "shuffle", False) and train,
                           shuffle_documents=getattr(cfg, "shuffle_documents", False) and train, seed=cfg.seed,
                           vocab_size=vocab_size)


@contextlib.contextmanager
def started(cfg: Any, log_dir: str, rerun: str = "rerun the same command", hold: bool = False) -> Iterator[RunContext]:
    """A run of cfg in this process, alone or as one rank of a torchrun job: SIGINT, SIGTERM and SIGHUP (and under
    torchrun the end of its agent) are stop requests while it lasts (see StopRequest); the process group is joined
    and left; with `hold` (a training run), log_dir is held once the ranks can agree (see holding_run_dir); the
    master writes log_dir's log.txt."""
    ranks = Ranks.from_environment()
    with StopRequest(watch_parent=under_torchrun()) as stop, \
            process_group(ranks, cfg.device, cfg.dist_timeout, rerun) as device, \
            holding_run_dir(log_dir, ranks) if hold else contextlib.nullcontext(), \
            RunLog(Path(log_dir), ranks.master) as log:
        allow_tf32(device)
        yield RunContext(cfg, ranks, device, pick_dtype(device, cfg.dtype), log, stop, rerun)


@contextlib.contextmanager
def holding_run_dir(run_dir: str, ranks: Ranks) -> Iterator[None]:
    """A training run holds its run directory for its whole life (the master rank, an OS-level lock: released on any
    exit, SIGKILL included), so that a second run there is refused in one line naming the process that holds it,
    before it writes anything. Every rank learns of the refusal."""
    with contextlib.ExitStack() as held:
        refusal = None
        if ranks.master:
            try:
                held.enter_context(hold_directory(run_dir, "a training run"))
            except BlockingIOError as e:
                refusal = ValueError(f"--run-dir {e}")
        if ranks.any_rank(refusal is not None)[0]:
            raise refusal or Exit("", 1)  # the master says why
        yield
