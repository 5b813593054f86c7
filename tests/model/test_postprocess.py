"""Inference post-processing: matrix NMS, top-k, thresholds, class-aware vs class-agnostic, semantics."""

from __future__ import annotations

import torch

from bifusion.model.postprocess import matrix_nms, predict_instances, predict_point_semantics

BIG = 20.0  # mask logit whose sigmoid is 1 in float32


def block_mask(num_points: int, start: int, stop: int) -> torch.Tensor:
    logits = torch.full((num_points,), -BIG)
    logits[start:stop] = BIG
    return logits


def test_matrix_nms_decays_a_duplicate_and_keeps_distinct_masks() -> None:
    masks = torch.stack([block_mask(40, 0, 10), block_mask(40, 1, 10), block_mask(40, 20, 30)]).sigmoid()
    labels = torch.zeros(3, dtype=torch.long)
    scores = torch.tensor([0.9, 0.8, 0.7])

    decayed, order = matrix_nms(masks, labels, scores)

    assert order.tolist() == [0, 2, 1]
    torch.testing.assert_close(decayed[:2], torch.tensor([0.9, 0.7]), atol=1e-3, rtol=0)
    iou = 9.0 / 10.0
    torch.testing.assert_close(decayed[2], torch.tensor(0.8 * (1 - iou)), atol=1e-3, rtol=0)


def test_matrix_nms_only_decays_within_a_label_and_compensates_suppressed_suppressors() -> None:
    masks = torch.stack([block_mask(40, 0, 10), block_mask(40, 0, 10), block_mask(40, 0, 10)]).sigmoid()
    scores = torch.tensor([0.9, 0.8, 0.7])

    decayed, order = matrix_nms(masks, torch.tensor([0, 1, 0]), scores)

    assert order.tolist() == [0, 1, 2]
    torch.testing.assert_close(decayed[:2], torch.tensor([0.9, 0.8]))
    assert decayed[2].item() < 0.01
    assert bool(torch.isfinite(decayed).all())


def test_matrix_nms_of_nothing_is_empty() -> None:
    decayed, order = matrix_nms(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert decayed.shape == (0,) and order.shape == (0,)


def three_queries(num_points: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Three disjoint 100-, 150- and 50-point objects; class logits over C = 2 classes + no object."""
    mask_logits = torch.stack(
        [block_mask(num_points, 0, 100), block_mask(num_points, 100, 250), block_mask(num_points, 250, 300)]
    )
    class_logits = torch.log(torch.tensor([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]))
    return class_logits, mask_logits


def test_class_agnostic_scores_sum_the_object_classes_and_apply_the_thresholds() -> None:
    class_logits, mask_logits = three_queries()

    result = predict_instances(class_logits, mask_logits, class_agnostic=True, min_points=40)

    torch.testing.assert_close(result.scores, torch.tensor([0.95, 0.9, 0.2]), atol=1e-3, rtol=0)
    assert result.labels.tolist() == [0, 0, 0]
    assert result.masks.sum(dim=1).tolist() == [150, 100, 50]
    assert result.masks.dtype == torch.bool

    by_size = predict_instances(class_logits, mask_logits, class_agnostic=True, min_points=100)
    assert by_size.masks.sum(dim=1).tolist() == [150]  # 100 points is not more than 100
    by_score = predict_instances(class_logits, mask_logits, class_agnostic=True, min_points=40, score_threshold=0.5)
    assert by_score.scores.shape == (2,)
    top_one = predict_instances(class_logits, mask_logits, class_agnostic=True, min_points=40, topk=1)
    assert top_one.masks.sum(dim=1).tolist() == [150]


def test_class_aware_top_k_runs_over_query_class_pairs() -> None:
    class_logits, mask_logits = three_queries()

    result = predict_instances(class_logits, mask_logits, class_agnostic=False, topk=4, min_points=40)

    # pairs by probability: (q1, c0) .9, (q0, c0) .5, (q0, c1) .4, then (q2, *) .1 and (q1, c1) .05
    assert result.labels.tolist()[:3] == [0, 0, 1]
    torch.testing.assert_close(result.scores[:3], torch.tensor([0.9, 0.5, 0.4]), atol=1e-3, rtol=0)
    assert result.masks.sum(dim=1).tolist()[:3] == [150, 100, 100]


def test_scores_are_scaled_by_the_mask_confidence_and_masks_binarised_at_0_4() -> None:
    mask_logits = torch.full((1, 250), -BIG)
    mask_logits[0, :150] = torch.logit(torch.tensor(0.6))
    mask_logits[0, 150:200] = torch.logit(torch.tensor(0.45))  # inside the mask, not in the positive region
    mask_logits[0, 200:] = torch.logit(torch.tensor(0.35))  # outside
    class_logits = torch.log(torch.tensor([[0.8, 0.2]]))

    result = predict_instances(class_logits, mask_logits, class_agnostic=True)

    torch.testing.assert_close(result.scores, torch.tensor([0.8 * 0.6]), atol=1e-4, rtol=0)
    assert result.masks.sum().item() == 200


def test_point_semantics_come_from_the_point_superpoint() -> None:
    semantic_logits = torch.tensor([[0.0, 5.0, 0.0, 9.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    superpoint_ids = torch.tensor([2, 0, 0, 1, 3])

    classes = predict_point_semantics(semantic_logits, torch.tensor([0, 1, 2]), superpoint_ids, 4)

    # the ignore column (9.0) is never chosen; superpoint 3 was no query -> ignore class 3
    assert classes.tolist() == [2, 1, 1, 0, 3]
