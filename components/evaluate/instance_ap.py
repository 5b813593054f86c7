"""Instance AP / AP50 / AP25 as the official ScanNet `evaluate_semantic_instance.py` computes them.

The official script (BenchmarkScripts/3d_evaluation, adapted from Cityscapes) is followed step by step:

- overlaps `np.append(np.arange(0.5, 0.95, 0.05), 0.25)` (0.50 ... 0.90, then 0.25; 0.95 is not included);
  AP = mean over 0.50 ... 0.90, AP50 and AP25 at 0.5 and 0.25; a match needs IoU strictly above the threshold.
- GT instances with fewer than `min_region_size` (100) points are not counted; predictions with fewer are dropped,
  and so are predictions whose label is not a class of the benchmark.
- Matching per class: GT instances in id order, each takes the first not-yet-used prediction (in input order)
  above the threshold; further predictions above the threshold on the same GT are false positives (the GT keeps
  the highest score). GT instances without a match are "hard" false negatives.
- A prediction above the threshold with no GT (not even a small one) is a false positive unless the fraction of
  its points on void GT or on small GT instances of its class exceeds the threshold (`proportion_ignore`).
- The precision/recall curve has one point per distinct score (precision/recall of all predictions scoring at
  least that much) plus an artificial (recall 0, precision 1) end point; AP = sum of precision times half the
  recall drop between each point's neighbours (the official `np.convolve(recall, [-0.5, 0, 0.5])` step widths).
- Per class: NaN when no scene has a counted GT instance, 0 when there is GT but no prediction (or every
  prediction was ignored, ScanNet PR #26). Means are `np.nanmean` over classes, so NaN classes drop out.
- ScanNet200 head/common/tail: `np.nanmean` of the per-class values within each split (as Mask3D reports them).

Differences to the script's input handling: GT arrives per point as (instance id, raw semantic id) or the
official encoded ids, and predictions as boolean masks, so scenes are reduced to small per-class overlap tables
as they are added; whole-dataset masks never sit in memory. Prediction order (the script's file order) is the
row order of `pred_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bifusion.components.evaluate.benchmark_classes import VOID, InstanceBenchmark

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100
GT_LABEL_FACTOR = 1000  # official GT encoding: label_id * 1000 + instance id


@dataclass(frozen=True)
class _ClassBlock:
    """One class in one scene: overlaps between its P kept predictions and its G GT instances (all sizes)."""

    iou: np.ndarray  # (P, G) float64
    gt_counted: np.ndarray  # (G,) bool: at least min_region_size points
    pred_score: np.ndarray  # (P,) float64
    ignored_fraction: np.ndarray  # (P,) share of the prediction on void GT or on small GT of its class


@dataclass(frozen=True)
class InstanceAPResult:
    """Per-class and mean AP. Per-class arrays are `(C,)` in the benchmark's class order; NaN = no GT."""

    benchmark: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    overlaps: np.ndarray  # (O,)
    ap_per_overlap: np.ndarray  # (C, O)
    ap: np.ndarray
    ap50: np.ndarray
    ap25: np.ndarray
    mean_ap: float
    mean_ap50: float
    mean_ap25: float
    split_means: dict[str, dict[str, float]] = field(default_factory=dict)  # "head" -> {"ap", "ap50", "ap25"}
    num_scenes: int = 0

    def summary(self) -> dict[str, float]:
        """Flat scalar metrics: ap, ap50, ap25 and, for ScanNet200, head_ap ... tail_ap25."""
        metrics = {"ap": self.mean_ap, "ap50": self.mean_ap50, "ap25": self.mean_ap25}
        for split, values in self.split_means.items():
            metrics.update({f"{split}_{name}": value for name, value in values.items()})
        return metrics


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def average_precision(scores: np.ndarray, is_true_positive: np.ndarray, hard_false_negatives: int) -> float:
    """Area under the official precision/recall curve of one class at one overlap threshold.

    scores (M,) of the matched GT (true positives) and of the false positives; is_true_positive (M,) bool;
    hard_false_negatives = GT instances that no prediction matched. Needs at least one GT instance.
    """
    if scores.size == 0:
        return 0.0
    thresholds = np.unique(scores)
    tp_scores = np.sort(scores[is_true_positive])
    fp_scores = np.sort(scores[~is_true_positive])
    tp = tp_scores.size - np.searchsorted(tp_scores, thresholds, side="left")
    fp = fp_scores.size - np.searchsorted(fp_scores, thresholds, side="left")
    fn = (tp_scores.size - tp) + hard_false_negatives
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    padded = np.concatenate([recall[:1], recall, [0.0]])
    step_widths = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(precision, step_widths))


