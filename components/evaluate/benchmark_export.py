"""The ScanNet benchmark's instance-segmentation files: submission (predictions) and ground truth.

Predictions (BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py header), in a prediction folder:

    <scene>.txt                          one line per instance: `<relative mask path> <label id> <confidence>`
    predicted_masks/<scene>_<k>.txt      one integer per mesh vertex (1 = in the instance, 0 = not)

Label ids are the benchmark's: ScanNet200 raw ids, nyu40 ids for ScanNet20 (see `benchmark_classes`).

Ground truth, in a separate folder (the script pairs `<pred folder>/<scene>.txt` with `<gt folder>/<scene>.txt`):

    <scene>.txt                          one integer per vertex: label_id * 1000 + instance id, 0 = void

Every file is written to a temporary name in its folder and renamed into place, so a reader never sees half a
file; a scene's mask files are written before its `<scene>.txt`.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bifusion.components.evaluate.benchmark_classes import VOID, InstanceBenchmark
from bifusion.components.evaluate.instance_ap import GT_LABEL_FACTOR

PRED_MASK_FOLDER = "predicted_masks"
_SCENE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class InstancePredictions:
    """One scene's predictions as read back: masks (K, N) bool, scores (K,) float64, label_ids (K,) int64."""

    masks: np.ndarray
    scores: np.ndarray
    label_ids: np.ndarray


def _check_scene_name(scene: str) -> None:
    # The official reader splits lines on single spaces and joins relative paths: names must be plain.
    if not _SCENE_NAME.match(scene) or scene in {".", ".."}:
        raise ValueError(f"scene name {scene!r} must match {_SCENE_NAME.pattern} (it becomes a file name)")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _mask_bytes(mask: np.ndarray) -> bytes:
    lines = np.empty((len(mask), 2), dtype=np.uint8)
    lines[:, 0] = ord("0") + mask.astype(np.uint8)
    lines[:, 1] = ord("\n")
    return lines.tobytes()


def _ids_bytes(ids: np.ndarray) -> bytes:
    return "".join(f"{value}\n" for value in ids.tolist()).encode()


def _load_ids(path: Path) -> np.ndarray:
    try:
        return np.array(path.read_text().split(), dtype=np.int64)
    except ValueError as error:
        raise ValueError(f"{path}: expected one integer per line ({error})") from error


def write_instance_predictions(
    folder: str | Path,
    scene: str,
    pred_masks: np.ndarray,
    pred_scores: np.ndarray,
    pred_label_ids: np.ndarray,
) -> Path:
    """Write one scene's submission files; returns the path of `<scene>.txt`.

    pred_masks (K, N) bool over the scene's mesh vertices; pred_scores (K,); pred_label_ids (K,) benchmark label
    ids (`InstanceBenchmark.class_id_of_index` converts a model's contiguous classes).
    """
    _check_scene_name(scene)
    folder = Path(folder)
    pred_masks = np.asarray(pred_masks) != 0
    pred_scores = np.asarray(pred_scores, dtype=np.float64)
    pred_label_ids = np.asarray(pred_label_ids)
    num_preds = len(pred_masks)
    if pred_masks.ndim != 2 or pred_scores.shape != (num_preds,) or pred_label_ids.shape != (num_preds,):
        raise ValueError(
            f"{scene}: expected pred_masks (K, N), pred_scores (K,), pred_label_ids (K,); got "
            f"{pred_masks.shape}, {pred_scores.shape}, {pred_label_ids.shape}"
        )
    if not np.isfinite(pred_scores).all():
        raise ValueError(f"{scene}: pred_scores must be finite")
    lines = []
    for k in range(num_preds):
        relative = f"{PRED_MASK_FOLDER}/{scene}_{k}.txt"
        _write_atomic(folder / relative, _mask_bytes(pred_masks[k]))
        # repr() round-trips the float exactly, so ties and ranking survive the file.
        lines.append(f"{relative} {int(pred_label_ids[k])} {float(pred_scores[k])!r}\n")
    scene_file = folder / f"{scene}.txt"
    _write_atomic(scene_file, "".join(lines).encode())
    return scene_file


