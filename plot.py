"""Chart one or more training runs from their log.txt, against the GPT-2 and GPT-3 baselines.

    python plot.py log/ -o run.png
    python plot.py runs/a runs/b/log.txt -o compare.png        # several runs overlay, with a legend

Four panels: train loss (raw and smoothed) with val loss, HellaSwag acc_norm, gradient norm, learning rate. Reads
the `{step} {kind} {value}` lines of train_gpt2.py's log (and build-nanogpt's, which share the format); lines
starting with '#' are ignored, so a run still going plots fine.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from cli import first_line, option, parse_dataclass, positive, run_cli
from metrics import EVENT_FORMATS, EVENT_LINE

# OpenAI's GPT-2 124M checkpoint on the FineWeb-Edu val shard (build-nanogpt), and the 124M HellaSwag baselines.
GPT2_124M_VAL_LOSS = 3.2924
GPT2_124M_HELLASWAG = 0.2945
GPT3_124M_HELLASWAG = 0.337
FIGURE_SIZE = (14, 9)  # inches
DEFAULT_OUT = "run.png"
SMOOTHING_FRACTION = 50  # the automatic EMA window is the run's length divided by this ...
MAX_SMOOTHING_WINDOW = 100  # ... up to this many steps
DPI = 100


def parse_log(path: Union[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """Events of one log: {kind: [(step, value), ...]} in file order; a resumed run's repeated steps keep the last."""
    events: dict[str, dict[int, float]] = {kind: {} for kind in EVENT_FORMATS}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = EVENT_LINE.match(line.strip())
            if m:
                try:
                    events[m.group(2)][int(m.group(1))] = float(m.group(3))
                except ValueError:
                    continue  # a half-written last line of a run still going
    return {kind: sorted(values.items()) for kind, values in events.items()}


def find_log(path: Union[str, Path]) -> Path:
    """A run directory (its log.txt) or a log file."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    return path


def auto_smoothing(points: int) -> float:
    """The EMA factor for a curve of `points` steps: an average over about a fiftieth of the run (at most 100
    steps), so a 150-step run lags by ~2 steps rather than a fixed 0.9's ~9, and a 19,073-step one is still smooth."""
    window = min(max(points / SMOOTHING_FRACTION, 1.0), MAX_SMOOTHING_WINDOW)
    return 1.0 - 1.0 / window


def output_path(out: Union[str, Path]) -> Path:
    """-o as given, with .png added when it has no extension; a directory gets DEFAULT_OUT inside it."""
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", "\\")):
        return path / DEFAULT_OUT
    return path if path.suffix else path.with_name(path.name + ".png")


def smooth(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return out


def plot_runs(logs: dict[str, dict[str, list[tuple[int, float]]]], out: Union[str, Path],
              smoothing: Optional[float] = None, baselines: bool = True) -> list[str]:
    """Draw the four panels for every run into one image (smoothing None: auto_smoothing for each run's length);
    return notes on what was missing."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=FIGURE_SIZE, dpi=DPI)
    ax_loss, ax_hella, ax_norm, ax_lr = axes.flat
    notes = []
    for i, (name, ev) in enumerate(logs.items()):
        color = f"C{i}"
        if ev["train"]:
            steps, values = zip(*ev["train"])
            ax_loss.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            alpha = auto_smoothing(len(values)) if smoothing is None else smoothing
            ax_loss.plot(steps, smooth(list(values), alpha), color=color, label=f"{name} train (EMA {alpha:.2f})")
        else:
            notes.append(f"{name}: no train lines yet")
        if ev["val"]:
            steps, values = zip(*ev["val"])
            ax_loss.plot(steps, values, color=color, linestyle="--", marker="o", markersize=3, label=f"{name} val")
        else:
            notes.append(f"{name}: no val lines yet")
        if ev["hella"]:
            steps, values = zip(*ev["hella"])
            ax_hella.plot(steps, values, color=color, marker="o", markersize=3, label=name)
        else:
            notes.append(f"{name}: no hella lines yet")
        for ax, kind in ((ax_norm, "norm"), (ax_lr, "lr")):
            if ev[kind]:
                steps, values = zip(*ev[kind])
                ax.plot(steps, values, color=color, linewidth=0.8, label=name)
    if baselines:
        ax_loss.axhline(GPT2_124M_VAL_LOSS, color="red", linestyle=":",
                        label=f"OpenAI GPT-2 124M val ({GPT2_124M_VAL_LOSS})")
        ax_hella.axhline(GPT2_124M_HELLASWAG, color="red", linestyle=":", label=f"GPT-2 124M ({GPT2_124M_HELLASWAG})")
        ax_hella.axhline(GPT3_124M_HELLASWAG, color="green", linestyle=":", label=f"GPT-3 124M ({GPT3_124M_HELLASWAG})")
    if not any(ev["hella"] for ev in logs.values()):
        ax_hella.text(0.5, 0.5, "no HellaSwag lines in the log(s) yet", ha="center", va="center",
                      transform=ax_hella.transAxes, color="gray")
    ax_loss.set(title="loss", xlabel="step", ylabel="cross-entropy (nats/token)")
    ax_hella.set(title="HellaSwag acc_norm", xlabel="step", ylabel="accuracy")
    ax_norm.set(title="gradient norm (before clipping)", xlabel="step", ylabel="L2 norm")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return notes


@dataclass
class PlotConfig:
    """Every argument of the command line: the runs, then flags (--field-name)."""

    runs: Optional[list[str]] = option(None, "run directories or log.txt files", positional=True, nargs="+",
                                       metavar="RUN_DIR_OR_LOG")
    out: str = option(DEFAULT_OUT, "the image to write (.png added when there is no extension; a directory: run.png "
                                   "in it)", aliases=("-o",))
    smoothing: Optional[float] = option(None, "EMA factor of the train loss; when not given, from the run's length "
                                              "(0.67 for 150 steps, 0.99 from 5,000)",
                                        lambda a: None if 0 <= a < 1 else f"must be in [0, 1), got {a}")
    baselines: bool = option(True, "the GPT-2 / GPT-3 reference lines (--no-baselines for runs not on FineWeb-Edu)")
    max_label: int = option(40, "longest run name in the legend", positive)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_dataclass(PlotConfig, None, argv, first_line(__doc__))
    logs = {}
    for run in args.runs:
        path = find_log(run)
        base = name = str(path.parent if path.name == "log.txt" else path)[-args.max_label:]
        while name in logs:  # two runs both called "log"
            name = f"{base} ({len(logs) + 1})"
        logs[name] = parse_log(path)
        if not any(logs[name].values()):
            raise ValueError(f"{path} holds no training events ('STEP train LOSS' lines)")
    out = output_path(args.out)
    notes = plot_runs(logs, out, args.smoothing, args.baselines)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
