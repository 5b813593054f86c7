"""Semantic IoU on a hand-worked example in the ScanNet20 label space."""

from __future__ import annotations

import numpy as np
import pytest

from bifusion.components.evaluate.benchmark_classes import scannet20_semantic_space, scannet200_semantic_space
from bifusion.components.evaluate.semantic_iou import SemanticIoUEvaluator

# ScanNet20 indices: wall 0, floor 1, chair 4, table 6; ignore 20. Raw ids: wall 1, floor 3, chair 2, unannotated 0.
WALL, FLOOR, CHAIR, TABLE, IGNORE = 0, 1, 4, 6, 20


def test_three_class_example_split_over_two_scenes():
    # GT   : wall wall wall wall | floor floor floor | chair chair chair | unannotated x2
    # pred : wall wall wall IGN  | floor floor chair | chair chair table | chair wall
    # wall : TP 3, FN 1 (predicted ignore = no class: no FP anywhere)       -> 3/4
    # floor: TP 2, FN 1                                                     -> 2/3
    # chair: TP 2, FN 1 (table), FP 1 (floor point)                         -> 2/4
    # table: TP 0, FP 1, no GT -> IoU 0 but not in the mean; unannotated GT points are skipped entirely.
    # mean over GT classes = (3/4 + 2/3 + 1/2) / 3 = 23/36; accuracy 7/10.
    gt_raw = np.array([1, 1, 1, 1, 3, 3, 3, 2, 2, 2, 0, 0])
    pred = np.array([WALL, WALL, WALL, IGNORE, FLOOR, FLOOR, CHAIR, CHAIR, CHAIR, TABLE, CHAIR, WALL])
    evaluator = SemanticIoUEvaluator(scannet20_semantic_space())
    evaluator.add_scene(gt_raw[:7], pred[:7])
    evaluator.add_scene(gt_raw[7:], pred[7:])
    result = evaluator.compute()

    assert result.iou[WALL] == 0.75
    assert result.iou[FLOOR] == pytest.approx(2 / 3)
    assert result.iou[CHAIR] == 0.5
    assert result.iou[TABLE] == 0.0 and not result.gt_present[TABLE]
    assert np.isnan(np.delete(result.iou, [WALL, FLOOR, CHAIR, TABLE])).all()
    assert result.mean_iou == pytest.approx(23 / 36)
    assert result.accuracy == pytest.approx(0.7)

    assert result.confusion.shape == (20, 21)
    assert result.confusion[WALL, WALL] == 3 and result.confusion[WALL, 20] == 1
    assert result.confusion[FLOOR, CHAIR] == 1 and result.confusion[CHAIR, TABLE] == 1
    assert result.confusion.sum() == 10
    assert result.split_mean_iou == {} and result.summary() == {"miou": result.mean_iou, "accuracy": result.accuracy}


def test_scannet200_uses_esam_order_and_splits():
    # Index 1 is floor in ESAM's order (raw 3); a perfect floor/chair prediction gives IoU 1 for both.
    space = scannet200_semantic_space()
    gt_raw = np.array([3, 3, 2, 2, 79])  # floor, floor, chair, chair, paper (tail)
    pred = np.array([1, 1, 2, 2, 1])  # the paper point predicted as floor
    evaluator = SemanticIoUEvaluator(space)
    evaluator.add_scene(gt_raw, pred)
    result = evaluator.compute()
    # floor: TP 2, FP 1 -> 2/3; chair 1; paper 0. head = (2/3 + 1) / 2, tail = 0, common: no GT -> NaN.
    assert result.iou[1] == pytest.approx(2 / 3) and result.iou[2] == 1.0
    assert result.split_mean_iou["head"] == pytest.approx(5 / 6)
    assert result.split_mean_iou["tail"] == 0.0 and np.isnan(result.split_mean_iou["common"])


def test_rejects_mismatched_shapes_and_float_predictions():
    evaluator = SemanticIoUEvaluator(scannet20_semantic_space())
    with pytest.raises(ValueError, match="shape"):
        evaluator.add_scene(np.array([1, 2]), np.array([0]))
    with pytest.raises(TypeError, match="integers"):
        evaluator.add_scene(np.array([1, 2]), np.array([0.0, 1.0]))
