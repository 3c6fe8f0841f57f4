"""The ranks of a run: joining and leaving torchrun's process group (nccl on CUDA, gloo on the CPU, every collective
bounded by --dist-timeout), the small collectives the loop uses, how the model is laid out for training (activation
checkpointing, compilation, DDP or FSDP2, applied in one place: parallelize), and the one line a run ends with when
it loses a peer.

Every rank calls every collective here; nothing gathers or reduces on the master rank alone. Under FSDP2 every
forward pass of the model is a collective too (it gathers each block's parameters), so every rank runs the same
number of them, evaluations and samples included.
"""

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from cli import first_line
from devices import compile_mode_option, compile_model, pick_device

PARALLEL_MODES = ("ddp", "fsdp")
CHECKPOINTING = ("none", "block")


@dataclass
class Ranks:
    """This process's place among the ranks, and the collectives of the loop."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run: the GPU with nccl, the CPU with gloo

    @classmethod
    def from_environment(cls) -> "Ranks":
        """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them, one process."""
        if "RANK" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over ranks, in place (SUM then divide: gloo has no AVG)."""
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks, in float64."""
        if not self.enabled:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.tolist()

    def gather(self, value: object) -> list:
        """Every rank's `value` (a small picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def any_rank(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank: how the ranks agree (one small collective)."""
        return [total > 0 for total in self.all_sum([float(f) for f in flags])]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def under_torchrun() -> bool:
    """Whether a torchrun agent started this process (and so is its parent)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launcher_restart() -> Optional[str]:
    """What restarted this command, where a launcher did, else None (its first start): 'Slurm's requeue 1 of job
    1234' (SLURM_RESTART_COUNT: a requeued job runs its script again), 'torchrun's restart 2 of the workers' (after a
    failure, with --max-restarts)."""
    restarts = []
    slurm, torchrun = (os.environ.get(name, "0") for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT"))
    if slurm.isdigit() and int(slurm) > 0:
        restarts.append(f"Slurm's requeue {slurm} of job {os.environ.get('SLURM_JOB_ID', '?')}")
    if torchrun.isdigit() and int(torchrun) > 0:
        restarts.append(f"torchrun's restart {torchrun} of the workers")
    return ", after ".join(restarts) or None


def join(ranks: Ranks, device_name: str, timeout_seconds: float) -> torch.device:
    """Join the process group torchrun describes, every collective bounded by the timeout; return this rank's
    device (one process: --device's)."""
    device = pick_device(device_name)
    if not ranks.enabled:
        return device
    timeout = timedelta(seconds=timeout_seconds)
    group = dict(timeout=timeout, **rendezvous_store(ranks, timeout))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device, **group)
    else:
        # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group(backend="gloo", **group)
    ranks.device = device
    return device


