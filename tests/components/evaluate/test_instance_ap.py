"""Instance AP against hand-computed values of the official ScanNet script's rules.

AP arithmetic used in the comments: with the PR points in ascending score-threshold order plus the artificial
(recall 0, precision 1) end point, the official step widths are w_j = (r_{j-1} - r_{j+1}) / 2 with r_{-1} = r_0
and r_{m+1} = 0, and AP = sum_j p_j w_j. Overlap thresholds are 0.50 0.55 ... 0.90 (nine; AP is their mean) and
0.25; a match needs IoU strictly above the threshold (np.arange makes the third threshold 0.6000000000000001).
"""

from __future__ import annotations

import numpy as np
import pytest

from bifusion.components.evaluate.benchmark_classes import (
    class_agnostic_instance_benchmark,
    scannet20_instance_benchmark,
    scannet200_instance_benchmark,
)
from bifusion.components.evaluate.instance_ap import OVERLAPS, InstanceEvaluator

CHAIR, TABLE, DOOR, WALL = 2, 4, 5, 1  # raw ScanNet ids (ScanNet200 classes; wall is stuff = void)
CUSHION, PAPER = 39, 79  # common, tail
NUM_STRICT = 9  # thresholds 0.50 ... 0.90


class Scene:
    """GT laid out as consecutive runs of points; predictions are unions of slices of those runs."""

    def __init__(self, *runs: tuple[int, int, int]):
        """runs: (instance id, raw semantic id, number of points)."""
        self.instance = np.concatenate([np.full(size, inst) for inst, _, size in runs]).astype(np.int64)
        self.semantic = np.concatenate([np.full(size, raw) for _, raw, size in runs]).astype(np.int64)
        starts = np.cumsum([0] + [size for _, _, size in runs])
        self.runs = [np.arange(starts[i], starts[i + 1]) for i in range(len(runs))]
        self.masks: list[np.ndarray] = []
        self.scores: list[float] = []
        self.labels: list[int] = []

    def predict(self, label: int, score: float, *parts: tuple[int, int]) -> "Scene":
        """parts: (run index, how many of its first points)."""
        mask = np.zeros(len(self.instance), dtype=bool)
        for run, count in parts:
            mask[self.runs[run][:count]] = True
        self.masks.append(mask)
        self.scores.append(score)
        self.labels.append(label)
        return self

    def add_to(self, evaluator: InstanceEvaluator, name: str = "scene0000_00") -> InstanceEvaluator:
        masks = np.array(self.masks, dtype=bool).reshape(len(self.masks), len(self.instance))
        evaluator.add_scene(name, self.instance, self.semantic, masks, np.array(self.scores), np.array(self.labels))
        return evaluator


def evaluate(scene: Scene, benchmark=None):
    evaluator = InstanceEvaluator(benchmark or scannet200_instance_benchmark())
    return scene.add_to(evaluator).compute()


def class_index(name: str, benchmark=None) -> int:
    return (benchmark or scannet200_instance_benchmark()).class_names.index(name)


def test_overlaps_match_official_arange():
    np.testing.assert_array_equal(OVERLAPS, np.append(np.arange(0.5, 0.95, 0.05), 0.25))
    assert len(OVERLAPS) == 10 and OVERLAPS[8] == pytest.approx(0.9)


def test_perfect_predictions_give_ap_one():
    # Chair: two GT, predictions exact with scores 0.9, 0.8: points (t=0.8: p=1, r=1), (t=0.9: p=1, r=0.5),
    # (p=1, r=0): widths 0.25, 0.5, 0.25 -> AP 1. Table: one exact prediction -> AP 1.
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 150), (3, TABLE, 300), (4, WALL, 120), (0, 0, 50))
    scene.predict(CHAIR, 0.9, (0, 200)).predict(CHAIR, 0.8, (1, 150)).predict(TABLE, 0.7, (2, 300))
    result = evaluate(scene)
    for name in ("chair", "table"):
        c = class_index(name)
        np.testing.assert_allclose(result.ap_per_overlap[c], 1.0)
        assert (result.ap[c], result.ap50[c], result.ap25[c]) == (1.0, 1.0, 1.0)
    assert (result.mean_ap, result.mean_ap50, result.mean_ap25) == (1.0, 1.0, 1.0)
    assert np.isnan(result.ap[class_index("door")])