def _match_block(block: _ClassBlock, threshold: float) -> tuple[list[float], list[float], int]:
    """True-positive scores, false-positive scores and hard false negatives of one class in one scene."""
    hit = block.iou > threshold
    used = np.zeros(len(block.pred_score), dtype=bool)
    tp_scores: list[float] = []
    fp_scores: list[float] = []
    hard_false_negatives = 0
    for gt in np.flatnonzero(block.gt_counted):
        candidates = np.flatnonzero(hit[:, gt] & ~used)
        if candidates.size == 0:
            hard_false_negatives += 1
            continue
        # The first candidate is the one marked used; the GT keeps the highest score, the rest are duplicates.
        used[candidates[0]] = True
        scores = block.pred_score[candidates]
        best = int(np.argmax(scores))
        tp_scores.append(float(scores[best]))
        fp_scores.extend(np.delete(scores, best).tolist())
    unmatched = ~hit.any(axis=1) & (block.ignored_fraction <= threshold)
    fp_scores.extend(block.pred_score[unmatched].tolist())
    return tp_scores, fp_scores, hard_false_negatives


class InstanceEvaluator:
    """Accumulates scenes one at a time, then computes the official AP table for one benchmark.

    The benchmark fixes the class space and whether evaluation is class-agnostic: the mode is never inferred
    from the predicted labels.
    """

    def __init__(self, benchmark: InstanceBenchmark, min_region_size: int = MIN_REGION_SIZE):
        self.benchmark = benchmark
        self.min_region_size = min_region_size
        self._blocks: list[list[_ClassBlock]] = [[] for _ in range(benchmark.num_classes)]
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
        """Add one scene of N points (or mesh vertices) and K predictions.

        gt_instance_ids (N,) int, 0 = no instance; gt_semantic_ids (N,) raw ScanNet ids; pred_masks (K, N) bool;
        pred_scores (K,) float; pred_class_ids (K,) benchmark label ids (None allowed for class-agnostic).
        A point is void when its class is not a benchmark class or it has no instance: that is all the
        official GT encoding (`label_id * 1000 + instance`, 0 = none) can express, so export and arrays agree.
        """
        gt_instance_ids = np.asarray(gt_instance_ids)
        gt_class = self.benchmark.gt_class_index(gt_semantic_ids)
        if gt_instance_ids.shape != gt_class.shape:
            raise ValueError(
                f"{scene}: gt_instance_ids {gt_instance_ids.shape} and gt_semantic_ids {gt_class.shape} differ in shape"
            )
        gt_class = np.where(gt_instance_ids == 0, VOID, gt_class)
        self._add(scene, gt_class, gt_instance_ids, pred_masks, pred_scores, pred_class_ids)

    def add_scene_encoded(
        self,
        scene: str,
        gt_encoded_ids: np.ndarray,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_class_ids: np.ndarray | None,
    ) -> None:
        """Like `add_scene`, with GT in the official file encoding: `label_id * 1000 + instance` per point.

        Label ids are the benchmark's (see `benchmark_export.encode_ground_truth`); points whose label is not a
        benchmark class are void, and every other distinct value is one GT instance, as in the official script.
        """
        gt_encoded_ids = np.asarray(gt_encoded_ids, dtype=np.int64)
        gt_class = self.benchmark.index_of_class_id(gt_encoded_ids // GT_LABEL_FACTOR)
        self._add(scene, gt_class, gt_encoded_ids, pred_masks, pred_scores, pred_class_ids)

    def _add(
        self,
        scene: str,
        gt_class: np.ndarray,
        gt_key: np.ndarray,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_class_ids: np.ndarray | None,
    ) -> None:
        if scene in self._scenes:
            raise ValueError(f"scene {scene!r} was already added to this evaluator")
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

        # GT instances = distinct (class, key) among non-void points, ordered by class then key (official order).
        if not np.issubdtype(gt_key.dtype, np.integer):
            raise TypeError(f"{scene}: GT instance ids must be integers, got dtype {gt_key.dtype}")
        on_instance = gt_class != VOID
        if (gt_key[on_instance] < 0).any():
            raise ValueError(f"{scene}: GT instance ids must be >= 0 (0 = no instance), got {gt_key[on_instance].min()}")
        key_span = int(gt_key[on_instance].max()) + 1 if on_instance.any() else 1
        instances, point_instance = np.unique(gt_class[on_instance] * key_span + gt_key[on_instance], return_inverse=True)
        gt_instance_of_point = np.full(num_points, -1, dtype=np.int64)
        gt_instance_of_point[on_instance] = point_instance
        gt_instance_class = instances // key_span
        gt_size = np.bincount(point_instance, minlength=len(instances))

        pred_size = pred_masks.sum(axis=1)
        kept = np.flatnonzero((pred_class != VOID) & (pred_size >= self.min_region_size))
        # Column 0 counts the void points of each prediction, column g + 1 its points on GT instance g.
        overlap = np.zeros((len(kept), len(instances) + 1), dtype=np.int64)
        for row, k in enumerate(kept):
            overlap[row] = np.bincount(gt_instance_of_point[pred_masks[k]] + 1, minlength=len(instances) + 1)
        pred_class, pred_size, pred_scores = pred_class[kept], pred_size[kept], pred_scores[kept]

        for c in np.union1d(gt_instance_class, pred_class):
            gts, preds = gt_instance_class == c, pred_class == c
            intersection = overlap[np.ix_(preds, np.append(False, gts))]
            size_p, size_g = pred_size[preds], gt_size[gts]
            gt_counted = size_g >= self.min_region_size
            ignored = overlap[preds, 0] + intersection[:, ~gt_counted].sum(axis=1)
            self._blocks[int(c)].append(
                _ClassBlock(
                    iou=intersection / (size_g[None, :] + size_p[:, None] - intersection),
                    gt_counted=gt_counted,
                    pred_score=pred_scores[preds],
                    ignored_fraction=ignored / size_p,
                )
            )
        self._scenes.add(scene)

    def compute(self) -> InstanceAPResult:
        """AP table over every scene added so far."""
        if not self._scenes:
            raise ValueError("InstanceEvaluator.compute: no scenes were added")
        table = np.full((self.benchmark.num_classes, len(OVERLAPS)), np.nan)
        for c, blocks in enumerate(self._blocks):
            if not any(block.gt_counted.any() for block in blocks):
                continue
            for o, threshold in enumerate(OVERLAPS):
                tp_scores: list[float] = []
                fp_scores: list[float] = []
                hard_false_negatives = 0
                for block in blocks:
                    tp, fp, fn = _match_block(block, threshold)
                    tp_scores += tp
                    fp_scores += fp
                    hard_false_negatives += fn
                scores = np.array(tp_scores + fp_scores, dtype=np.float64)
                is_tp = np.arange(len(scores)) < len(tp_scores)
                table[c, o] = average_precision(scores, is_tp, hard_false_negatives)
        return self._result(table)

    def _result(self, table: np.ndarray) -> InstanceAPResult:
        at_50 = np.isclose(OVERLAPS, 0.5)
        at_25 = np.isclose(OVERLAPS, 0.25)
        all_but_25 = ~at_25
        with np.errstate(invalid="ignore"):
            ap = table[:, all_but_25].mean(axis=1)
        ap50, ap25 = table[:, at_50][:, 0], table[:, at_25][:, 0]
        split_means: dict[str, dict[str, float]] = {}
        if self.benchmark.class_splits is not None:
            splits = np.asarray(self.benchmark.class_splits)
            for split in ("head", "common", "tail"):
                members = splits == split
                split_means[split] = {
                    "ap": _nanmean(ap[members]),
                    "ap50": _nanmean(ap50[members]),
                    "ap25": _nanmean(ap25[members]),
                }
        return InstanceAPResult(
            benchmark=self.benchmark.name,
            class_ids=self.benchmark.class_ids,
            class_names=self.benchmark.class_names,
            overlaps=OVERLAPS.copy(),
            ap_per_overlap=table,
            ap=ap,
            ap50=ap50,
            ap25=ap25,
            mean_ap=_nanmean(table[:, all_but_25]),
            mean_ap50=_nanmean(ap50),
            mean_ap25=_nanmean(ap25),
            split_means=split_means,
            num_scenes=self.num_scenes,
        )
