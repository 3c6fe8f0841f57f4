"""plot.py on synthetic logs: the parsed events, a PNG of the documented size with every panel drawn."""

import math

import numpy as np
import pytest

import plot
from conftest import run_cli_main


def write_log(path, steps=60, val=True, hella=True):
    lines = ["# config {\"model\": \"gpt2\"}", "# step 0 sample 1: Hello\\n world"]
    for s in range(steps):
        lines += [f"{s} train {10 * math.exp(-s / 20) + 3:.6f}", f"{s} lr {6e-4 * min(1, (s + 1) / 10):.4e}",
                  f"{s} norm {1 + 0.5 * math.sin(s):.4f}"]
        if val and s % 10 == 0:
            lines.append(f"{s} val {10 * math.exp(-s / 20) + 3.2:.4f}")
        if hella and s % 20 == 0:
            lines.append(f"{s} hella {0.25 + s / 1000:.4f}")
    path.write_text("\n".join(lines) + "\n12 tra")  # a half-written last line, as in a run still going
    return path


def run_main(argv, capsys):
    return run_cli_main(plot.main, argv, capsys)


def test_parse_log_reads_events_and_skips_comments(tmp_path):
    events = plot.parse_log(write_log(tmp_path / "log.txt", steps=21))
    assert [s for s, _ in events["train"]] == list(range(21))
    assert events["train"][0] == (0, 13.0)
    expected_val = [(0, 13.2), (10, round(10 * math.exp(-0.5) + 3.2, 4)), (20, round(10 * math.exp(-1) + 3.2, 4))]
    assert events["val"] == expected_val
    assert events["hella"] == [(0, 0.25), (20, 0.27)]
    assert len(events["lr"]) == len(events["norm"]) == 21


def test_resumed_steps_keep_the_last_value(tmp_path):
    (tmp_path / "log.txt").write_text("0 train 5.0\n1 train 4.0\n# resumed\n1 train 3.5\n2 train 3.0\n")
    assert plot.parse_log(tmp_path / "log.txt")["train"] == [(0, 5.0), (1, 3.5), (2, 3.0)]


def test_smoothing_is_a_bias_corrected_moving_average():
    assert plot.smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    # by hand: avg1 = 0.1*2 -> /0.1 = 2; avg2 = 0.9*0.2 + 0.1*4 = 0.58 -> /0.19
    assert plot.smooth([2.0, 4.0], 0.9) == pytest.approx([2.0, 0.58 / 0.19])


def quadrants(image):
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return [image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]]


def test_full_log_gives_a_png_with_four_drawn_panels(tmp_path, capsys):
    import matplotlib.image

    (tmp_path / "a").mkdir()
    write_log(tmp_path / "a" / "log.txt")
    write_log((tmp_path / "b.txt"), steps=30)
    out = tmp_path / "run.png"
    code, stdout, stderr = run_main([str(tmp_path / "a"), str(tmp_path / "b.txt"), "-o", str(out)], capsys)
    assert code == 0 and "wrote" in stdout and "no val" not in stderr
    image = matplotlib.image.imread(out)  # (H, W, RGBA) floats in [0, 1]
    assert image.shape[:2] == (900, 1400)  # 14 x 9 inches at 100 dpi
    for panel in quadrants(image[..., :3]):
        assert panel.std() > 0.05  # axes, lines and labels, not a blank area
        # coloured pixels: the runs' lines (matplotlib's C0 blue, C1 orange) or the baselines
        assert (np.ptp(panel, axis=-1) > 0.3).mean() > 0.001


def test_log_with_only_train_lines_still_plots_and_says_so(tmp_path, capsys):
    write_log(tmp_path / "log.txt", val=False, hella=False)
    out = tmp_path / "train_only.png"
    code, _, stderr = run_main([str(tmp_path), "-o", str(out), "--no-baselines"], capsys)
    assert code == 0 and out.is_file()
    assert "no val lines yet" in stderr and "no hella lines yet" in stderr


def test_missing_or_empty_log_is_a_one_line_error(tmp_path, capsys):
    code, _, stderr = run_main([str(tmp_path / "nothing"), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 1 and "no training log" in stderr and len(stderr.strip().splitlines()) == 1
    (tmp_path / "log.txt").write_text("# only comments\n")
    code, _, stderr = run_main([str(tmp_path), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 1 and "holds no training events" in stderr


def test_out_gets_png_added_and_a_directory_gets_run_png_inside(tmp_path, capsys):
    write_log(tmp_path / "log.txt", steps=20)
    code, stdout, _ = run_main([str(tmp_path), "-o", str(tmp_path / "chart")], capsys)
    assert code == 0 and (tmp_path / "chart.png").is_file() and f"wrote {tmp_path / 'chart.png'}" in stdout
    (tmp_path / "charts").mkdir()
    code, stdout, _ = run_main([str(tmp_path), "-o", str(tmp_path / "charts")], capsys)
    assert code == 0 and (tmp_path / "charts" / "run.png").is_file() and not (tmp_path / "charts.png").exists()
    assert f"wrote {tmp_path / 'charts' / 'run.png'}" in stdout


def test_automatic_smoothing_follows_a_short_run_closely_and_smooths_a_long_one():
    # On a falling line, an EMA of factor a lags by a / (1 - a) steps once settled (by hand: the weights a^k (1 - a)
    # have mean k = a / (1 - a)): 9 steps for 0.9, 2 for 150 steps' 2/3.
    ramp = [10.0 - 0.01 * s for s in range(150)]
    alpha = plot.auto_smoothing(len(ramp))
    assert alpha == pytest.approx(2 / 3)
    lag = (plot.smooth(ramp, alpha)[-1] - ramp[-1]) / 0.01
    assert lag == pytest.approx(2.0, abs=0.01)
    assert (plot.smooth(ramp, 0.9)[-1] - ramp[-1]) / 0.01 == pytest.approx(9.0, abs=0.01)
    assert plot.auto_smoothing(19073) == pytest.approx(0.99) and plot.auto_smoothing(10) == 0.0