def test_iou_06_counts_only_at_050_and_055():
    # Prediction = 180 of the chair's 300 points: IoU = 180 / 300 = 0.6. Above 0.5 and 0.55 -> AP 1 there; at
    # 0.6000000000000001 ... 0.9 it is an unmatched FP on non-void GT and the GT a hard FN -> AP 0.
    # AP = 2/9, AP50 = 1, AP25 = 1.
    result = evaluate(Scene((1, CHAIR, 300)).predict(CHAIR, 0.7, (0, 180)))
    c = class_index("chair")
    np.testing.assert_array_equal(result.ap_per_overlap[c], [1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    assert result.ap[c] == pytest.approx(2 / 9)
    assert (result.ap50[c], result.ap25[c]) == (1.0, 1.0)


@pytest.mark.parametrize("duplicate_first", [False, True])
def test_duplicate_prediction_is_false_positive(duplicate_first):
    # GT chairs A, B (200 points each). A: exact (0.9) and a duplicate with 190/200 points, IoU 0.95 (0.8);
    # B: exact (0.7). Every threshold: TP 0.9, FP 0.8, TP 0.7, no FN.
    # t=0.7: tp 2 fp 1 -> p 2/3 r 1; t=0.8: tp 1 fp 1 -> p 1/2 r 1/2; t=0.9: p 1 r 1/2; end p 1 r 0.
    # widths: (1-.5)/2, (1-.5)/2, (.5-0)/2, (.5-0)/2 = 1/4 each -> AP = (2/3 + 1/2 + 1 + 1)/4 = 19/24
    # (1 without the duplicate). Input order must not matter: A keeps the highest score either way.
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 200))
    if duplicate_first:
        scene.predict(CHAIR, 0.8, (0, 190)).predict(CHAIR, 0.9, (0, 200))
    else:
        scene.predict(CHAIR, 0.9, (0, 200)).predict(CHAIR, 0.8, (0, 190))
    scene.predict(CHAIR, 0.7, (1, 200))
    result = evaluate(scene)
    np.testing.assert_allclose(result.ap_per_overlap[class_index("chair")], 19 / 24)


def test_duplicate_with_equal_score_ties():
    # Duplicate scored 0.9 like the original: one threshold, tp 1 fp 1 -> p 1/2 r 1; end p 1 r 0:
    # widths (1-0)/2, (1-0)/2 -> AP = 1/2 * 1/2 + 1 * 1/2 = 3/4.
    scene = Scene((1, CHAIR, 200)).predict(CHAIR, 0.9, (0, 200)).predict(CHAIR, 0.9, (0, 195))
    np.testing.assert_allclose(evaluate(scene).ap_per_overlap[class_index("chair")], 0.75)


def test_prediction_on_void_only_is_not_false_positive():
    # A chair prediction (0.9) lying on wall points only: void share 1 > every threshold -> ignored, AP 1.
    on_void = Scene((1, CHAIR, 200), (2, WALL, 300)).predict(CHAIR, 0.5, (0, 200)).predict(CHAIR, 0.9, (1, 150))
    np.testing.assert_allclose(evaluate(on_void).ap_per_overlap[class_index("chair")], 1.0)
    # The same prediction on table GT instead: FP 0.9 above TP 0.5.
    # t=0.5: p 1/2 r 1; t=0.9: p 0 r 0; end p 1 r 0: widths 1/2, 1/2, 0 -> AP 1/4.
    on_table = Scene((1, CHAIR, 200), (2, TABLE, 300)).predict(CHAIR, 0.5, (0, 200)).predict(CHAIR, 0.9, (1, 150))
    np.testing.assert_allclose(evaluate(on_table).ap_per_overlap[class_index("chair")], 0.25)


