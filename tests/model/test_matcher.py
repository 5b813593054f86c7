"""Sparse top-1 matcher: candidates only, cheapest candidate, unmatched GT without candidates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bifusion.model.matcher import SparseTopOneMatcher, mask_bce_cost, mask_dice_cost


def test_costs_equal_the_pairwise_losses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    gt = (torch.rand(2, 10) > 0.5).float()

    bce = mask_bce_cost(logits, gt)
    dice = mask_dice_cost(logits, gt)

    for q in range(3):
        for g in range(2):
            torch.testing.assert_close(bce[q, g], F.binary_cross_entropy_with_logits(logits[q], gt[g]))
            p = logits[q].sigmoid()
            torch.testing.assert_close(dice[q, g], 1 - (2 * (p * gt[g]).sum() + 1) / (p.sum() + gt[g].sum() + 1))


def test_each_instance_takes_its_cheapest_query_among_its_candidates_only() -> None:
    gt_masks = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    perfect_0 = torch.tensor([9.0, 9.0, 9.0, -9.0, -9.0, -9.0])
    mask_logits = torch.stack(
        [
            perfect_0,  # query 0: best mask for instance 0, but its superpoint is outside instance 0
            perfect_0 * 0.1,  # query 1: candidate of instance 0, weak
            perfect_0 * 0.5,  # query 2: candidate of instance 0, better
            -perfect_0,  # query 3: candidate of instance 1, poor
        ]
    )
    class_logits = torch.zeros(4, 2)
    candidates = torch.tensor([[False, True, True, False], [False, False, False, True], [False, False, False, False]])

    query_indices, gt_indices = SparseTopOneMatcher()(
        class_logits, mask_logits, gt_masks, torch.zeros(3, dtype=torch.long), candidates
    )

    assert query_indices.tolist() == [2, 3]
    assert gt_indices.tolist() == [0, 1]


def test_matcher_picks_the_minimum_of_the_weighted_cost() -> None:
    torch.manual_seed(3)
    class_logits = torch.randn(12, 4)
    mask_logits = torch.randn(12, 30)
    gt_masks = torch.rand(3, 30) > 0.6
    labels = torch.tensor([0, 2, 1])
    candidates = torch.rand(3, 12) > 0.5
    matcher = SparseTopOneMatcher(class_weight=0.5, bce_weight=1.0, dice_weight=1.0)

    query_indices, gt_indices = matcher(class_logits, mask_logits, gt_masks, labels, candidates)

    for query, gt in zip(query_indices.tolist(), gt_indices.tolist()):
        costs = {
            q: (
                -0.5 * class_logits[q].softmax(0)[labels[gt]]
                + mask_bce_cost(mask_logits[q : q + 1], gt_masks[gt : gt + 1].float())[0, 0]
                + mask_dice_cost(mask_logits[q : q + 1], gt_masks[gt : gt + 1].float())[0, 0]
            ).item()
            for q in torch.nonzero(candidates[gt]).squeeze(1).tolist()
        }
        assert query == min(costs, key=costs.get)
    assert gt_indices.tolist() == [g for g in range(3) if bool(candidates[g].any())]


def test_no_instances_or_no_queries_give_empty_matches() -> None:
    matcher = SparseTopOneMatcher()

    no_gt = matcher(
        torch.randn(4, 2),
        torch.randn(4, 5),
        torch.zeros(0, 5, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 4, dtype=torch.bool),
    )
    no_queries = matcher(
        torch.randn(0, 2),
        torch.randn(0, 5),
        torch.ones(2, 5, dtype=torch.bool),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.bool),
    )

    for query_indices, gt_indices in (no_gt, no_queries):
        assert query_indices.numel() == 0 and gt_indices.numel() == 0
