"""ESAM's single-view training losses (`ScanNetMixedCriterion` = `MixedInstanceCriterion` + semantic CE).

Per prediction level (matched separately, ESAM's `iter_matcher=True`):
  cls  = cross-entropy over all queries, unmatched queries -> "no object" (index C), whose class weight is
         `no_object_weight`; mean over the frames that have queries;
  bce  = sigmoid BCE of the matched masks against the GT at the level's resolution (superpoint GT for
         superpoint levels, point GT for point levels), mean over mask elements, then over frames with matches;
  dice = dice loss of the matched masks, mean over matched pairs, then over frames with matches.
Semantic: cross-entropy of the last layer's semantic logits (ignore column dropped) of each query against the
majority class of its superpoint, ignoring `num_semantic_classes`; mean over the frames that have a labelled
query. Total = sum over levels of (class_weight * cls + bce_weight * bce + dice_weight * dice)
+ semantic_weight * semantic.

Departures from ESAM, on purpose:
* dice is a plain mean on every level. ESAM (OneFormer3D's `fix_dice_loss_weight` + `fix_mean_loss`) scales the
  final level's dice by 4 and each auxiliary level's by 4 / batch_size.
* empty cases never give NaN: a term with nothing to average (no GT, GT on no superpoint majority, no
  queries, no labelled superpoint) is a zero that stays attached to the graph, so `total.backward()` works and
  gives zero gradient for that term (ESAM's BCE/dice over an empty match is NaN, issues #17, #45).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bifusion.model.matcher import SparseTopOneMatcher
from bifusion.model.query_decoder import FrameDecoderOutput, MaskLevel, MaskPrediction
from bifusion.model.superpoint_pool import superpoint_mean


@dataclass
class FrameTargets:
    """Ground truth of one frame.

    point_masks (G, N) bool: points of each GT instance. superpoint_masks (G, S) bool: superpoints of which more
    than 50 % of the points are in the instance (ESAM's `gt_sp_masks`, binary, not the fraction); they are both
    the superpoint-level mask targets and the matcher's candidate sets. labels (G,) long in [0, C): instance
    class (all 0 when class-agnostic). superpoint_semantics (S,) long: the semantic class of more than 50 % of
    the superpoint's points, else the ignore index.
    """

    point_masks: Tensor
    superpoint_masks: Tensor
    labels: Tensor
    superpoint_semantics: Tensor


def superpoint_majority_class(
    classes: Tensor, superpoint_ids: Tensor, num_superpoints: int, num_classes: int, ignore_index: int
) -> Tensor:
    """Per superpoint, the class held by more than 50 % of its points, else `ignore_index`.

    classes (N,) long in [0, num_classes) or `ignore_index`; ignored points count in the denominator
    (ESAM one-hot encodes the ignore class as a class of its own). Returns (S,) long.
    """
    num_bins = num_classes + 1
    bins = torch.where(classes == ignore_index, num_classes, classes)
    counts = torch.bincount(superpoint_ids * num_bins + bins, minlength=num_superpoints * num_bins)
    counts = counts.view(num_superpoints, num_bins)
    top_count, top_class = counts.max(dim=1)
    is_majority = 2 * top_count > counts.sum(dim=1)
    majority = torch.where(is_majority, top_class, num_classes)
    return torch.where(majority == num_classes, ignore_index, majority)


def make_frame_targets(
    instance_ids: Tensor,
    instance_labels: Tensor,
    semantic_ids: Tensor,
    superpoint_ids: Tensor,
    num_superpoints: int,
    num_semantic_classes: int,
) -> FrameTargets:
    """Build `FrameTargets` from per-point labels of one frame.

    instance_ids (N,) long: GT instance in [0, G), -1 = no instance (stuff classes and unlabelled points are
    expected to be -1 already, as ESAM's `AddSuperPointAnnotations` does). instance_labels (G,) long: class of
    each instance in [0, C); pass zeros for class-agnostic training. semantic_ids (N,) long in
    [0, num_semantic_classes], num_semantic_classes = ignore. superpoint_ids (N,) long in [0, num_superpoints).
    """
    num_instances = instance_labels.shape[0]
    instance_range = torch.arange(num_instances, device=instance_ids.device)
    point_masks = instance_ids[None, :] == instance_range[:, None]
    superpoint_fraction = superpoint_mean(point_masks.T.float(), superpoint_ids, num_superpoints).T
    superpoint_semantics = superpoint_majority_class(
        semantic_ids, superpoint_ids, num_superpoints, num_semantic_classes, num_semantic_classes
    )
    return FrameTargets(
        point_masks=point_masks,
        superpoint_masks=superpoint_fraction > 0.5,
        labels=instance_labels,
        superpoint_semantics=superpoint_semantics,
    )


def dice_loss(mask_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """Mean over rows of 1 - (2|p g| + 1) / (|p| + |g| + 1); mask_logits, gt_masks (K, M) -> scalar."""
    probs = mask_logits.sigmoid()
    numerator = 2.0 * (probs * gt_masks).sum(dim=1)
    denominator = probs.sum(dim=1) + gt_masks.sum(dim=1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).mean()


def _mean_or_zero(terms: list[Tensor], zero: Tensor) -> Tensor:
    return torch.stack(terms).mean() if terms else zero


class ESAMCriterion(nn.Module):
    """Instance and semantic losses over the prediction levels of a batch of frames (module docstring).

    num_classes: instance classes C (1 = class-agnostic). num_semantic_classes: semantic classes without the
    ignore class (ScanNet200: 200; the ignore index is this number). Defaults are ESAM's weights.
    Returns unweighted per-level terms `level{i}_cls`, `level{i}_bce`, `level{i}_dice` (i = 0 initial queries,
    last = final), `semantic`, and the weighted `total`.
    """

    def __init__(
        self,
        num_classes: int,
        num_semantic_classes: int = 200,
        matcher: SparseTopOneMatcher | None = None,
        class_weight: float = 0.5,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        semantic_weight: float = 0.5,
        no_object_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_semantic_classes = num_semantic_classes
        self.matcher = matcher if matcher is not None else SparseTopOneMatcher()
        self.class_weight = class_weight
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.semantic_weight = semantic_weight
        self.register_buffer("class_loss_weights", torch.tensor([1.0] * num_classes + [no_object_weight]))

    def forward(self, outputs: list[FrameDecoderOutput], targets: list[FrameTargets]) -> dict[str, Tensor]:
        """outputs and targets: one entry per frame, in the same order."""
        if len(outputs) != len(targets) or not outputs:
            raise ValueError(
                f"criterion: expected as many frame targets as outputs (>= 1), got {len(outputs)} "
                f"outputs and {len(targets)} targets"
            )
        losses: dict[str, Tensor] = {}
        total = self._semantic_loss(outputs, targets)
        losses["semantic"] = total
        total = self.semantic_weight * total
        for level_index in range(len(outputs[0].levels)):
            predictions = [output.levels[level_index] for output in outputs]
            candidates = [t.superpoint_masks[:, o.query_superpoints] for o, t in zip(outputs, targets)]
            cls, bce, dice = self._level_losses(predictions, candidates, targets)
            losses[f"level{level_index}_cls"] = cls
            losses[f"level{level_index}_bce"] = bce
            losses[f"level{level_index}_dice"] = dice
            total = total + self.class_weight * cls + self.bce_weight * bce + self.dice_weight * dice
        losses["total"] = total
        return losses

    def _level_losses(
        self, predictions: list[MaskPrediction], candidates: list[Tensor], targets: list[FrameTargets]
    ) -> tuple[Tensor, Tensor, Tensor]:
        zero = sum(p.class_logits.sum() * 0.0 + p.mask_logits.sum() * 0.0 for p in predictions)
        cls_terms, bce_terms, dice_terms = [], [], []
        for prediction, frame_candidates, target in zip(predictions, candidates, targets):
            gt_masks = target.point_masks if prediction.level is MaskLevel.POINT else target.superpoint_masks
            query_indices, gt_indices = self.matcher(
                prediction.class_logits, prediction.mask_logits, gt_masks, target.labels, frame_candidates
            )
            num_queries = prediction.class_logits.shape[0]
            if num_queries > 0:
                class_targets = torch.full(
                    (num_queries,), self.num_classes, dtype=torch.long, device=prediction.class_logits.device
                )
                class_targets[query_indices] = target.labels[gt_indices]
                cls_terms.append(F.cross_entropy(prediction.class_logits, class_targets, self.class_loss_weights))
            if query_indices.numel() > 0:
                matched_logits = prediction.mask_logits[query_indices]
                matched_gt = gt_masks[gt_indices].to(matched_logits.dtype)
                bce_terms.append(F.binary_cross_entropy_with_logits(matched_logits, matched_gt))
                dice_terms.append(dice_loss(matched_logits, matched_gt))
        return _mean_or_zero(cls_terms, zero), _mean_or_zero(bce_terms, zero), _mean_or_zero(dice_terms, zero)

    def _semantic_loss(self, outputs: list[FrameDecoderOutput], targets: list[FrameTargets]) -> Tensor:
        zero = sum(output.semantic_logits.sum() * 0.0 for output in outputs)
        terms = []
        for output, target in zip(outputs, targets):
            classes = target.superpoint_semantics[output.query_superpoints]
            labelled = classes != self.num_semantic_classes
            if labelled.any():
                logits = output.semantic_logits[labelled, : self.num_semantic_classes]
                terms.append(F.cross_entropy(logits, classes[labelled]))
        return _mean_or_zero(terms, zero)