def test_partly_void_prediction_uses_proportion_ignore():
    # 150-point chair prediction: 90 on wall (void), 60 on table: ignored share 0.6. Ignored where 0.6 > t
    # (0.5, 0.55, 0.25: AP 1), a false positive where 0.6 <= t (0.6000000000000001 ... 0.9: AP 1/4 as above).
    # AP = (2 * 1 + 7 * 1/4) / 9 = 5/12.
    scene = Scene((1, CHAIR, 200), (2, WALL, 90), (3, TABLE, 300))
    scene.predict(CHAIR, 0.5, (0, 200)).predict(CHAIR, 0.9, (1, 90), (2, 60))
    result = evaluate(scene)
    c = class_index("chair")
    np.testing.assert_allclose(result.ap_per_overlap[c], [1, 1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 1])
    assert result.ap[c] == pytest.approx(5 / 12)


def test_ignored_share_equal_to_threshold_is_false_positive():
    # 200-point prediction: 100 on wall, 100 on table -> ignored share exactly 0.5. The official rule keeps an
    # FP when share <= threshold: an FP at 0.5 and above (AP 1/4 as above), ignored only at 0.25 (AP 1).
    scene = Scene((1, CHAIR, 200), (2, WALL, 100), (3, TABLE, 300))
    scene.predict(CHAIR, 0.5, (0, 200)).predict(CHAIR, 0.9, (1, 100), (2, 100))
    result = evaluate(scene)
    c = class_index("chair")
    np.testing.assert_allclose(result.ap_per_overlap[c], [0.25] * NUM_STRICT + [1.0])


def test_small_ground_truth_is_ignored():
    # Chair A (200 points, exact prediction 0.5) and chair B with 80 points (< 100): B is no FN, and the 0.9
    # prediction made of B's 80 points + 40 wall points is no FP (IoU 80/120 > t below 0.67; above it the
    # ignored share (40 void + 80 small GT) / 120 = 1). AP = 1 everywhere; counting B would give 1/8 at 0.7+.
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 80), (3, WALL, 40))
    scene.predict(CHAIR, 0.5, (0, 200)).predict(CHAIR, 0.9, (1, 80), (2, 40))
    np.testing.assert_allclose(evaluate(scene).ap_per_overlap[class_index("chair")], 1.0)
    # Only small GT of a class: no counted GT -> NaN.
    only_small = Scene((1, CHAIR, 99)).predict(CHAIR, 0.9, (0, 99))
    assert np.isnan(evaluate(only_small).ap[class_index("chair")])


def test_predictions_below_min_region_size_are_dropped():
    # GT of exactly 100 points counts; a 99-point prediction is dropped -> GT but no prediction -> AP 0.
    dropped = Scene((1, CHAIR, 100)).predict(CHAIR, 0.9, (0, 99))
    np.testing.assert_array_equal(evaluate(dropped).ap_per_overlap[class_index("chair")], 0.0)
    kept = Scene((1, CHAIR, 100)).predict(CHAIR, 0.9, (0, 100))
    np.testing.assert_array_equal(evaluate(kept).ap_per_overlap[class_index("chair")], 1.0)


def test_class_aware_needs_matching_class_but_agnostic_does_not():
    # Exact mask of a chair labelled table: class-aware -> chair AP 0 (GT, no chair prediction), table NaN
    # (prediction, no GT), mean over classes with GT = 0. Class-agnostic -> one "object" class, AP 1.
    scene = Scene((1, CHAIR, 200), (2, WALL, 100)).predict(TABLE, 0.8, (0, 200))
    aware = evaluate(scene)
    assert aware.ap[class_index("chair")] == 0.0 and np.isnan(aware.ap[class_index("table")])
    assert aware.mean_ap == 0.0
    agnostic = evaluate(scene, class_agnostic_instance_benchmark())
    np.testing.assert_array_equal(agnostic.ap_per_overlap, np.ones((1, 10)))
    assert agnostic.class_names == ("object",)


def test_class_agnostic_ignores_labels_and_treats_stuff_as_void():
    # Predicted labels are irrelevant (None allowed); a prediction on wall only is ignored; a chair and a
    # table instance both count as objects: exact predictions -> AP 1.
    scene = Scene((1, CHAIR, 200), (2, TABLE, 150), (3, WALL, 300))
    masks = np.zeros((3, 650), dtype=bool)
    masks[0, :200], masks[1, 200:350], masks[2, 350:] = True, True, True
    evaluator = InstanceEvaluator(class_agnostic_instance_benchmark())
    evaluator.add_scene("scene0000_00", scene.instance, scene.semantic, masks, np.array([0.9, 0.8, 0.95]), None)
    np.testing.assert_array_equal(evaluator.compute().ap_per_overlap, np.ones((1, 10)))


