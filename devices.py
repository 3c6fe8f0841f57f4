"""Devices and precision, for every script that runs a model: which device and autocast dtype (and the one definition
of --device and --dtype), TF32, which attention kernel and compile mode, device synchronisation, peak FLOP/s."""

import argparse
import contextlib
from typing import Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
AUTO_DTYPE = "auto: bf16 on CUDA where supported, fp16 on older GPUs, fp32 elsewhere"
DTYPE_HELP = f"autocast dtype: float32, bfloat16, float16; {AUTO_DTYPE}"
TRAIN_DTYPE_HELP = DTYPE_HELP + " (fp16 trains with a gradient scaler)"
INFERENCE_DTYPE_HELP = f"compute dtype, the weights cast to it (float32, bfloat16, float16); {AUTO_DTYPE}"
# Peak dense bf16 tensor-core FLOP/s (no sparsity) for MFU, matched against the CUDA device name in this order, so
# the more specific names come first ("A10" is also a substring of "A100").
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("4090", 165e12),
)


def parse_device(name: str) -> torch.device:
    """The device a --device names (not 'auto'), whether or not this machine has it; a ValueError for a name that
    names none we run on."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use {DEVICE_HELP})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r} (use {DEVICE_HELP})")
    return device


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device that is not there is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: MPS is not available on this machine")
    return device


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype: 'auto' -> bf16 on CUDA where supported, else fp16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} (use auto, {', '.join(DTYPES)})")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 needs a GPU; use float32 or bfloat16 on the CPU")
    return dtype


def allow_tf32(device: torch.device) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA, as build-nanogpt sets them."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes; a no-op for float32 (parameters stay fp32 either way)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_memory(device: torch.device) -> Optional[int]:
    """The GPU's memory in bytes; None elsewhere (the CPU's is not the limit a run plans for)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def peak_flops_of(device: torch.device, override: float = 0.0) -> Optional[float]:
    """Peak bf16 FLOP/s of one device for MFU: the override if given, else a known GPU's figure, else None."""
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in PEAK_FLOPS if key in name), None)
    return None


def device_name(text: str) -> str:
    """argparse type of --device: the name, checked while the command line is parsed (exit code 2); whether this
    machine has it is for the start of the run (check_device)."""
    try:
        if text != "auto":
            parse_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# The one definition of --device and --dtype, for every script (train_gpt2.py's TrainConfig fields included).
DEVICE_FLAG = dict(default="auto", type=device_name, help=DEVICE_HELP)
DTYPE_FLAG = dict(default="auto", choices=("auto", *DTYPES), help=DTYPE_HELP)


def add_device_flags(parser: argparse.ArgumentParser, dtype_help: str = DTYPE_HELP) -> None:
    parser.add_argument("--device", **DEVICE_FLAG)
    parser.add_argument("--dtype", **{**DTYPE_FLAG, "help": dtype_help})


def check_device(name: str, dtype: str, attention: str = "auto") -> torch.device:
    """The device a command runs on, with its --dtype and --attention: what is not there, or cannot run there, is a
    usage error naming the flag (cli.UsageError)."""
    from cli import UsageError

    try:
        device = pick_device(name)
    except ValueError as e:
        raise UsageError(f"argument --device: {e}") from None
    try:
        check_dtype(device, dtype)
        check_attention_backend(attention, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return device


def check_dtype(device: torch.device, dtype: str) -> None:
    """--dtype must run on the device; the error names both: "--dtype float16 on cpu: float16 needs a GPU ..."."""
    try:
        pick_dtype(device, dtype)
    except ValueError as e:
        raise ValueError(f"--dtype {dtype} on {device}: {e}") from None


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device and autocast dtype of a command; one that cannot run here (float16 on the CPU) is a usage error."""
    chosen = check_device(device, dtype)
    return chosen, pick_dtype(chosen, dtype)


# Training-speed levers shared by train_gpt2.py and bench.py: which SDPA kernel attention uses, how torch.compile
# compiles. "auto" / "default" leave PyTorch's own choice.
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The modes that replay CUDA graphs. A graph's outputs live in memory its next replay overwrites, so micro-steps that
# accumulate gradients over several replays get wrong gradients or an error (pytorch/pytorch#169545, #96693).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_attention_backend(name: str, device: torch.device) -> None:
    """--attention's kernel must exist, and on this device; the error names the flag."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention: unknown attention backend {name!r}; choose from "
                         f"{', '.join(ATTENTION_BACKENDS)}")
    if name in CUDA_ONLY_ATTENTION and device.type != "cuda":
        raise ValueError(f"--attention: the {name} attention kernel needs CUDA (on {device}: auto, flash or math)")


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """F.scaled_dot_product_attention restricted to one kernel inside the context; "auto": PyTorch's pick. Entered
    inside a compiled model's forward (see model.CausalSelfAttention), the kernel is compiled into its graph."""
    if name == "auto":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPA_BACKENDS[name])


def check_compile_mode(mode: str, micro_steps: int) -> None:
    """A CUDA-graph mode cannot replay one graph for several accumulating micro-steps (see CUDA_GRAPH_MODES)."""
    if mode in CUDA_GRAPH_MODES and micro_steps > 1:
        raise ValueError(f"--compile-mode {mode} replays CUDA graphs, which give wrong gradients when {micro_steps} "
                         f"micro-steps accumulate them (pytorch/pytorch#169545): use --compile-mode "
                         f"max-autotune-no-cudagraphs, or one micro-step per step (--total-batch-size = "
                         f"--micro-batch-size x --seq-len x ranks)")


def compile_wanted(choice: Optional[bool], device: torch.device) -> bool:
    """--compile / --no-compile as given; when not given, on CUDA only (elsewhere compilation costs more than it
    gives)."""
    return device.type == "cuda" if choice is None else choice


def eager() -> contextlib.AbstractContextManager:
    """Compiled modules run eagerly inside: for passes of other shapes than training's (HellaSwag, sampling), which
    would otherwise compile again for each (torch.compiler.set_stance, torch >= 2.6)."""
    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """torch.compile with one of COMPILE_MODES ("default": torch.compile's own), for the fixed shapes of training
    and benchmarks: dynamic=False, so another shape is a new graph (a recompilation), never a symbolic one."""
    return torch.compile(model, mode=compile_mode_option(mode), dynamic=False)


def compile_mode_option(mode: str) -> Optional[str]:
    """torch.compile's mode= of one of COMPILE_MODES."""
    return None if mode == "default" else mode


def recompile_room(limit: int) -> contextlib.AbstractContextManager:
    """Inside, torch.compile keeps up to `limit` graphs per function before it stops compiling it (torch._dynamo's
    recompile_limit, cache_size_limit before torch 2.7; the default 8 is there to catch shapes that change by
    accident): for work whose graphs are each deliberate, such as a benchmark's contenders."""
    config = torch._dynamo.config
    name = next((n for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)), None)
    if name is None:  # neither setting in this torch (or something deleted it): leave torch's own limit
        return contextlib.nullcontext()
    return config.patch(**{name: max(limit, getattr(config, name))})


def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far: the difference across some work is what it compiled
    (torch._dynamo's counters; 0 where a torch version lacks them)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
