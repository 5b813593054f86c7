"""ESAM's `SparseMatcher` with top-1: each GT instance takes its cheapest query among the queries inside it.

Because queries are superpoints and a superpoint belongs to at most one instance (> 50 % of its points), the
candidate sets of different instances are disjoint and no query is matched twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mask_bce_cost(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """Mean sigmoid BCE of every query mask against every GT mask.

    mask_logits (Q, M), gt_masks (G, M) float in [0, 1] -> cost (Q, G).
    """
    positive = F.binary_cross_entropy_with_logits(mask_logits, torch.ones_like(mask_logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(mask_logits, torch.zeros_like(mask_logits), reduction="none")
    cost = positive @ gt_masks.T + negative @ (1.0 - gt_masks).T
    return cost / max(mask_logits.shape[1], 1)


def mask_dice_cost(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """Dice loss 1 - (2|p g| + 1) / (|p| + |g| + 1) of every query mask against every GT mask.

    mask_logits (Q, M), gt_masks (G, M) float -> cost (Q, G). The +1 smoothing is ESAM's (and OneFormer3D's).
    """
    probs = mask_logits.sigmoid()
    numerator = 2.0 * probs @ gt_masks.T
    denominator = probs.sum(dim=1)[:, None] + gt_masks.sum(dim=1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class SparseTopOneMatcher:
    """Match each GT instance to its cheapest candidate query.

    cost = class_weight * (-softmax probability of the GT class) + bce_weight * mask BCE + dice_weight * mask
    dice, with the masks at the prediction's level. GT instances without a candidate stay unmatched. On an
    exact cost tie the lower query index wins (ESAM's `cost < second smallest` rule would match neither).
    """

    def __init__(self, class_weight: float = 0.5, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        self.class_weight = class_weight
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight

    @torch.no_grad()
    def __call__(
        self, class_logits: Tensor, mask_logits: Tensor, gt_masks: Tensor, gt_labels: Tensor, candidates: Tensor
    ) -> tuple[Tensor, Tensor]:
        """class_logits (Q, C+1), mask_logits (Q, M), gt_masks (G, M) bool, gt_labels (G,) long in [0, C),
        candidates (G, Q) bool (query q may take instance g).

        Returns `(query_indices (K,), gt_indices (K,))`, long, K <= G, ordered by GT index.
        """
        gt_indices = torch.nonzero(candidates.any(dim=1)).squeeze(1)
        if gt_indices.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=class_logits.device)
            return empty, empty.clone()
        masks = gt_masks[gt_indices].to(mask_logits.dtype)
        class_cost = -class_logits.softmax(dim=1)[:, gt_labels[gt_indices]]
        cost = (
            self.class_weight * class_cost
            + self.bce_weight * mask_bce_cost(mask_logits, masks)
            + self.dice_weight * mask_dice_cost(mask_logits, masks)
        )
        cost = cost.masked_fill(~candidates[gt_indices].T, float("inf"))
        query_indices = cost.argmin(dim=0)
        return query_indices, gt_indices
