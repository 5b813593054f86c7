"""Charts of training and evaluation results, written as PNG files to log as MLflow artifacts.

Each function takes plain arrays and a path, draws one figure and returns the path. Figures are drawn with
matplotlib's object API on the Agg canvas (no pyplot state, no display), at 100 dpi without tight bounding
boxes, so the PNG is exactly `size_px` = (width, height) pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 100
SPLITS = ("head", "common", "tail")
SPLIT_COLORS = {"head": "#1f77b4", "common": "#ff7f0e", "tail": "#2ca02c", "": "#7f7f7f"}
_SMOOTHING_POINTS = 50  # loss curves: moving average over len / 50 logged values


def _figure(size_px: tuple[int, int]) -> Figure:
    width, height = size_px
    if width < 50 or height < 50:
        raise ValueError(f"size_px must be at least 50 x 50 pixels, got {size_px}")
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _series(steps: Sequence[float], values: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"{name}: steps {steps.shape} and values {values.shape} must be equal 1-D shapes")
    return steps, values


def _moving_average(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // _SMOOTHING_POINTS)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_loss_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, size_px: tuple[int, int] | None = None
) -> Path:
    """One panel per loss component: name -> (steps (T,), values (T,)), e.g. from MLflow's `loss/*` histories.

    Raw values are drawn faintly with a moving average over T / 50 values on top; non-finite values (skipped
    steps) are left out. A panel uses a log y axis when its values are positive and span more than 100x.
    Default size: 1200 px wide, 260 px per row of three panels.
    """
    if not curves:
        raise ValueError("plot_loss_curves: no curves given")
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = _figure(size_px or (1200, 260 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, curves.items()):
        steps, values = _series(steps, values, name)
        finite = np.isfinite(values)
        steps, values = steps[finite], values[finite]
        ax.plot(steps, values, color="#1f77b4", alpha=0.3, linewidth=0.8)
        smooth = _moving_average(values)
        ax.plot(steps[len(steps) - len(smooth):], smooth, color="#1f77b4", linewidth=1.5)
        if len(values) and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    return _save(figure, path)


def plot_lr_schedule(
    steps: Sequence[float], learning_rates: Sequence[float], path: str | Path, size_px: tuple[int, int] = (800, 400)
) -> Path:
    """Learning rate against iteration (one parameter group)."""
    steps, learning_rates = _series(steps, learning_rates, "learning rate")
    figure = _figure(size_px)
    ax = figure.subplots()
    ax.plot(steps, learning_rates, color="#d62728")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set(xlabel="iteration", ylabel="learning rate", title="learning-rate schedule")
    ax.grid(alpha=0.3)
    return _save(figure, path)


def _split_groups(num_classes: int, splits: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """(split name, class indices) panels: head, common, tail for ScanNet200, one unnamed group otherwise."""
    if splits is None:
        return [("", np.arange(num_classes))]
    splits = np.asarray(splits)
    if splits.shape != (num_classes,):
        raise ValueError(f"splits must have one entry per class ({num_classes}), got shape {splits.shape}")
    unknown = set(splits.tolist()) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits must be {SPLITS}, got {sorted(unknown)}")
    return [(split, np.flatnonzero(splits == split)) for split in SPLITS if (splits == split).any()]


def plot_per_class_ap(
    class_names: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    splits: Sequence[str] | None = None,
    metric: str = "AP50",
    size_px: tuple[int, int] | None = None,
) -> Path:
    """Bar per class of one metric (e.g. `InstanceAPResult.ap50`), one panel per ScanNet200 split.

    class_names (C,), values (C,) with NaN = no GT (label greyed, no bar), splits (C,) "head"/"common"/"tail"
    or None for one panel. Each panel shows its split's mean over classes with GT as a dashed line.
    Default size: 16 px per class of the largest panel (at least 800), 380 px per panel.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(class_names),):
        raise ValueError(f"values {values.shape} must have one entry per class ({len(class_names)})")
    groups = _split_groups(len(class_names), splits)
    widest = max(len(members) for _, members in groups)
    figure = _figure(size_px or (max(800, 16 * widest + 120), 380 * len(groups)))
    axes = figure.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (split, members) in zip(axes, groups):
        heights = values[members]
        ax.bar(np.arange(len(members)), np.nan_to_num(heights, nan=0.0), color=SPLIT_COLORS[split], width=0.8)
        ax.set_xticks(np.arange(len(members)), [class_names[i] for i in members], rotation=90, fontsize=6)
        for label, missing in zip(ax.get_xticklabels(), np.isnan(heights)):
            if missing:
                label.set_color("#b0b0b0")
        finite = heights[np.isfinite(heights)]
        title = f"{split} ({len(members)} classes)" if split else f"{len(members)} classes"
        if finite.size:
            ax.axhline(finite.mean(), color="black", linestyle="--", linewidth=1)
            title += f": mean {metric} {finite.mean():.3f} over {finite.size} classes with GT"
        ax.set(ylim=(0, 1), xlim=(-0.6, len(members) - 0.4), ylabel=metric, title=title)
        ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, top_n: int = 30, size_px: tuple[int, int] = (1000, 900)
) -> Path:
    """Row-normalised semantic confusion of the `top_n` classes with the most GT points.

    confusion (C, C) or (C, C + 1) counts, rows GT class, columns predicted class, an optional last column for
    "not a class" (`SemanticIoUResult.confusion`). 200 classes do not fit a readable picture, so rows are the
    top_n most frequent GT classes; columns are the same classes, then "other" (every other predicted class)
    and, with C + 1 columns, "no class". Each row sums to 1 over all columns: the diagonal is the class's
    recall and the rest shows where its points went.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    num_classes = len(class_names)
    if confusion.ndim != 2 or confusion.shape[0] != num_classes or confusion.shape[1] not in (num_classes, num_classes + 1):
        raise ValueError(f"confusion must be ({num_classes}, {num_classes}) or ({num_classes}, {num_classes + 1}), got {confusion.shape}")
    gt_points = confusion.sum(axis=1)
    order = np.argsort(-gt_points, kind="stable")
    top = order[: min(top_n, int((gt_points > 0).sum()))]
    if top.size == 0:
        raise ValueError("plot_confusion_matrix: the confusion matrix has no GT points")
    predicted = confusion[:, :num_classes]
    others = np.setdiff1d(np.arange(num_classes), top)
    columns = [predicted[np.ix_(top, top)], predicted[np.ix_(top, others)].sum(axis=1, keepdims=True)]
    labels = [class_names[i] for i in top] + ["other"]
    if confusion.shape[1] == num_classes + 1:
        columns.append(confusion[top, num_classes:])
        labels.append("no class")
    shares = np.concatenate(columns, axis=1) / gt_points[top, None]

    figure = _figure(size_px)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fontsize = 8 if len(top) <= 30 else 5
    ax.set_xticks(np.arange(len(labels)), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(len(top)), [class_names[i] for i in top], fontsize=fontsize)
    ax.set(xlabel="predicted class", ylabel="ground-truth class")
    ax.set_title(f"semantic confusion: the {len(top)} most frequent of {num_classes} classes (rows normalised)", fontsize=10)
    figure.colorbar(image, ax=ax, label="share of the GT class's points")
    return _save(figure, path)


def plot_gate_statistics(
    steps: Sequence[float],
    alpha_mean: Sequence[float],
    alpha_std: Sequence[float],
    valid_ratio: Sequence[float],
    path: str | Path,
    size_px: tuple[int, int] = (900, 600),
) -> Path:
    """BiFusion gate over training (`gate_statistics` logged per iteration): alpha mean with a +-std band on
    valid points, and the share of points with an image feature. NaN values (no valid point) leave gaps."""
    steps, alpha_mean = _series(steps, alpha_mean, "alpha_mean")
    _, alpha_std = _series(steps, alpha_std, "alpha_std")
    _, valid_ratio = _series(steps, valid_ratio, "valid_ratio")
    figure = _figure(size_px)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.fill_between(steps, alpha_mean - alpha_std, alpha_mean + alpha_std, color="#9467bd", alpha=0.25, label="mean +- std")
    top.plot(steps, alpha_mean, color="#9467bd", label="mean")
    top.set(ylim=(0, 1), ylabel="alpha (2D weight)", title="fusion gate on valid points")
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(steps, valid_ratio, color="#8c564b")
    bottom.set(ylim=(0, 1.02), xlabel="iteration", ylabel="valid ratio", title="points with an image feature")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_alpha_histogram(
    alpha: np.ndarray, valid: np.ndarray, path: str | Path, bins: int = 50, size_px: tuple[int, int] = (800, 450)
) -> Path:
    """Histogram of the gate weight alpha (N,) or (N, 1) over the points where valid (N,) is true."""
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    if alpha.shape != valid.shape:
        raise ValueError(f"alpha {alpha.shape} and valid {valid.shape} must have one entry per point")
    on_valid = alpha[valid]
    figure = _figure(size_px)
    ax = figure.subplots()
    if on_valid.size:
        ax.hist(on_valid, bins=bins, range=(0.0, 1.0), color="#9467bd")
        title = f"alpha on {on_valid.size} of {alpha.size} points (valid): mean {on_valid.mean():.3f}, std {on_valid.std():.3f}"
    else:
        ax.text(0.5, 0.5, "no point has an image feature", ha="center", va="center", transform=ax.transAxes)
        title = f"alpha: 0 of {alpha.size} points valid"
    ax.set(xlim=(0, 1), xlabel="alpha (weight of the 2D feature)", ylabel="points", title=title)
    return _save(figure, path)


def plot_per_class_difference(
    class_names: Sequence[str],
    differences: Mapping[str, Sequence[float]],
    path: str | Path,
    splits: Sequence[str] | None = None,
    metric: str = "AP50",
    size_px: tuple[int, int] | None = None,
) -> Path:
    """One panel per comparison (label -> per-class difference (C,), NaN = class not scored in both runs).

    Classes keep the benchmark order, grouped head / common / tail (bar colour) so a class sits at the same x
    in every panel; classes that are NaN in every comparison are left out. Default size: 9 px per shown
    class (at least 800) by 340 px per panel.
    """
    if not differences:
        raise ValueError("plot_per_class_difference: no differences given")
    table = np.array([np.asarray(values, dtype=np.float64) for values in differences.values()])
    if table.shape[1:] != (len(class_names),):
        raise ValueError(f"each difference must have one entry per class ({len(class_names)}), got shape {table.shape[1:]}")
    groups = _split_groups(len(class_names), splits)
    shown = np.concatenate([members[np.isfinite(table[:, members]).any(axis=0)] for _, members in groups])
    split_of = np.asarray(splits) if splits is not None else np.full(len(class_names), "")
    figure = _figure(size_px or (max(800, 9 * len(shown) + 150), 340 * len(differences)))
    axes = figure.subplots(len(differences), 1, squeeze=False)[:, 0]
    limit = max(0.05, float(np.nanmax(np.abs(table[:, shown]), initial=0.0)) * 1.1) if shown.size else 0.05
    for ax, label, row in zip(axes, differences, table):
        values = row[shown]
        colors = [SPLIT_COLORS[split_of[i]] for i in shown]
        ax.bar(np.arange(len(shown)), np.nan_to_num(values, nan=0.0), color=colors, width=0.8)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(shown)), [class_names[i] for i in shown], rotation=90, fontsize=8 if len(shown) <= 60 else 5)
        finite = values[np.isfinite(values)]
        summary = f": mean {finite.mean():+.3f}, {int((finite > 0).sum())} up, {int((finite < 0).sum())} down" if finite.size else ""
        ax.set(ylim=(-limit, limit), xlim=(-0.6, max(len(shown), 1) - 0.4), ylabel=f"delta {metric}", title=f"{label}{summary}")
        ax.grid(axis="y", alpha=0.3)
    if splits is not None:
        handles = [Patch(color=SPLIT_COLORS[split], label=split) for split in SPLITS]
        axes[0].legend(handles=handles, loc="upper right", fontsize=8)
    return _save(figure, path)
