"""Single-frame inference post-processing of ESAM (`predict_by_feat_instance` / `_semantic`, esam.md §1.5).

Instances come from the final, point-level prediction `(Q, N)`. Were a superpoint-level prediction `(Q, S)` to
be used instead, ESAM runs the same steps on superpoints (matrix NMS IoU then counts superpoints, not points)
and expands the soft masks to points with `soft_masks[:, superpoint_ids]` just before binarising.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class InstancePredictions:
    """Instances of one frame, sorted by score (descending).

    masks (K, N) bool over the frame's points; scores (K,) float; labels (K,) long in [0, C) (all 0 when
    class-agnostic); query_indices (K,) long: the decoder query each instance comes from (None when built
    elsewhere, e.g. from exported files).
    """

    masks: Tensor
    scores: Tensor
    labels: Tensor
    query_indices: Tensor | None = None


@torch.no_grad()
def matrix_nms(soft_masks: Tensor, labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Matrix NMS (SOLOv2) with the linear kernel: decays scores only, drops nothing.

    soft_masks (K, M) in [0, 1], labels (K,), scores (K,). Each mask's score is multiplied by
    min over higher-scored masks i of the same label of (1 - IoU(i, mask)) / (1 - IoU(i, best of i)), where
    IoU is the soft IoU sum(p q) / (sum p + sum q - sum(p q)) and "best of i" is the highest IoU of i with a
    mask scored above it. Denominators are clamped at 1e-6 so exact duplicates give 0, not NaN.
    Returns `(decayed_scores (K,), order (K,))`: decayed scores sorted descending and the input index of each.
    """
    if scores.numel() == 0:
        return scores.clone(), torch.zeros(0, dtype=torch.long, device=scores.device)
    sorted_scores, order = scores.sort(descending=True)
    masks = soft_masks[order].float()
    sorted_labels = labels[order]
    areas = masks.sum(dim=1)
    intersection = masks @ masks.T
    union = areas[:, None] + areas[None, :] - intersection
    same_label = sorted_labels[:, None] == sorted_labels[None, :]
    iou = (intersection / union.clamp_min(1e-6) * same_label).triu(diagonal=1)
    compensation = iou.amax(dim=0)
    decay = ((1.0 - iou) / (1.0 - compensation[:, None]).clamp_min(1e-6)).amin(dim=0)
    decayed_scores, resort = (sorted_scores * decay).sort(descending=True)
    return decayed_scores, order[resort]


@torch.no_grad()
def predict_instances(
    class_logits: Tensor,
    mask_logits: Tensor,
    class_agnostic: bool,
    topk: int = 100,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.4,
    min_points: int = 100,
) -> InstancePredictions:
    """Instances of one frame from the final prediction.

    class_logits (Q, C+1) with "no object" last; mask_logits (Q, N) point level.
    Score: class-aware, softmax probability of each object class, the top-k taken over all (query, class) pairs
    (a query may yield several instances with different labels, as OneFormer3D/ESAM do); class-agnostic, the
    summed object probability per query, label 0. Then score *= mean sigmoid over the mask's positive
    (logit > 0) points, matrix NMS per label, masks binarised at sigmoid > `mask_threshold` (ESAM's
    `sp_score_thr` 0.4), and instances kept if score > `score_threshold` and points > `min_points`.
    ESAM defaults: SV topk 100, score threshold 0.0; MV topk 20, threshold 0.25 (ESAM-E 0.3).
    """
    object_probs = class_logits.softmax(dim=1)[:, :-1]
    if class_agnostic:
        object_probs = object_probs.sum(dim=1, keepdim=True)
    num_labels = object_probs.shape[1]
    scores, flat_indices = object_probs.flatten().topk(min(topk, object_probs.numel()))
    query_indices = torch.div(flat_indices, num_labels, rounding_mode="floor")
    labels = flat_indices % num_labels

    logits = mask_logits[query_indices]
    soft_masks = logits.sigmoid()
    positive = logits > 0
    mask_quality = (soft_masks * positive).sum(dim=1) / (positive.sum(dim=1) + 1e-6)
    scores, order = matrix_nms(soft_masks, labels, scores * mask_quality)
    masks = soft_masks[order] > mask_threshold
    labels = labels[order]
    query_indices = query_indices[order]

    keep = (scores > score_threshold) & (masks.sum(dim=1) > min_points)
    return InstancePredictions(
        masks=masks[keep], scores=scores[keep], labels=labels[keep], query_indices=query_indices[keep]
    )


@torch.no_grad()
def predict_point_semantics(
    semantic_logits: Tensor, query_superpoints: Tensor, superpoint_ids: Tensor, num_superpoints: int
) -> Tensor:
    """Per-point semantic class = argmax of the semantic logits of the point's own superpoint.

    semantic_logits (Q, K+1) with the ignore class last (never predicted); query_superpoints (Q,) long;
    superpoint_ids (N,) long. Points whose superpoint was not a query (only possible with a training-time
    query subset) get the ignore class K. Returns (N,) long.
    """
    ignore_index = semantic_logits.shape[1] - 1
    superpoint_classes = torch.full((num_superpoints,), ignore_index, dtype=torch.long, device=semantic_logits.device)
    superpoint_classes[query_superpoints] = semantic_logits[:, :ignore_index].argmax(dim=1)
    return superpoint_classes[superpoint_ids]