def test_class_aware_requires_labels():
    scene = Scene((1, CHAIR, 200))
    with pytest.raises(ValueError, match="class-aware"):
        InstanceEvaluator(scannet200_instance_benchmark()).add_scene(
            "s", scene.instance, scene.semantic, np.ones((1, 200), dtype=bool), np.array([0.5]), None
        )


def test_class_without_gt_is_nan_and_excluded_from_mean():
    # Chair perfect (1), table GT without prediction (0), door prediction without GT (NaN): mean = (1 + 0) / 2.
    scene = Scene((1, CHAIR, 200), (2, TABLE, 200), (3, WALL, 200))
    scene.predict(CHAIR, 0.9, (0, 200)).predict(DOOR, 0.9, (2, 150))
    result = evaluate(scene)
    assert np.isnan(result.ap[class_index("door")]) and np.isnan(result.ap50[class_index("door")])
    assert np.isnan(result.ap).sum() == 198 - 2
    assert (result.mean_ap, result.mean_ap50, result.mean_ap25) == (0.5, 0.5, 0.5)


def test_prediction_matches_at_most_one_gt():
    # Chairs A, B (200 each); one 0.9 prediction on 100 + 100 of them: IoU 100/300 = 1/3 with each.
    # 0.25: A (first by id) takes it, B is a hard FN: one point p 1 r 1/2; end p 1 r 0: widths 1/4, 1/4
    # -> AP25 = 1/2. At 0.5+: no match, FP (not void), two FNs -> 0.
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 200)).predict(CHAIR, 0.9, (0, 100), (1, 100))
    result = evaluate(scene)
    c = class_index("chair")
    assert result.ap25[c] == 0.5 and result.ap[c] == 0.0


def test_duplicate_can_still_match_a_later_gt_as_in_official_script():
    # The official script marks only a GT's first match as used, so at 0.25 a duplicate of A may also match B.
    # A, B chairs (200 each); P1 = A exact (0.9); P2 = 150 of A + 100 of B (0.5): IoU(P2, A) = 150/300 = 0.5,
    # IoU(P2, B) = 100/350 = 0.286. At 0.25: A -> TP 0.9 and FP 0.5 (P2), B -> TP 0.5 (P2 again).
    # t=0.5: tp 2 fp 1 -> p 2/3 r 1; t=0.9: tp 1 -> p 1 r 1/2; end: widths 1/4, 1/2, 1/4 -> AP25 = 1/6 + 3/4 = 11/12.
    # At 0.5 (strict): P2 matches nothing and is an FP, B is a hard FN: t=0.5: p 1/2 r 1/2; t=0.9: p 1 r 1/2;
    # end: widths 0, 1/4, 1/4 -> AP50 = 1/2.
    scene = Scene((1, CHAIR, 200), (2, CHAIR, 200))
    scene.predict(CHAIR, 0.9, (0, 200)).predict(CHAIR, 0.5, (0, 150), (1, 100))
    result = evaluate(scene)
    c = class_index("chair")
    assert result.ap25[c] == pytest.approx(11 / 12)
    assert result.ap50[c] == pytest.approx(0.5)


def test_scenes_accumulate_into_one_curve():
    # Scene 1: chair exact (0.6). Scene 2: chair missed, an FP chair on table GT (0.8).
    # Pooled: t=0.6: tp 1 fp 1 fn 1 -> p 1/2 r 1/2; t=0.8: p 0 r 0; end p 1 r 0: widths 1/4, 1/4, 0 -> AP 1/8.
    evaluator = InstanceEvaluator(scannet200_instance_benchmark())
    Scene((1, CHAIR, 200)).predict(CHAIR, 0.6, (0, 200)).add_to(evaluator, "scene0000_00")
    Scene((1, CHAIR, 200), (2, TABLE, 200)).predict(CHAIR, 0.8, (1, 200)).add_to(evaluator, "scene0001_00")
    result = evaluator.compute()
    np.testing.assert_allclose(result.ap_per_overlap[class_index("chair")], 0.125)
    assert result.num_scenes == 2
    with pytest.raises(ValueError, match="already added"):
        Scene((1, CHAIR, 200)).add_to(evaluator, "scene0000_00")


