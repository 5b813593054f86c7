"""Each chart writes a valid PNG of the requested pixel size from tiny inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifusion.components import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The file is a PNG of `size` (W, H) that is not one flat colour; returns its pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0
    return pixels


def test_loss_curves_one_panel_per_component(tmp_path: Path) -> None:
    steps = np.arange(120)
    curves = {
        "total": (steps, np.exp(-steps / 30) + 0.01),
        "mask": (steps, np.full(120, 0.5)),
        "class": (steps, np.r_[np.nan, np.ones(119)]),  # a skipped step
    }
    path = plots.plot_loss_curves(curves, tmp_path / "nested" / "loss.png")
    assert path == tmp_path / "nested" / "loss.png"
    assert_png(path, (1200, 260))  # three components: one row
    four = {**curves, "dice": (steps, steps * 0.1)}
    assert_png(plots.plot_loss_curves(four, tmp_path / "loss4.png", size_px=(333, 257)), (333, 257))
    with pytest.raises(ValueError, match="steps"):
        plots.plot_loss_curves({"total": (steps, np.ones(3))}, tmp_path / "bad.png")


def test_lr_schedule(tmp_path: Path) -> None:
    steps = np.arange(50)
    lrs = np.r_[np.linspace(0, 1e-3, 10), 1e-3 * np.cos(np.linspace(0, 1.5, 40))]
    assert_png(plots.plot_lr_schedule(steps, lrs, tmp_path / "lr.png", size_px=(640, 320)), (640, 320))


def test_per_class_ap_grouped_by_split(tmp_path: Path) -> None:
    names = ["chair", "table", "cushion", "paper", "plate"]
    splits = ["head", "head", "common", "tail", "tail"]
    ap50 = [0.8, 0.4, np.nan, 0.1, 0.0]
    assert_png(plots.plot_per_class_ap(names, ap50, tmp_path / "ap.png", splits=splits), (800, 3 * 380))
    assert_png(plots.plot_per_class_ap(names, ap50, tmp_path / "ap20.png", size_px=(500, 300)), (500, 300))
    with pytest.raises(ValueError, match="splits must be"):
        plots.plot_per_class_ap(names, ap50, tmp_path / "bad.png", splits=["head", "x", "tail", "tail", "tail"])


def test_confusion_matrix_shows_the_most_frequent_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, size=(6, 7))
    confusion[:, :6] += np.diag([100, 0, 50, 10, 5, 1])
    names = [f"class{i}" for i in range(6)]
    assert_png(plots.plot_confusion_matrix(confusion, names, tmp_path / "confusion.png", top_n=3, size_px=(600, 500)), (600, 500))
    assert_png(plots.plot_confusion_matrix(confusion[:, :6], names, tmp_path / "square.png", size_px=(400, 400)), (400, 400))
    with pytest.raises(ValueError, match="confusion must be"):
        plots.plot_confusion_matrix(confusion[:, :5], names, tmp_path / "bad.png")


def test_gate_statistics_and_alpha_histogram(tmp_path: Path) -> None:
    steps = np.arange(20)
    alpha_mean = np.linspace(0.5, 0.3, 20)
    alpha_mean[3] = np.nan  # an iteration without valid points
    assert_png(plots.plot_gate_statistics(steps, alpha_mean, np.full(20, 0.1), np.full(20, 0.7), tmp_path / "gate.png"), (900, 600))
    rng = np.random.default_rng(1)
    alpha, valid = rng.random((200, 1)), rng.random(200) > 0.4
    assert_png(plots.plot_alpha_histogram(alpha, valid, tmp_path / "alpha.png", size_px=(400, 300)), (400, 300))
    assert_png(plots.plot_alpha_histogram(alpha, np.zeros(200, bool), tmp_path / "none.png", size_px=(400, 300)), (400, 300))


def test_per_class_difference_panels(tmp_path: Path) -> None:
    names = ["chair", "table", "cushion", "paper"]
    differences = {"B - A": [0.2, -0.1, np.nan, 0.05], "C - A": [0.0, 0.3, np.nan, -0.2]}
    path = plots.plot_per_class_difference(names, differences, tmp_path / "diff.png", splits=["head", "head", "common", "tail"])
    assert_png(path, (800, 2 * 340))