def read_instance_predictions(folder: str | Path, scene: str, num_points: int) -> InstancePredictions:
    """Read `<folder>/<scene>.txt` and its masks; every mask must have `num_points` lines (the mesh's vertices)."""
    _check_scene_name(scene)
    folder = Path(folder).resolve()
    scene_file = folder / f"{scene}.txt"
    masks, scores, label_ids = [], [], []
    for number, line in enumerate(scene_file.read_text().splitlines(), start=1):
        parts = line.split(" ")
        if len(parts) != 3:
            raise ValueError(f"{scene_file}:{number}: expected `<relative mask path> <label id> <confidence>`, got {line!r}")
        relative, label, confidence = parts
        mask_file = (scene_file.parent / relative).resolve()
        if Path(relative).is_absolute() or not mask_file.is_relative_to(folder):
            raise ValueError(f"{scene_file}:{number}: mask path {relative!r} must be relative and inside {folder}")
        mask = _load_ids(mask_file) != 0
        if len(mask) != num_points:
            raise ValueError(f"{mask_file}: {len(mask)} lines, expected {num_points} (one per mesh vertex)")
        masks.append(mask)
        label_ids.append(int(float(label)))
        scores.append(float(confidence))
    return InstancePredictions(
        masks=np.array(masks, dtype=bool).reshape(len(masks), num_points),
        scores=np.array(scores, dtype=np.float64),
        label_ids=np.array(label_ids, dtype=np.int64),
    )


def encode_ground_truth(gt_instance_ids: np.ndarray, gt_semantic_ids: np.ndarray, benchmark: InstanceBenchmark) -> np.ndarray:
    """(N,) official GT ids: label_id * 1000 + instance id; 0 where the point has no instance or a void class.

    gt_instance_ids (N,) int (0 = none, must stay below 1000); gt_semantic_ids (N,) raw ScanNet ids.
    """
    gt_instance_ids = np.asarray(gt_instance_ids, dtype=np.int64)
    gt_class = benchmark.gt_class_index(gt_semantic_ids)
    if gt_instance_ids.shape != gt_class.shape:
        raise ValueError(f"gt_instance_ids {gt_instance_ids.shape} and gt_semantic_ids {gt_class.shape} differ in shape")
    counted = (gt_class != VOID) & (gt_instance_ids != 0)
    instances = gt_instance_ids[counted]
    if instances.size and (instances.min() < 1 or instances.max() >= GT_LABEL_FACTOR):
        raise ValueError(f"GT instance ids must lie in [1, {GT_LABEL_FACTOR - 1}] to be encoded as label_id * 1000 + instance")
    label_ids = np.asarray(benchmark.class_ids, dtype=np.int64)[np.where(counted, gt_class, 0)]
    return np.where(counted, label_ids * GT_LABEL_FACTOR + gt_instance_ids, 0)


def write_ground_truth(
    folder: str | Path, scene: str, gt_instance_ids: np.ndarray, gt_semantic_ids: np.ndarray, benchmark: InstanceBenchmark
) -> Path:
    """Write `<folder>/<scene>.txt` in the official GT format of `benchmark`; returns its path."""
    _check_scene_name(scene)
    path = Path(folder) / f"{scene}.txt"
    _write_atomic(path, _ids_bytes(encode_ground_truth(gt_instance_ids, gt_semantic_ids, benchmark)))
    return path


def read_ground_truth(folder: str | Path, scene: str) -> np.ndarray:
    """(N,) int64 GT ids of `<folder>/<scene>.txt` (feed to `InstanceEvaluator.add_scene_encoded`)."""
    _check_scene_name(scene)
    return _load_ids(Path(folder) / f"{scene}.txt")