def test_scannet200_head_common_tail_means():
    # chair (head) perfect 1, table (head) GT unpredicted 0, cushion (common) unpredicted 0, paper (tail) perfect 1.
    scene = Scene((1, CHAIR, 200), (2, TABLE, 200), (3, CUSHION, 200), (4, PAPER, 200))
    scene.predict(CHAIR, 0.9, (0, 200)).predict(PAPER, 0.8, (3, 200))
    result = evaluate(scene)
    assert result.split_means["head"] == {"ap": 0.5, "ap50": 0.5, "ap25": 0.5}
    assert result.split_means["common"]["ap"] == 0.0 and result.split_means["tail"]["ap"] == 1.0
    assert result.summary() == {
        "ap": 0.5, "ap50": 0.5, "ap25": 0.5,
        "head_ap": 0.5, "head_ap50": 0.5, "head_ap25": 0.5,
        "common_ap": 0.0, "common_ap50": 0.0, "common_ap25": 0.0,
        "tail_ap": 1.0, "tail_ap50": 1.0, "tail_ap25": 1.0,
    }  # fmt: skip
    assert evaluate(scene, class_agnostic_instance_benchmark()).split_means == {}


def test_scannet20_maps_raw_ids_through_nyu40():
    # Raw chair (2) -> nyu40 5 = "chair"; "office chair" (raw 10 in ScanNet200) is nyu40 5 too, so a chair
    # prediction matches it in ScanNet20 but not in ScanNet200.
    benchmark = scannet20_instance_benchmark()
    scene = Scene((1, 10, 200)).predict(5, 0.9, (0, 200))
    result = evaluate(scene, benchmark)
    assert result.ap[class_index("chair", benchmark)] == 1.0


# ---- Cross-check on random scenes against a second, independent formulation -------------------------------


def _reference_ap(gt_instance, gt_class, pred_masks, pred_scores, pred_class, num_classes, threshold):
    """Per-class AP at a threshold >= 0.5, from dense masks, without the official bookkeeping.

    For IoU > 0.5 every prediction overlaps at most one GT above the threshold, so matching is unique: each
    counted GT is a TP with the best score of its candidates (the others are FPs) or a FN; a prediction with no
    GT above the threshold is an FP unless more than `threshold` of it lies on void or small GT of its class.
    The curve is integrated with the trapezoid rule, which equals the official step-width sum:
    sum_j p_j (r_{j-1} - r_{j+1}) / 2 = sum_j (r_{j-1} - r_j)(p_{j-1} + p_j) / 2.
    """
    aps = np.full(num_classes, np.nan)
    keys = sorted({(c, i) for c, i in zip(gt_class, gt_instance) if c >= 0 and i > 0})
    for c in range(num_classes):
        gts = [(gt_class == c) & (gt_instance == i) for cc, i in keys if cc == c]
        counted = [g for g in gts if g.sum() >= 100]
        small = np.zeros(len(gt_class), dtype=bool)
        for g in gts:
            if g.sum() < 100:
                small |= g
        if not counted:
            continue
        preds = [k for k in range(len(pred_scores)) if pred_class[k] == c and pred_masks[k].sum() >= 100]
        iou = lambda p, g: (p & g).sum() / (p | g).sum()  # noqa: E731
        tps, fps, fns = [], [], 0
        for g in counted:
            candidates = [pred_scores[k] for k in preds if iou(pred_masks[k], g) > threshold]
            if candidates:
                tps.append(max(candidates))
                fps.extend(sorted(candidates)[:-1])
            else:
                fns += 1
        void = gt_class < 0
        for k in preds:
            if any(iou(pred_masks[k], g) > threshold for g in gts):
                continue
            ignored = (pred_masks[k] & (void | small)).sum() / pred_masks[k].sum()
            if ignored <= threshold:
                fps.append(pred_scores[k])
        tps, fps = np.array(tps), np.array(fps)
        if tps.size + fps.size == 0:
            aps[c] = 0.0
            continue
        precision, recall = [1.0], [0.0]
        for t in sorted(set(tps.tolist() + fps.tolist()), reverse=True):
            tp, fp = (tps >= t).sum(), (fps >= t).sum()
            precision.append(tp / (tp + fp))
            recall.append(tp / (tps.size + fns))
        aps[c] = np.trapezoid(precision, recall)
    return aps


