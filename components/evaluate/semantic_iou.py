"""Semantic IoU as the official ScanNet `evaluate_semantic_label.py` computes it, accumulated scene by scene.

Official conventions kept here:

- points whose GT is not a benchmark class (ignore index) are skipped;
- a prediction that is not a benchmark class (e.g. the ignore index) counts as a miss for the GT class and as a
  false positive for no class (the script's UNKNOWN_ID column);
- IoU_c = TP / (TP + FP + FN); NaN when TP + FP + FN = 0. A class absent from GT but predicted gets 0.

The official script prints per-class IoU only. `mean_iou` averages over the classes present in GT, which is how
ScanNet200 treats categories missing from the validation set ("we don't evaluate on unseen validation
categories", BenchmarkScripts/ScanNet200/scannet200_splits.py); on the ScanNet20 test set every class is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bifusion.components.evaluate.benchmark_classes import SemanticLabelSpace


@dataclass(frozen=True)
class SemanticIoUResult:
    """Per-class arrays `(C,)` in the label space's order."""

    label_space: str
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    confusion: np.ndarray  # (C, C + 1) int64: rows GT class, columns predicted class, last column = not a class
    iou: np.ndarray  # official per-class IoU, NaN when the class has neither GT nor predictions
    gt_present: np.ndarray  # bool: the class has GT points
    mean_iou: float  # mean of `iou` over classes present in GT
    accuracy: float  # overall point accuracy over non-ignored GT points
    split_mean_iou: dict[str, float]  # ScanNet200 "head" / "common" / "tail" -> mean IoU (GT-present classes)

    def summary(self) -> dict[str, float]:
        """Flat scalar metrics: miou, accuracy and, for ScanNet200, head_miou ... tail_miou."""
        metrics = {"miou": self.mean_iou, "accuracy": self.accuracy}
        metrics.update({f"{split}_miou": value for split, value in self.split_mean_iou.items()})
        return metrics


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


class SemanticIoUEvaluator:
    """Confusion matrix over scenes for one semantic label space."""

    def __init__(self, label_space: SemanticLabelSpace):
        self.label_space = label_space
        num_classes = label_space.num_classes
        self._confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @property
    def confusion(self) -> np.ndarray:
        """(C, C + 1) counts so far: rows GT class, columns predicted class, last column = not a class."""
        return self._confusion.copy()

    def add_scene(self, gt_semantic_ids: np.ndarray, pred_class_indices: np.ndarray) -> None:
        """gt_semantic_ids (N,) raw ScanNet ids; pred_class_indices (N,) contiguous indices of this label space
        (e.g. ESAM's ScanNet200 order; `label_space.index_of_class_id` converts benchmark label ids)."""
        gt = self.label_space.index_of_raw(gt_semantic_ids)
        pred = np.asarray(pred_class_indices)
        if pred.shape != gt.shape:
            raise ValueError(f"pred_class_indices {pred.shape} and gt_semantic_ids {gt.shape} differ in shape")
        if not np.issubdtype(pred.dtype, np.integer):
            raise TypeError(f"pred_class_indices must be integers, got dtype {pred.dtype}")
        num_classes = self.label_space.num_classes
        valid = gt != self.label_space.ignore_index
        pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
        cells = gt[valid] * (num_classes + 1) + pred[valid]
        self._confusion += np.bincount(cells, minlength=self._confusion.size).reshape(self._confusion.shape)

    def compute(self) -> SemanticIoUResult:
        confusion = self.confusion
        num_classes = self.label_space.num_classes
        tp = np.diag(confusion[:, :num_classes]).astype(np.float64)
        gt_total = confusion.sum(axis=1)
        fp = confusion[:, :num_classes].sum(axis=0) - tp
        denominator = gt_total + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(denominator > 0, tp / denominator, np.nan)
        gt_present = gt_total > 0
        total = gt_total.sum()
        split_mean_iou: dict[str, float] = {}
        if self.label_space.class_splits is not None:
            splits = np.asarray(self.label_space.class_splits)
            split_mean_iou = {split: _mean(iou[gt_present & (splits == split)]) for split in ("head", "common", "tail")}
        return SemanticIoUResult(
            label_space=self.label_space.name,
            class_ids=self.label_space.class_ids,
            class_names=self.label_space.class_names,
            confusion=confusion,
            iou=iou,
            gt_present=gt_present,
            mean_iou=_mean(iou[gt_present]),
            accuracy=float(tp.sum() / total) if total else float("nan"),
            split_mean_iou=split_mean_iou,
        )
