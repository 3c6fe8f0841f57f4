"""Evaluate a model as training does: the val loss over --val-tokens and HellaSwag (both conventions), split across
ranks under torchrun; the result printed and appended to the run directory's log.txt.

    python evaluate.py                                      # log/'s newest checkpoint, on its run's data
    python evaluate.py --init runs/quickstart               # a run directory's newest checkpoint
    python evaluate.py --init gpt2 --data-dir edu_fineweb10B   # OpenAI's 124M (build-nanogpt: val loss 3.2924)
    torchrun --standalone --nproc_per_node=8 evaluate.py --init log

A checkpoint of ours is evaluated on its own run's --data-dir, --seq-len, --micro-batch-size and --val-tokens, unless
the command gives them. `python train_gpt2.py --eval-only` is the same evaluation.
"""

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from checkpoint import DEFAULT_RUN_DIR, due, load_model, model_at, newest_checkpoint, newest_that_loads, train_config_of
from cli import check_fields, option, parse_dataclass, positive, run_cli, seed_range
from context import RunContext, started
from dataloader import check_data_dir
from devices import ATTENTION_BACKENDS, COMPILE_MODES, DEVICE_FLAG, DTYPE_FLAG, check_device, eager
from hellaswag import harness_style_applies, judge_examples, load_for_training
from metrics import utc_now
from model import GPT
from sample import sample_texts

HELLASWAG_CHUNK = 64  # examples scored between two looks at the stop request
SAMPLE_TOP_K = 50
# The HellaSwag scalars and their event lines in log.txt ("hella" is build-nanogpt's, completion style).
HELLASWAG_EVENTS = {"hellaswag/acc_norm": "hella", "hellaswag/acc_norm_harness": "hella_harness"}
# What an evaluation of a checkpoint of ours takes from the run that wrote it, where the command does not give it:
# that run's own evaluation (a quickstart checkpoint is evaluated on the quickstart's data, windows and context).
EVALUATED_RUN_SETTINGS = ("data_dir", "seq_len", "micro_batch_size", "val_tokens")
# Where no run says otherwise: train_gpt2.py's defaults, build-nanogpt's.
DEFAULT_DATA_DIR, DEFAULT_SEQ_LEN, DEFAULT_MICRO_BATCH = "edu_fineweb10B", 1024, 64
DEFAULT_VAL_TOKENS = 20 * 64 * 1024 * 8  # build-nanogpt's: 20 micro-batches of 64 x 1024 on each of 8 GPUs