def rendezvous_store(ranks: Ranks, timeout: timedelta) -> dict:
    """init_process_group's store, where torchrun's is shared with its agent: keyed by the start of the workers.
    The agent's store outlives a restart of the workers (--max-restarts), and torch keys every start the same, so
    the restarted ranks read their predecessors' addresses and fail to connect ("Connection refused";
    pytorch/pytorch#135712, #167288). Elsewhere ({}): torch's own env:// rendezvous."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    start = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ranks.world_size,
                          is_master=False, timeout=timeout)
    return dict(store=dist.PrefixStore(f"/worker/start_{start}", agent), rank=ranks.rank,
                world_size=ranks.world_size)


@contextlib.contextmanager
def process_group(ranks: Ranks, device_name: str, timeout_seconds: float,
                  rerun: str = "rerun the same command") -> Iterator[torch.device]:
    """The process group for the life of a run: joined (see join), this rank's device given, left at the end; an
    error that comes from losing a peer ends the run as one line (a ConnectionError, see lost_contact) that ends with
    `rerun` ... to continue."""
    try:
        yield join(ranks, device_name, timeout_seconds)
    except RuntimeError as e:
        message = lost_contact(e, ranks, timeout_seconds, rerun) if ranks.enabled else None
        if message is None:
            raise
        raise ConnectionError(message) from None
    finally:
        if ranks.enabled and dist.is_initialized():
            dist.destroy_process_group()


def lost_contact(e: BaseException, ranks: Ranks, timeout_seconds: float,
                 rerun: str = "rerun the same command") -> Optional[str]:
    """One line for an error that comes from losing a peer (a crash, a frozen or unreachable rank), else None."""
    text = first_line(e)
    if not (isinstance(e, dist.DistError) or re.search(r"gloo|nccl|connection|timed out|timeout", text, re.I)):
        return None
    cause = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]  # without gloo's "[.../pair.cc:537] " and advice
    if re.search(r"timed out|timeout", text, re.I):
        cause += f"; no answer from a peer within --dist-timeout {timeout_seconds:g} s"
    return (f"rank {ranks.rank} of {ranks.world_size}: lost contact with the other ranks ({cause}); torchrun's "
            f"summary names the rank that failed first; {rerun} to continue from the newest checkpoint")


def fsdp_available() -> bool:
    """FSDP2 (torch.distributed.fsdp.fully_shard), public from torch 2.6."""
    import torch.distributed.fsdp as fsdp

    return hasattr(fsdp, "fully_shard") and hasattr(fsdp, "register_fsdp_forward_method")


def check_fsdp(dtype: torch.dtype) -> None:
    """--parallel fsdp needs FSDP2, and a dtype without a gradient scaler: a ValueError saying what to do."""
    if not fsdp_available():
        raise ValueError(f"--parallel fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); this is "
                         f"torch {torch.__version__}: upgrade it, or use --parallel ddp")
    if dtype == torch.float16:  # its gradient scaler would see only this rank's shards
        raise ValueError("--parallel fsdp trains in bfloat16 or float32, not float16; pass --dtype bfloat16 (or "
                         "float32), or use --parallel ddp")


def parallelize(model: torch.nn.Module, ranks: Ranks, mode: str, checkpointing: str, compile_mode: Optional[str],
                param_dtype: Optional[torch.dtype]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Lay `model` out for training, in this order: activation checkpointing per block (checkpointing "block"),
    compilation (compile_mode; None: eager), then DDP or FSDP2 (mode). Return its two views: (forward, train_model),
    the view for fixed-shape forward passes (validation) and the one training steps through.

    DDP: `model` stays whole on every rank; forward is it compiled as a whole, train_model that under DDP.
    FSDP2 (more than one rank): each transformer block, then the root, is sharded in place (fully_shard), with
    parameters gathered in `param_dtype` and gradients reduced in fp32; blocks are compiled one by one before, which
    gives one graph for them all (the whole model compiled over FSDP2 breaks the graph at every block). `model` is
    then both views, and what reads it whole (a checkpoint, the evaluations) goes through collectives. With one
    rank there is nothing to shard: FSDP2 runs as DDP does."""
    if checkpointing == "block":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(model.transformer.h):  # the wrapper keeps the state_dict keys as they are
            model.transformer.h[i] = checkpoint_wrapper(block)
    if mode != "fsdp" or not ranks.enabled:
        forward = compile_model(model, compile_mode) if compile_mode else model
        return forward, wrap_for_ddp(forward, ranks)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in model.transformer.h:
        if compile_mode:
            block.compile(mode=compile_mode_option(compile_mode), dynamic=False)  # in place: keys unchanged
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    register_fsdp_forward_method(model, "next_token_logits")  # decoding's entry point, beside forward
    return model, model


def wrap_for_ddp(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The model under DDP, which all-reduces the gradients during backward, when there are several ranks; as it is
    otherwise."""
    if not ranks.enabled:
        return model
    return DDP(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)


def gradient_sync(train_model: torch.nn.Module, ranks: Ranks, sync: bool) -> contextlib.AbstractContextManager:
    """Around a micro-step's forward and backward: without sync, the gradients only accumulate on this rank (DDP's
    no_sync; FSDP2 keeps them unsharded and skips its reduce-scatter), so they are reduced once per optimizer step,
    on its last micro-step."""
    if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(sync)
    elif ranks.enabled and not sync:
        return train_model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, whose norm is over all ranks' shards under FSDP2: the total norm before clipping,
    as a plain tensor on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
