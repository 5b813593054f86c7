"""Training losses of the online multi-view model (esam.md §1.4): per-frame instance and semantic losses,
the amodal box loss and the contrastive merge loss between adjacent frames.

For a batch of clips (frames in stream order):
  instance = `ESAMCriterion` over every frame of the batch (its mean over frames) x mean clip length, i.e. the
             per-frame losses SUMMED over a clip's frames and averaged over clips, as ESAM does;
  box      = per frame, 1 - axis-aligned IoU between the box of each query the matcher assigns on the final
             level and its instance's box from the COMPLETE object in the reconstructed scene (amodal, ESAM's
             `BboxCalculation` with `with_rec`); mean over matched pairs, then over frames with matches, x
             mean clip length like the instance terms; instances without scene geometry are left out;
  merge    = `MergeCriterion` (weight 2.0, temperature 0.07) on clip-level memberships;
  total    = instance + box_weight (ESAM 0.5) x box + merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bifusion.model.box_head import axis_aligned_iou_loss
from bifusion.model.criterion import ESAMCriterion, FrameTargets
from bifusion.model.esam_online import OnlineFrameOutput
from bifusion.model.merge_head import MergeCriterion, query_instance_membership
from bifusion.model.query_decoder import MaskLevel


@dataclass
class ClipTargets:
    """Ground truth of one clip.

    frames: `FrameTargets` per frame (rows = the frame's own instances, as single-view training);
    frame_instance_ids: per frame (G_f,) long, the clip-level id in [0, G) of each of the frame's rows (the same
    object has the same id in every frame); boxes (G, 6) `(centre, size)` amodal box of each clip instance in
    the frames' (augmented) world frame; box_present (G,) bool: the instance has scene geometry.
    """

    frames: list[FrameTargets]
    frame_instance_ids: list[Tensor]
    boxes: Tensor
    box_present: Tensor

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.frame_instance_ids):
            raise ValueError(
                f"ClipTargets: {len(self.frames)} frame targets but {len(self.frame_instance_ids)} id maps"
            )
        for index, (frame, ids) in enumerate(zip(self.frames, self.frame_instance_ids)):
            if ids.shape != (frame.labels.shape[0],):
                raise ValueError(
                    f"ClipTargets: frame {index} has {frame.labels.shape[0]} instances but an id map of shape "
                    f"{tuple(ids.shape)}"
                )

    @property
    def num_instances(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device) -> ClipTargets:
        frames = [
            FrameTargets(t.point_masks.to(device), t.superpoint_masks.to(device), t.labels.to(device),
                         t.superpoint_semantics.to(device))
            for t in self.frames
        ]
        return ClipTargets(frames, [ids.to(device) for ids in self.frame_instance_ids], self.boxes.to(device),
                           self.box_present.to(device))


def clip_memberships(outputs: list[OnlineFrameOutput], targets: ClipTargets) -> list[Tensor]:
    """Per frame (G, Q_t) bool: which queries lie inside which clip-level instance (for `MergeCriterion`)."""
    memberships = []
    for output, frame, ids in zip(outputs, targets.frames, targets.frame_instance_ids):
        frame_membership = query_instance_membership(frame.superpoint_masks, output.decoder.query_superpoints)
        membership = frame_membership.new_zeros((targets.num_instances, frame_membership.shape[1]))
        membership[ids] = frame_membership
        memberships.append(membership)
    return memberships


class OnlineCriterion(nn.Module):
    """Multi-view losses (module docstring). Returns the instance criterion's terms, `box`, `merge`, `total`."""

    def __init__(self, instance: ESAMCriterion, merge: MergeCriterion, box_weight: float = 0.5) -> None:
        super().__init__()
        self.instance = instance
        self.merge = merge
        self.box_weight = box_weight

    def forward(self, outputs: list[list[OnlineFrameOutput]], targets: list[ClipTargets]) -> dict[str, Tensor]:
        """outputs[clip][frame] from `ESAMOnline.forward_clip`; targets: one `ClipTargets` per clip."""
        if len(outputs) != len(targets) or not outputs:
            raise ValueError(
                f"OnlineCriterion: expected one target per clip (>= 1), got {len(outputs)} and {len(targets)}"
            )
        for clip, (clip_outputs, clip_targets) in enumerate(zip(outputs, targets)):
            if len(clip_outputs) != len(clip_targets.frames):
                raise ValueError(
                    f"OnlineCriterion: clip {clip} has {len(clip_outputs)} frame outputs but "
                    f"{len(clip_targets.frames)} frame targets"
                )
        frames_per_clip = sum(len(clip) for clip in outputs) / len(outputs)
        losses = self.instance(
            [o.decoder for clip in outputs for o in clip], [t for clip in targets for t in clip.frames]
        )
        instance_total = losses.pop("total")
        box = self._box_loss(outputs, targets)
        merge = self.merge(
            [[o.merge_features for o in clip] for clip in outputs],
            [clip_memberships(clip_outputs, clip_targets) for clip_outputs, clip_targets in zip(outputs, targets)],
        )
        losses["instance"] = instance_total
        losses["box"] = box
        losses["merge"] = merge
        losses["total"] = frames_per_clip * (instance_total + self.box_weight * box) + merge
        return losses

    def _box_loss(self, outputs: list[list[OnlineFrameOutput]], targets: list[ClipTargets]) -> Tensor:
        terms = []
        zero = sum(o.boxes.sum() * 0.0 for clip in outputs for o in clip)
        for clip_outputs, clip_targets in zip(outputs, targets):
            for output, frame, ids in zip(clip_outputs, clip_targets.frames, clip_targets.frame_instance_ids):
                final = output.decoder.final
                gt_masks = frame.point_masks if final.level is MaskLevel.POINT else frame.superpoint_masks
                candidates = frame.superpoint_masks[:, output.decoder.query_superpoints]
                query_indices, gt_indices = self.instance.matcher(
                    final.class_logits, final.mask_logits, gt_masks, frame.labels, candidates
                )
                instance_ids = ids[gt_indices]
                keep = clip_targets.box_present[instance_ids]
                if bool(keep.any()):
                    terms.append(
                        axis_aligned_iou_loss(output.boxes[query_indices[keep]], clip_targets.boxes[instance_ids[keep]])
                    )
        return torch.stack(terms).mean() if terms else zero