class Evaluator:
    """The evaluations of a run, set up once: the val loss over --val-tokens, HellaSwag, samples. Each looks at the
    stop request as it goes and, asked to stop, leaves its work unfinished; the ranks learn of it in the
    evaluation's one collective, so they all discard the result together."""

    def __init__(self, ctx: RunContext, model: GPT, forward: torch.nn.Module,
                 hellaswag: tuple[Optional[list[dict]], str]):
        """model: the plain model (HellaSwag, samples); forward: its view for validation (compiled or not);
        hellaswag: the examples (None when off) and the run summary's line (hellaswag.load_for_training)."""
        self.ctx, self.model, self.forward = ctx, model, forward
        self.examples, self.hellaswag_status = hellaswag
        self.val_loader = ctx.loader("val", model.config.vocab_size)
        window = ctx.cfg.micro_batch_size * ctx.cfg.seq_len
        self.val_windows = max(1, min(ctx.cfg.val_tokens, self.val_loader.num_tokens - 1) // window)

    @property
    def val_tokens(self) -> int:
        """--val-tokens as evaluated: whole B x T windows, at most as many as the val split holds."""
        return self.val_windows * self.ctx.cfg.micro_batch_size * self.ctx.cfg.seq_len

    def due(self, step: int, last: bool) -> set[str]:
        """The evaluations a training run has due at `step`: "val" (which also ends every run), "hellaswag",
        "samples"."""
        cfg = self.ctx.cfg
        names = {"val"} if last or due(cfg.eval_interval, step, last) else set()
        if self.examples and due(cfg.hellaswag_interval, step, last):
            names.add("hellaswag")
        if step > 0 and due(cfg.sample_interval, step, last):
            names.add("samples")
        return names

    def run(self, step: int, last: bool) -> Optional[dict[str, float]]:
        """The evaluations due at `step`, logged together once all are done: their scalars ({} when none is due).
        Cut short by a stop request: None, nothing logged, so that a resumed run does them again."""
        names = self.due(step, last)
        scalars = self.measure(names)
        if scalars is None:
            return None
        texts = self.samples() if "samples" in names else []
        self.report(step, scalars, texts)
        return scalars

    def measure(self, names: set[str]) -> Optional[dict[str, float]]:
        """The val loss and HellaSwag where named: {"val/loss": ..., "hellaswag/acc_norm": ...,
        "hellaswag/acc_norm_harness": ...} (see hellaswag_scores); None if a stop request cut them short on any
        rank."""
        scalars = {}
        with self.ctx.autocast():
            if "val" in names:
                if (val_loss := self.val_loss()) is None:
                    return None
                scalars["val/loss"] = val_loss
            if "hellaswag" in names and self.examples:
                if (hellaswag := self.hellaswag_scores()) is None:
                    return None
                scalars.update(hellaswag)
        return scalars

    def summed_over_ranks(self, pieces: int, piece: Callable[[int], list[float]],
                          width: int) -> Optional[list[float]]:
        """The sums of piece(0), ..., piece(pieces - 1) (each `width` numbers) on this rank, then over the ranks;
        None if a stop request cut the work short on any rank. The request is looked at before each piece."""
        sums, abandoned = [0.0] * width, 0.0
        for i in range(pieces):
            if self.ctx.stop.requested:
                abandoned = 1.0
                break
            sums = [total + value for total, value in zip(sums, piece(i))]
        *sums, abandoned = self.ctx.ranks.all_sum([*sums, abandoned])
        return None if abandoned else sums

    @torch.no_grad()
    def val_loss(self) -> Optional[float]:
        """Mean loss over the first val_windows B x T windows of the val split, the same windows at every world size
        (rank r takes windows r, r + W, ...)."""
        rank, world_size = self.ctx.ranks.rank, self.ctx.ranks.world_size

        def window(i: int) -> list[float]:
            x, y = self.val_loader.next_batch()  # (B, T) each: window i * W + r
            # the loss as training computes it; on every rank, past the last window too: see distributed.py
            loss = self.forward(x, y, loss_chunk_size=self.ctx.cfg.loss_chunk_size)[1].item()
            return [loss] if i * world_size + rank < self.val_windows else [0.0]

        self.forward.eval()
        self.val_loader.reset()
        sums = self.summed_over_ranks(-(-self.val_windows // world_size), window, 1)
        self.forward.train()
        return None if sums is None else sums[0] / self.val_windows

    def hellaswag_scores(self) -> Optional[dict[str, float]]:
        """acc_norm over all examples, completion style ("hellaswag/acc_norm", build-nanogpt's) and, where the
        examples have its fields, harness style ("hellaswag/acc_norm_harness", lm-evaluation-harness's; see
        hellaswag.py). Split across ranks (rank r scores r, r + W, ...); every rank judges as many (its share padded
        with copies of the first example, not counted), so they run the same forward passes."""
        mine = self.examples[self.ctx.ranks.rank :: self.ctx.ranks.world_size]
        share = -(-len(self.examples) // self.ctx.ranks.world_size)
        padded = mine + self.examples[:1] * (share - len(mine))

        def chunk(i: int) -> list[float]:
            start = i * HELLASWAG_CHUNK
            judged = judge_examples(self.model, padded[start : start + HELLASWAG_CHUNK], self.ctx.device)
            counted = judged[: max(0, len(mine) - start)]
            return [sum(j.acc_norm for j in counted), sum(bool(j.harness_acc_norm) for j in counted), len(counted)]

        with eager():
            sums = self.summed_over_ranks(-(-share // HELLASWAG_CHUNK), chunk, 3)
        if sums is None:
            return None
        scores = {"hellaswag/acc_norm": sums[0] / sums[2]}
        if harness_style_applies(self.examples):
            scores["hellaswag/acc_norm_harness"] = sums[1] / sums[2]
        return scores

    def samples(self) -> list[str]:
        """The same samples on every rank (one seed): under FSDP2 all take part. The master logs them."""
        cfg = self.ctx.cfg
        with self.ctx.autocast(), eager():
            return sample_texts(self.model, cfg.sample_prompt, cfg.num_samples, cfg.sample_tokens, self.ctx.device,
                                top_k=SAMPLE_TOP_K, seed=cfg.seed)

    def report(self, step: int, scalars: dict[str, float], texts: list[str]) -> None:
        """The evaluations' lines on the console and in log.txt, their scalars in the live metrics."""
        log = self.ctx.log
        if "val/loss" in scalars:
            log.say(f"step {step:5d} | val loss {scalars['val/loss']:.4f}")
            log.events(step, {"val": scalars["val/loss"]})
        if "hellaswag/acc_norm" in scalars:
            log.say(f"step {step:5d} | {describe_hellaswag(scalars)}")
            log.events(step, {kind: scalars[tag] for tag, kind in HELLASWAG_EVENTS.items() if tag in scalars})
        log.scalars(step, scalars)
        for i, text in enumerate(texts, start=1):
            log.say(f"sample {i}: {text}")
            log.comment(f"step {step} sample {i}: {text}")


def describe_hellaswag(scalars: dict[str, float]) -> str:
    """'HellaSwag acc_norm 0.2955 (completion style) | 0.3114 (harness style)', each figure named for its kind."""
    text = f"HellaSwag acc_norm {scalars['hellaswag/acc_norm']:.4f} (completion style)"
    if "hellaswag/acc_norm_harness" in scalars:
        text += f" | {scalars['hellaswag/acc_norm_harness']:.4f} (harness style)"
    return text


# ----------------------------------------------------------------------------------------------------------------
# An evaluation on its own


@dataclass
class EvalConfig:
    """Every field is a flag (--field-name); the data settings not given are the evaluated run's (see
    implied_settings)."""

    init: str = option("", "the model: a checkpoint, a run directory (its newest), a Hugging Face directory or a "
                           "GPT-2 hub name; when not given, --run-dir's newest checkpoint", group="model")
    run_dir: str = option(DEFAULT_RUN_DIR, "the run directory whose log.txt records the result", group="model")
    data_dir: Optional[str] = option(None, f"the shards' directory; default: the evaluated run's, else "
                                           f"{DEFAULT_DATA_DIR}", group="data")
    seq_len: Optional[int] = option(None, f"T of the val windows; default: the evaluated run's, else "
                                          f"{DEFAULT_SEQ_LEN}", positive, group="data")
    micro_batch_size: Optional[int] = option(None, f"B of the val windows; default: the evaluated run's, else "
                                                   f"{DEFAULT_MICRO_BATCH}", positive, group="data")
    val_tokens: Optional[int] = option(None, f"tokens of the val split evaluated, at any world size; default: the "
                                             f"evaluated run's, else {DEFAULT_VAL_TOKENS:,}", positive, group="data")
    hellaswag: bool = option(True, "score HellaSwag too (--no-hellaswag: the val loss alone)", group="HellaSwag")
    hellaswag_path: str = option("", "a local hellaswag_val.jsonl; default: download and cache it", group="HellaSwag")
    device: str = option(**DEVICE_FLAG, group="performance")
    dtype: str = option(**DTYPE_FLAG, group="performance")
    compile: Optional[bool] = option(None, "torch.compile the model; default: on CUDA only", group="performance")
    compile_mode: str = option("default", "torch.compile mode, when compiling", group="performance",
                               choices=COMPILE_MODES)
    attention: str = option("auto", "SDPA kernel: auto (PyTorch's pick), flash, efficient, cudnn (CUDA), math",
                            group="performance", choices=ATTENTION_BACKENDS)
    loss_chunk_size: int = option(0, "the loss this many positions at a time (0: the whole logits)",
                                  lambda n: None if n >= 0 else f"must be >= 0, got {n}", group="performance")
    seed: int = option(1337, "seed (the evaluation itself draws nothing)", seed_range, group="performance")
    dist_timeout: float = option(300.0, "seconds a rank waits for the others in a collective", positive,
                                 group="performance")


def take_the_evaluated_runs(cfg: Any, given: set[str], init: str) -> None:
    """The data settings that the command does not give: those of the run that wrote the evaluated checkpoint (init,
    a checkpoint of ours, or else the run directory's newest)."""
    saved = train_config_of(init or cfg.run_dir)
    for name in EVALUATED_RUN_SETTINGS:
        if name not in given and name in saved:
            setattr(cfg, name, saved[name])


def implied_settings(cfg: EvalConfig, given: set[str]) -> None:
    """The evaluated run's data settings where the command does not give them, else train_gpt2.py's defaults."""
    take_the_evaluated_runs(cfg, given, cfg.init)
    for name, default in zip(EVALUATED_RUN_SETTINGS, (DEFAULT_DATA_DIR, DEFAULT_SEQ_LEN, DEFAULT_MICRO_BATCH,
                                                     DEFAULT_VAL_TOKENS)):
        if getattr(cfg, name) is None:
            setattr(cfg, name, default)


def check_values(cfg: EvalConfig) -> None:
    """Values no evaluation can use; pure (the disk and the device are looked at when it starts)."""
    check_fields(cfg)
    if cfg.val_tokens < cfg.micro_batch_size * cfg.seq_len:
        raise ValueError(f"--val-tokens {cfg.val_tokens} is less than one micro-batch (--micro-batch-size x "
                         f"--seq-len = {cfg.micro_batch_size * cfg.seq_len})")


def check_environment(cfg: Any) -> None:
    """What an evaluation needs of this machine and its disk, before it starts: a model to evaluate (else one line,
    exit 1), then the device and dtype and the val shards (a usage error, naming the flag)."""
    if not cfg.init and newest_checkpoint(cfg.run_dir) is None:
        raise nothing_to_evaluate(cfg.run_dir)
    check_device(cfg.device, cfg.dtype, cfg.attention)
    check_data_dir(cfg.data_dir, ("val",))


def nothing_to_evaluate(run_dir: str) -> ValueError:
    return ValueError(f"nothing to evaluate: {run_dir} holds no checkpoint (ckpt_NNNNNN.pt or ckpt_NNNNNN/); pass "
                      f"--init (a hub name, HF directory, checkpoint or run directory), or the --run-dir of a run "
                      f"with checkpoints")


def evaluated_model(ctx: RunContext, init: str) -> tuple[str, GPT]:
    """The model to evaluate and what to call it: `init`'s, or the run directory's newest checkpoint that loads
    (named: the result's line says which)."""
    if init:
        return init, load_model(init, say=ctx.log.say)
    if found := newest_that_loads(ctx.cfg.run_dir, model_at, ctx.log.note):
        return str(found[0]), found[1]
    raise nothing_to_evaluate(ctx.cfg.run_dir)


def evaluate_model(ctx: RunContext, init: str, hellaswag: bool, prepare_data: Callable[[], None]) -> dict[str, Any]:
    """The evaluations of training, once, on `init`'s model (see evaluated_model); the ranks split the work as in
    training. prepare_data: what makes the data directory first, where a run does (the quickstart's)."""
    cfg = ctx.cfg
    init, model = evaluated_model(ctx, init)
    prepare_data()
    examples = load_for_training(cfg.hellaswag_path, 1 if hellaswag else 0)
    model = model.to(ctx.device)
    model.config.check_context(cfg.seq_len, what=f"--seq-len {cfg.seq_len}")
    evaluator = Evaluator(ctx, model, ctx.compiled(model), examples)
    scalars = evaluator.measure({"val", "hellaswag"})
    if scalars is None:  # a stop request, on this rank or another
        raise ctx.stop.ending("during the evaluation; nothing recorded", shown=ctx.ranks.master)
    val_loss, acc_norm = scalars["val/loss"], scalars.get("hellaswag/acc_norm")
    hella = f"{describe_hellaswag(scalars)} on {len(evaluator.examples):,} examples" if acc_norm is not None \
        else f"HellaSwag {evaluator.hellaswag_status if hellaswag else 'off'}"
    settings = {name: getattr(cfg, name) for name in (*EVALUATED_RUN_SETTINGS, "hellaswag_path", "dtype", "attention",
                                                      "loss_chunk_size")}
    ctx.log.comment(f"eval-only at {utc_now()} of {init}: model {json.dumps(dataclasses.asdict(model.config))}, "
                    f"trained with {json.dumps(train_config_of(init) or None)}, evaluated with {json.dumps(settings)}")
    ctx.log.note(f"eval-only {init}: val loss {val_loss:.4f} on {evaluator.val_tokens:,} tokens of {cfg.data_dir}; "
                 f"{hella}")
    return {"val_loss": val_loss, "hellaswag": acc_norm, "init": init}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """What `python evaluate.py` runs, alone or under torchrun; no lock: an evaluation only reads."""
    check_environment(cfg)
    with started(cfg, cfg.run_dir) as ctx:
        return evaluate_model(ctx, cfg.init, cfg.hellaswag, lambda: None)


def parse_config(argv: Optional[list[str]] = None) -> EvalConfig:
    return parse_dataclass(EvalConfig, None, argv, __doc__, check_values, implied_settings)


def main(argv: Optional[list[str]] = None) -> None:
    evaluate(parse_config(argv))


if __name__ == "__main__":
    run_cli(main)
