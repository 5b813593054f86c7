"""Instance coverage (mCov, mWCov) and precision / recall at IoU 0.5 (mPrec, mRec), accumulated scene by scene.

These are the instance metrics that papers print beside AP on S3DIS (ASIS, JSNet, PointGroup, SoftGroup). Their
reference code is ASIS's `models/ASIS/eval_iou_accuracy.py` (WXinlong/ASIS), which takes per-point instance
labels; SoftGroup's `S3DISEval` (thangvubk/SoftGroup, `softgroup/evaluation`) feeds it mask predictions by first
painting the masks into per-point labels in ascending score order. Kept from them:

- Overlapping masks are made disjoint as SoftGroup does: a point belongs to the highest-scoring prediction that
  contains it (ties: the earlier prediction), so each prediction is evaluated as the part of it that a per-point
  instance segmentation shows (a lower-scored duplicate loses its shared points, often all of them).
- Matching is per class: a GT instance of class c is covered by the predictions *labelled c* (ASIS builds
  `pts_in_gt[c]` and `pts_in_pred[c]` and only compares within one class; SGPN's `test.py` does the same). On the
  class-agnostic benchmark every prediction is an "object", so there coverage is the best IoU with any prediction.
- Cov of a GT instance = its best IoU with a prediction of its class (0 when there is none). Per scene and class:
  Cov = mean over the class's GT instances, WCov = the same mean weighted by each instance's point count over
  the class's GT points in that scene (ASIS: `ovmax * num_ins_gt_point / num_gt_point`). Per class: the mean of
  those per-scene values over the scenes where the class has GT (ASIS's `all_mean_cov[c]`), so every scene (here:
  every evaluated frame) weighs the same, not every instance.
- Prec / Rec at IoU >= 0.5 (ASIS's `ovmax >= at`, not AP's strict `>`): a prediction is a true positive when its
  best IoU with a GT instance of its class reaches 0.5. Counts are pooled over scenes per class: precision =
  true positives / (true + false positives), recall = GT instances reached by a prediction / GT instances.
  (ASIS divides true-positive predictions by GT instances; with disjoint predictions the two counts agree except
  for two halves of one GT at IoU exactly 0.5, which SoftGroup's `min(1, ...)` clips.)
- Means over classes and the ScanNet200 head/common/tail means are `np.nanmean` (SoftGroup's `mMUCov` ...).

Filtering and void handling are the ones `instance_ap.py` applies, so both tables describe the same instances:

- GT instances with fewer than `min_region_size` (100) points and points of no benchmark class (void) are not
  GT instances. Predictions with a label outside the benchmark are dropped before painting; painted predictions
  with fewer than `min_region_size` points are dropped (AP's size rule, applied to what is evaluated here).
- A class without any counted GT instance is NaN in every column (it is not evaluated, like AP); a class with GT
  but no prediction has coverage 0 and recall 0, and precision NaN (no predictions: 0 / 0 as in ASIS), so mPrec
  averages over the classes the model predicts and mRec charges the others.
- A prediction that is not a true positive is ignored (neither true nor false positive) when it reaches IoU 0.5
  with a small GT instance of its class, or when more than half of its points lie on void or on small GT instances
  of its class (the official script's `proportion_ignore` rule for false positives).

Every prediction passed counts: precision therefore depends on the post-processing's score threshold and top-k
(ESAM's single-view defaults keep up to 100 predictions per frame), as the papers' numbers depend on theirs.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from bifusion.components.evaluate.benchmark_classes import VOID, InstanceBenchmark
from bifusion.components.evaluate.instance_ap import MIN_REGION_SIZE

IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class CoverageResult:
    """Per-class arrays `(C,)` in the benchmark's class order; NaN = not defined (see the module docstring)."""

    benchmark: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    class_splits: tuple[str, ...] | None  # "head" | "common" | "tail" per class (ScanNet200 only)
    coverage: np.ndarray
    weighted_coverage: np.ndarray
    precision: np.ndarray  # at IoU >= 0.5
    recall: np.ndarray  # at IoU >= 0.5
    num_gt_instances: np.ndarray  # (C,) int: counted GT instances over all scenes
    num_predictions: np.ndarray  # (C,) int: true + false positives (ignored predictions excluded)
    mean_coverage: float
    mean_weighted_coverage: float
    mean_precision: float
    mean_recall: float
    split_means: dict[str, dict[str, float]] = field(default_factory=dict)  # "head" -> {"mcov", ...}
    num_scenes: int = 0

    def summary(self) -> dict[str, float]:
        """Flat scalar metrics: mcov, mwcov, mprec50, mrec50 and, for ScanNet200, head_mcov ... tail_mrec50."""
        metrics = {
            "mcov": self.mean_coverage,
            "mwcov": self.mean_weighted_coverage,
            "mprec50": self.mean_precision,
            "mrec50": self.mean_recall,
        }
        for split, values in self.split_means.items():
            metrics.update({f"{split}_{name}": value for name, value in values.items()})
        return metrics


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class CoverageEvaluator:
    """Accumulates scenes one at a time, then computes coverage, precision and recall for one benchmark."""

    def __init__(self, benchmark: InstanceBenchmark, min_region_size: int = MIN_REGION_SIZE):
        self.benchmark = benchmark
        self.min_region_size = min_region_size
        num_classes = benchmark.num_classes
        self._scene_coverage: list[list[float]] = [[] for _ in range(num_classes)]
        self._scene_weighted_coverage: list[list[float]] = [[] for _ in range(num_classes)]
        self._gt_instances = np.zeros(num_classes, dtype=np.int64)
        self._gt_reached = np.zeros(num_classes, dtype=np.int64)
        self._true_positives = np.zeros(num_classes, dtype=np.int64)
        self._false_positives = np.zeros(num_classes, dtype=np.int64)
        self._scenes: set[str] = set()

    @property
    def num_scenes(self) -> int:
        return len(self._scenes)

    def add_scene(
        self,
        scene: str,
        gt_instance_ids: np.ndarray,
        gt_semantic_ids: np.ndarray,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_class_ids: np.ndarray | None,
    ) -> None:
        """Add one scene of N points and K predictions (the arguments of `InstanceEvaluator.add_scene`).

        gt_instance_ids (N,) int, 0 = no instance; gt_semantic_ids (N,) raw ScanNet ids; pred_masks (K, N) bool;
        pred_scores (K,) float (decide which prediction keeps a point where masks overlap); pred_class_ids (K,)
        benchmark label ids (None allowed for class-agnostic benchmarks).
        """
        if scene in self._scenes:
            raise ValueError(f"scene {scene!r} was already added to this evaluator")
        gt_instance_ids = np.asarray(gt_instance_ids)
        if not np.issubdtype(gt_instance_ids.dtype, np.integer):
            raise TypeError(f"{scene}: gt_instance_ids must be integers, got dtype {gt_instance_ids.dtype}")
        gt_class = self.benchmark.gt_class_index(gt_semantic_ids)
        if gt_instance_ids.shape != gt_class.shape:
            raise ValueError(f"{scene}: gt_instance_ids {gt_instance_ids.shape} and gt_semantic_ids {gt_class.shape} differ in shape")
        gt_class = np.where(gt_instance_ids == 0, VOID, gt_class)
        num_points = len(gt_class)
        pred_masks = np.asarray(pred_masks)
        if pred_masks.ndim != 2 or pred_masks.shape[1] != num_points:
            raise ValueError(f"{scene}: pred_masks must have shape (K, {num_points}), got {pred_masks.shape}")
        pred_masks = pred_masks != 0
        num_preds = pred_masks.shape[0]
        pred_scores = np.asarray(pred_scores, dtype=np.float64)
        if pred_scores.shape != (num_preds,) or not np.isfinite(pred_scores).all():
            raise ValueError(f"{scene}: pred_scores must be ({num_preds},) finite floats, got shape {pred_scores.shape}")
        pred_class = self.benchmark.pred_class_index(pred_class_ids, num_preds)

        # GT instances = distinct (class, instance id) among non-void points, as in instance_ap.py.
        on_instance = gt_class != VOID
        if (gt_instance_ids[on_instance] < 0).any():
            raise ValueError(f"{scene}: gt_instance_ids must be >= 0 (0 = no instance)")
        key_span = int(gt_instance_ids[on_instance].max()) + 1 if on_instance.any() else 1
        instances, point_instance = np.unique(gt_class[on_instance] * key_span + gt_instance_ids[on_instance], return_inverse=True)
        gt_instance_of_point = np.full(num_points, -1, dtype=np.int64)
        gt_instance_of_point[on_instance] = point_instance
        gt_instance_class = instances // key_span
        gt_size = np.bincount(point_instance, minlength=len(instances))
        counted = gt_size >= self.min_region_size

        # Paint lowest score first so the highest-scoring mask keeps a shared point (SoftGroup's S3DISEval).
        owner = np.full(num_points, -1, dtype=np.int64)
        for k in np.argsort(-pred_scores, kind="stable")[::-1]:
            if pred_class[k] != VOID:
                owner[pred_masks[k]] = k
        painted = owner >= 0
        # Row k, column 0: void points of painted prediction k; column g + 1: its points on GT instance g.
        cells = owner[painted] * (len(instances) + 1) + gt_instance_of_point[painted] + 1
        overlap = np.bincount(cells, minlength=num_preds * (len(instances) + 1)).reshape(num_preds, len(instances) + 1)
        pred_size = overlap.sum(axis=1)
        kept = (pred_class != VOID) & (pred_size > 0) & (pred_size >= self.min_region_size)
        overlap, pred_class, pred_size = overlap[kept], pred_class[kept], pred_size[kept]
        intersection = overlap[:, 1:]
        same_class = pred_class[:, None] == gt_instance_class[None, :]
        iou = np.where(same_class, intersection / (gt_size[None, :] + pred_size[:, None] - intersection), 0.0)

        gt_best = iou.max(axis=0, initial=0.0)
        for c in np.unique(gt_instance_class[counted]):
            members = counted & (gt_instance_class == c)
            self._scene_coverage[c].append(float(gt_best[members].mean()))
            self._scene_weighted_coverage[c].append(float(np.dot(gt_best[members], gt_size[members]) / gt_size[members].sum()))
            self._gt_instances[c] += int(members.sum())
            self._gt_reached[c] += int((gt_best[members] >= IOU_THRESHOLD).sum())

        true_positive = iou[:, counted].max(axis=1, initial=0.0) >= IOU_THRESHOLD
        on_small = iou[:, ~counted].max(axis=1, initial=0.0) >= IOU_THRESHOLD
        ignored_points = overlap[:, 0] + np.where(same_class & ~counted[None, :], intersection, 0).sum(axis=1)
        ignored = on_small | (ignored_points / np.maximum(pred_size, 1) > IOU_THRESHOLD)
        false_positive = ~true_positive & ~ignored
        np.add.at(self._true_positives, pred_class, true_positive)
        np.add.at(self._false_positives, pred_class, false_positive)
        self._scenes.add(scene)

    def compute(self) -> CoverageResult:
        """Coverage, precision and recall over every scene added so far."""
        if not self._scenes:
            raise ValueError("CoverageEvaluator.compute: no scenes were added")
        has_gt = self._gt_instances > 0
        predictions = self._true_positives + self._false_positives
        coverage = np.array([np.mean(values) if values else np.nan for values in self._scene_coverage])
        weighted = np.array([np.mean(values) if values else np.nan for values in self._scene_weighted_coverage])
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(has_gt, self._gt_reached / self._gt_instances, np.nan)
            precision = np.where(has_gt & (predictions > 0), self._true_positives / predictions, np.nan)
        per_class = {"mcov": coverage, "mwcov": weighted, "mprec50": precision, "mrec50": recall}
        split_means: dict[str, dict[str, float]] = {}
        if self.benchmark.class_splits is not None:
            splits = np.asarray(self.benchmark.class_splits)
            for split in ("head", "common", "tail"):
                split_means[split] = {name: _nanmean(values[splits == split]) for name, values in per_class.items()}
        return CoverageResult(
            benchmark=self.benchmark.name,
            class_ids=self.benchmark.class_ids,
            class_names=self.benchmark.class_names,
            class_splits=self.benchmark.class_splits,
            coverage=coverage,
            weighted_coverage=weighted,
            precision=precision,
            recall=recall,
            num_gt_instances=self._gt_instances.copy(),
            num_predictions=predictions,
            mean_coverage=_nanmean(coverage),
            mean_weighted_coverage=_nanmean(weighted),
            mean_precision=_nanmean(precision),
            mean_recall=_nanmean(recall),
            split_means=split_means,
            num_scenes=self.num_scenes,
        )


def coverage_table(result: CoverageResult) -> str:
    """CSV of the per-class values: class_id, class_name, split, num_gt, mcov, mwcov, mprec50, mrec50."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class_name", "split", "num_gt", "mcov", "mwcov", "mprec50", "mrec50"])
    columns = (result.coverage, result.weighted_coverage, result.precision, result.recall)
    for index, (class_id, name) in enumerate(zip(result.class_ids, result.class_names)):
        split = result.class_splits[index] if result.class_splits else ""
        writer.writerow([class_id, name, split, int(result.num_gt_instances[index]), *(f"{values[index]:.6f}" for values in columns)])
    return buffer.getvalue()
