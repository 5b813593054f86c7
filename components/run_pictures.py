"""Pictures of a stage run, attached to its MLflow run: what a person looks at before reading numbers.

Training: loss curves per component and the learning-rate schedule (from the run's own metric history),
for BiFusion the gate statistics over training and a histogram of alpha on valid points. Evaluation: per-class
AP bars (ScanNet200 by head/common/tail), the semantic confusion matrix, and GT-vs-prediction renders of a few
frames or scenes. Drawing failures are logged and skipped: a picture must never fail a finished training.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bifusion.components import plots, renders
from bifusion.components.evaluate.benchmark_classes import instance_benchmark, scannet200_semantic_space

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
RENDERS_DIR = "renders"


def _history(client: Any, run_id: str, key: str) -> tuple[list[float], list[float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [m.step for m in points], [m.value for m in points]


def log_training_plots(run: Any, alpha_samples: Sequence[np.ndarray] = ()) -> list[str]:
    """Loss curves, LR schedule and (BiFusion) gate plots of a training run; returns the artifact names."""
    if run.run_id is None:  # non-main DDP process
        return []
    client, run_id = run.client, run.run_id
    keys = sorted(client.get_run(run_id).data.metrics)
    written: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs: list[tuple[str, Any]] = []
        losses = {key.removeprefix("loss/"): _history(client, run_id, key) for key in keys if key.startswith("loss/")}
        if losses:
            jobs.append(("loss_curves.png", lambda path: plots.plot_loss_curves(losses, path)))
        if "lr" in keys:
            jobs.append(("lr_schedule.png", lambda path: plots.plot_lr_schedule(*_history(client, run_id, "lr"), path)))
        if {"gate/alpha_mean", "gate/alpha_std", "gate/valid_ratio"} <= set(keys):
            steps, mean = _history(client, run_id, "gate/alpha_mean")
            std = _history(client, run_id, "gate/alpha_std")[1]
            valid = _history(client, run_id, "gate/valid_ratio")[1]
            count = min(len(mean), len(std), len(valid))
            jobs.append(("gate_statistics.png", lambda path: plots.plot_gate_statistics(steps[:count], mean[:count], std[:count], valid[:count], path)))
        if alpha_samples:
            alpha = np.concatenate([np.asarray(a).reshape(-1) for a in alpha_samples])
            jobs.append(("alpha_histogram.png", lambda path: plots.plot_alpha_histogram(alpha, np.ones_like(alpha, dtype=bool), path)))
        for name, draw in jobs:
            written += _draw_and_log(run, draw, folder / name, PLOTS_DIR)
    return written


def log_evaluation_pictures(run: Any, report: Any, renders_input: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Per-class AP bars, the confusion matrix and renders (dicts of `render_instances_side_by_side` args)."""
    written: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, result in report.instance.items():
            splits = instance_benchmark(name).class_splits
            draw = lambda path, r=result, s=splits: plots.plot_per_class_ap(list(r.class_names), r.ap50, path, splits=s)  # noqa: E731
            written += _draw_and_log(run, draw, folder / f"per_class_ap50_{name}.png", PLOTS_DIR)
        names = list(scannet200_semantic_space().class_names)
        if report.semantic.confusion.sum():
            draw = lambda path: plots.plot_confusion_matrix(report.semantic.confusion, names, path)  # noqa: E731
            written += _draw_and_log(run, draw, folder / "semantic_confusion.png", PLOTS_DIR)
        for item in renders_input:
            draw = lambda path, i=item: renders.render_instances_side_by_side(  # noqa: E731
                i["points"], i["gt_instance_ids"], i["pred_masks"], path, pred_scores=i["pred_scores"])
            written += _draw_and_log(run, draw, folder / f"{item['name']}_instances.png", RENDERS_DIR)
            if "image" in item:
                draw = lambda path, i=item: renders.render_projection_overlay(i["image"], i["uv"], i["valid"], path, depth=i.get("depth"))  # noqa: E731
                written += _draw_and_log(run, draw, folder / f"{item['name']}_projection.png", RENDERS_DIR)
    return written


def _draw_and_log(run: Any, draw: Any, path: Path, artifact_dir: str) -> list[str]:
    try:
        draw(path)
        run.log_artifact(path, artifact_dir)
    except Exception as exc:  # a broken picture is reported, never fatal for the stage
        log.warning("could not draw %s: %s: %s", path.name, type(exc).__name__, exc)
        return []
    return [f"{artifact_dir}/{path.name}"]