def _random_scene(rng):
    num_points = int(rng.integers(1500, 2500))
    classes = [CHAIR, TABLE, DOOR]
    gt_instance = np.zeros(num_points, dtype=np.int64)
    gt_semantic = np.zeros(num_points, dtype=np.int64)
    position = 0
    num_objects = int(rng.integers(3, 8))
    for instance in range(1, num_objects + 1):
        size = int(rng.integers(40, 300))
        gt_instance[position : position + size] = instance
        gt_semantic[position : position + size] = rng.choice(classes)
        position += size
    gt_semantic[position:] = rng.choice([0, WALL, 3], size=num_points - position)  # unlabeled / wall / floor
    gt_instance[position:] = rng.integers(0, 2, size=num_points - position) * 50  # some stuff has instances
    masks, labels = [], []
    for instance in range(1, num_objects + 1):
        members = np.flatnonzero(gt_instance == instance)
        for _ in range(int(rng.integers(0, 3))):
            keep = members[rng.random(members.size) < rng.uniform(0.5, 1.0)]
            extra = rng.choice(num_points, size=int(rng.integers(0, 80)), replace=False)
            mask = np.zeros(num_points, dtype=bool)
            mask[np.concatenate([keep, extra])] = True
            masks.append(mask)
            labels.append(gt_semantic[members[0]] if rng.random() < 0.8 else rng.choice(classes))
    for _ in range(int(rng.integers(0, 4))):  # random blobs
        start = int(rng.integers(0, num_points - 200))
        mask = np.zeros(num_points, dtype=bool)
        mask[start : start + int(rng.integers(50, 200))] = True
        masks.append(mask)
        labels.append(rng.choice(classes))
    scores = np.round(rng.random(len(masks)), 1)  # one decimal: ties happen
    return gt_instance, gt_semantic, np.array(masks, dtype=bool).reshape(len(masks), num_points), scores, np.array(labels)


def test_random_scenes_agree_with_independent_formulation():
    rng = np.random.default_rng(7)
    benchmark = scannet200_instance_benchmark()
    evaluator = InstanceEvaluator(benchmark)
    scenes = [_random_scene(rng) for _ in range(6)]
    for number, scene in enumerate(scenes):
        evaluator.add_scene(f"scene{number:04d}_00", *scene)
    result = evaluator.compute()
    used = [benchmark.class_names.index(n) for n in ("chair", "table", "door")]
    # Concatenating the scenes' points is the same as pooling them: instances and predictions stay in place.
    offsets = np.cumsum([0] + [len(s[0]) for s in scenes])
    total = offsets[-1]
    gt_instance = np.concatenate([np.where(s[0] > 0, s[0] + 1000 * n, 0) for n, s in enumerate(scenes)])
    gt_class = benchmark.gt_class_index(np.concatenate([s[1] for s in scenes]))
    gt_class = np.where(gt_instance == 0, -1, gt_class)
    pred_masks, pred_scores, pred_class = [], [], []
    for n, s in enumerate(scenes):
        for mask, score, label in zip(s[2], s[3], s[4]):
            padded = np.zeros(total, dtype=bool)
            padded[offsets[n] : offsets[n + 1]] = mask
            pred_masks.append(padded)
            pred_scores.append(score)
            pred_class.append(benchmark.index_of_class_id(np.array([label]))[0])
    for o, threshold in enumerate(OVERLAPS[:NUM_STRICT]):
        expected = _reference_ap(
            gt_instance, gt_class, pred_masks, pred_scores, pred_class, benchmark.num_classes, threshold
        )
        np.testing.assert_allclose(result.ap_per_overlap[used, o], expected[used], atol=1e-12)
        assert np.isnan(np.delete(result.ap_per_overlap[:, o], used)).all()
    assert 0.05 < result.mean_ap < 0.95  # the random case is neither trivial nor hopeless
