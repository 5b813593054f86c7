"""mCov / mWCov / mPrec / mRec against hand-computed values of ASIS's definitions (see coverage.py).

IoU arithmetic in the comments: IoU = |P & G| / (|P| + |G| - |P & G|).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from bifusion.components.evaluate.benchmark_classes import class_agnostic_instance_benchmark, scannet200_instance_benchmark
from bifusion.components.evaluate.coverage import CoverageEvaluator, coverage_table

CHAIR, TABLE, WALL, UNLABELED = 2, 4, 1, 0  # raw ScanNet ids; wall (stuff) and unlabeled are void
PAPER = 79  # a ScanNet200 tail class


class Scene:
    """GT laid out as consecutive runs of points; predictions are unions of slices of those runs."""

    def __init__(self, *runs: tuple[int, int, int]):
        """runs: (instance id, raw semantic id, number of points)."""
        self.instance = np.concatenate([np.full(size, inst) for inst, _, size in runs]).astype(np.int64)
        self.semantic = np.concatenate([np.full(size, raw) for _, raw, size in runs]).astype(np.int64)
        starts = np.cumsum([0] + [size for _, _, size in runs])
        self.runs = [np.arange(starts[i], starts[i + 1]) for i in range(len(runs))]
        self.masks: list[np.ndarray] = []
        self.labels: list[int] = []

    def predict(self, label: int, *parts: tuple[int, int, int]) -> Scene:
        """parts: (run index, first point, end point) slices of the runs."""
        mask = np.zeros(len(self.instance), dtype=bool)
        for run, start, stop in parts:
            mask[self.runs[run][start:stop]] = True
        self.masks.append(mask)
        self.labels.append(label)
        return self

    def add_to(self, evaluator: CoverageEvaluator, name: str = "scene0000_00") -> CoverageEvaluator:
        masks = np.array(self.masks, dtype=bool).reshape(len(self.masks), len(self.instance))
        scores = np.linspace(0.9, 0.1, len(self.masks))
        evaluator.add_scene(name, self.instance, self.semantic, masks, scores, np.array(self.labels, dtype=np.int64))
        return evaluator


def class_index(raw_id: int, benchmark=None) -> int:
    return (benchmark or scannet200_instance_benchmark()).class_ids.index(raw_id)


def scannet200(*scenes: Scene):
    evaluator = CoverageEvaluator(scannet200_instance_benchmark())
    for i, scene in enumerate(scenes):
        scene.add_to(evaluator, f"scene{i:04d}_00")
    return evaluator.compute()


def one_chair_class_scene() -> Scene:
    # Runs: 0 chair A (200), 1 chair B (100), 2 chair C (50: too small to count), 3 wall (void, 120).
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 100), (3, CHAIR, 50), (4, WALL, 120))
    scene.predict(CHAIR, (0, 0, 150), (3, 0, 50))  # P1: 150 of A + 50 void -> IoU(A) = 150 / 250 = 0.6: TP
    scene.predict(CHAIR, (1, 0, 40), (3, 50, 110))  # P2: IoU(B) = 40 / 160 = 0.25; 60 % void -> ignored
    scene.predict(CHAIR, (0, 150, 200), (1, 40, 100))  # P3: IoU(A) = 50 / 260, IoU(B) = 60 / 150 = 0.4: FP
    scene.predict(CHAIR, (1, 0, 99))  # P4 (lowest score): painted over by P2 and P3, so nothing is left
    return scene


def test_coverage_precision_recall_of_one_class() -> None:
    result = scannet200(one_chair_class_scene())
    chair = class_index(CHAIR)
    # Cov(A) = max(0.6, 50/260) = 0.6, Cov(B) = max(0.25, 0.4) = 0.4; C is not counted.
    assert result.coverage[chair] == pytest.approx(0.5)
    assert result.weighted_coverage[chair] == pytest.approx((0.6 * 200 + 0.4 * 100) / 300)
    assert result.num_gt_instances[chair] == 2
    assert result.recall[chair] == pytest.approx(0.5)  # A reached, B not
    assert result.precision[chair] == pytest.approx(0.5)  # P1 TP, P3 FP, P2 ignored, P4 dropped
    assert result.num_predictions[chair] == 2
    assert result.mean_coverage == pytest.approx(0.5)  # the only class with GT
    assert math.isnan(result.coverage[class_index(TABLE)])


def test_coverage_matches_within_the_predicted_class_only() -> None:
    # A prediction labelled table that is exactly the chair: covers it class-agnostically, not class-aware.
    def scene() -> Scene:
        return Scene((1, CHAIR, 150), (0, UNLABELED, 10)).predict(TABLE, (0, 0, 150))

    aware = scannet200(scene())
    chair, table = class_index(CHAIR), class_index(TABLE)
    assert aware.coverage[chair] == 0.0
    assert aware.recall[chair] == 0.0
    assert math.isnan(aware.precision[chair])  # no prediction labelled chair: 0 / 0
    assert math.isnan(aware.precision[table])  # table has no GT: not evaluated, like AP
    assert aware.num_predictions[table] == 1  # counted as a false positive of a class without GT

    agnostic = CoverageEvaluator(class_agnostic_instance_benchmark())
    result = scene().add_to(agnostic).compute()
    assert result.coverage[0] == 1.0 and result.recall[0] == 1.0 and result.precision[0] == 1.0


def test_coverage_averages_scenes_then_classes() -> None:
    # Scene 1: chair A (100) covered exactly, chair B (300) not at all: Cov 0.5, WCov 100 / 400 = 0.25.
    first = Scene((1, CHAIR, 100), (2, CHAIR, 300)).predict(CHAIR, (0, 0, 100))
    # Scene 2: one chair covered exactly: Cov 1, WCov 1. Per class: mean over scenes (ASIS), not over instances.
    second = Scene((7, CHAIR, 100)).predict(CHAIR, (0, 0, 100))
    # Scene 3: paper (tail) with GT and no prediction: Cov 0, Rec 0, Prec NaN.
    third = Scene((1, PAPER, 120))
    result = scannet200(first, second, third)
    chair, paper = class_index(CHAIR), class_index(PAPER)
    assert result.coverage[chair] == pytest.approx(0.75)  # pooled over instances it would be 2 / 3
    assert result.weighted_coverage[chair] == pytest.approx(0.625)
    assert result.recall[chair] == pytest.approx(2 / 3)  # counts are pooled: 2 of 3 GT reached
    assert result.precision[chair] == 1.0
    assert (result.coverage[paper], result.recall[paper]) == (0.0, 0.0)
    assert math.isnan(result.precision[paper])
    assert result.mean_coverage == pytest.approx((0.75 + 0.0) / 2)
    assert result.mean_precision == 1.0  # NaN classes drop out
    assert result.split_means["head"]["mcov"] == pytest.approx(0.75)
    assert result.split_means["tail"]["mrec50"] == 0.0
    assert math.isnan(result.split_means["common"]["mcov"])
    summary = result.summary()
    assert summary["mcov"] == pytest.approx(0.375) and summary["tail_mcov"] == 0.0
    assert set(summary) >= {"mcov", "mwcov", "mprec50", "mrec50", "head_mwcov", "common_mprec50"}


def test_iou_of_exactly_one_half_is_a_match() -> None:
    # 100 of a 200-point chair: IoU = 100 / 200 = 0.5, a match under ASIS's `>=` (AP would need > 0.5).
    result = scannet200(Scene((1, CHAIR, 200)).predict(CHAIR, (0, 0, 100)))
    chair = class_index(CHAIR)
    assert (result.recall[chair], result.precision[chair], result.coverage[chair]) == (1.0, 1.0, 0.5)


def test_overlapping_masks_are_painted_by_score() -> None:
    # Chairs A and B (200 points each). Scores fall in input order (0.9, 0.5, 0.1).
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 200), (0, UNLABELED, 60))
    scene.predict(CHAIR, (0, 0, 200))  # P1: A
    scene.predict(CHAIR, (0, 0, 200), (1, 0, 150))  # P2: A + 150 of B; keeps only B's 150: IoU(B) = 0.75
    scene.predict(CHAIR, (0, 0, 200), (2, 0, 60))  # P3: A + 60 void; keeps 60 points: under 100, dropped
    result = scannet200(scene)
    chair = class_index(CHAIR)
    # Unpainted, P2 would reach A (IoU 200 / 350) but only cover B with 150 / 350, and P3 would be a duplicate.
    assert result.coverage[chair] == pytest.approx((1.0 + 0.75) / 2)
    assert result.recall[chair] == 1.0
    assert result.precision[chair] == 1.0
    assert result.num_predictions[chair] == 2
    # Equal scores: the earlier prediction keeps the shared points.
    tied = Scene((1, CHAIR, 200)).predict(CHAIR, (0, 0, 200)).predict(CHAIR, (0, 0, 200))
    evaluator = CoverageEvaluator(scannet200_instance_benchmark())
    evaluator.add_scene("tied", tied.instance, tied.semantic, np.array(tied.masks), np.array([0.5, 0.5]), np.array([CHAIR, TABLE]))
    tied_result = evaluator.compute()
    assert tied_result.num_predictions[chair] == 1 and tied_result.num_predictions[class_index(TABLE)] == 0


def test_prediction_on_a_small_gt_instance_is_ignored() -> None:
    # Chair B has 90 points (< 100): not a GT instance; a prediction matching it (IoU 90 / 110) is no FP.
    scene = Scene((1, CHAIR, 150), (2, CHAIR, 90), (0, UNLABELED, 20))
    scene.predict(CHAIR, (0, 0, 150)).predict(CHAIR, (1, 0, 90), (2, 0, 20))
    result = scannet200(scene)
    chair = class_index(CHAIR)
    assert result.num_gt_instances[chair] == 1
    assert result.precision[chair] == 1.0
    assert result.num_predictions[chair] == 1


def test_coverage_table_lists_every_class() -> None:
    result = scannet200(one_chair_class_scene())
    rows = list(csv.DictReader(io.StringIO(coverage_table(result))))
    assert len(rows) == scannet200_instance_benchmark().num_classes
    chair = rows[class_index(CHAIR)]
    assert (chair["class_name"], chair["split"], chair["num_gt"]) == ("chair", "head", "2")
    assert float(chair["mcov"]) == pytest.approx(0.5)


def test_add_scene_rejects_bad_input() -> None:
    evaluator = CoverageEvaluator(scannet200_instance_benchmark())
    scene = Scene((1, CHAIR, 150)).predict(CHAIR, (0, 0, 150))
    scene.add_to(evaluator)
    with pytest.raises(ValueError, match="already added"):
        scene.add_to(evaluator)
    with pytest.raises(ValueError, match="pred_masks must have shape"):
        evaluator.add_scene("other", scene.instance, scene.semantic, np.ones((1, 3), bool), np.ones(1), np.array([CHAIR]))
    with pytest.raises(ValueError, match="pred_class_ids"):
        evaluator.add_scene("other", scene.instance, scene.semantic, np.ones((1, 150), bool), np.ones(1), None)
    with pytest.raises(ValueError, match="no scenes"):
        CoverageEvaluator(scannet200_instance_benchmark()).compute()
