"""ESAM's multi-view box head, axis-aligned 3D box IoU and the box loss (esam.md §1.3 item 6, §1.4).

Boxes are axis-aligned in the frame of the points they were computed from (ScanNet world frame in the
multi-view model) and written `(centre (3), size (3))`, so a box tensor is `(..., 6)`. Sizes are full edge
lengths, not half-sizes. ESAM's box loss and its online merging both use these boxes; the IoU functions here
serve both (`pairwise_box_iou` is what `online_merge` calls).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bifusion.model.query_decoder import two_layer_mlp


def box_corners(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """`(centre, size)` boxes `(..., 6)` -> `(min corner (..., 3), max corner (..., 3))`."""
    centers, sizes = boxes[..., :3], boxes[..., 3:]
    return centers - 0.5 * sizes, centers + 0.5 * sizes


def box_volume(boxes: Tensor) -> Tensor:
    """Volume `(...)` of `(centre, size)` boxes `(..., 6)`; negative sizes count as 0."""
    return boxes[..., 3:].clamp_min(0.0).prod(dim=-1)


def _iou_from_corners(
    min_a: Tensor, max_a: Tensor, min_b: Tensor, max_b: Tensor, volume_a: Tensor, volume_b: Tensor
) -> Tensor:
    overlap = (torch.minimum(max_a, max_b) - torch.maximum(min_a, min_b)).clamp_min(0.0)
    intersection = overlap.prod(dim=-1)
    union = volume_a + volume_b - intersection
    # Two empty boxes have union 0: IoU 0, not NaN (mmdet3d clamps the union at eps the same way).
    return intersection / union.clamp_min(1e-6)


def aligned_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of corresponding boxes: boxes_a, boxes_b `(K, 6)` `(centre, size)` -> `(K,)` in [0, 1]."""
    min_a, max_a = box_corners(boxes_a)
    min_b, max_b = box_corners(boxes_b)
    return _iou_from_corners(min_a, max_a, min_b, max_b, box_volume(boxes_a), box_volume(boxes_b))


def pairwise_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of every box of a with every box of b: `(A, 6)`, `(B, 6)` `(centre, size)` -> `(A, B)` in [0, 1]."""
    min_a, max_a = box_corners(boxes_a[:, None, :])
    min_b, max_b = box_corners(boxes_b[None, :, :])
    return _iou_from_corners(min_a, max_a, min_b, max_b, box_volume(boxes_a)[:, None], box_volume(boxes_b)[None, :])


def axis_aligned_iou_loss(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """Mean of 1 - IoU over corresponding boxes `(K, 6)` `(centre, size)` -> scalar (mmdet3d `AxisAlignedIoULoss`).

    K = 0 gives a zero that stays attached to `pred_boxes`' graph, never NaN.
    """
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.shape[-1] != 6:
        raise ValueError(
            f"axis_aligned_iou_loss: expected pred_boxes and gt_boxes of the same shape (K, 6), got "
            f"{tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}"
        )
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    return (1.0 - aligned_box_iou(pred_boxes, gt_boxes)).mean()


def instance_boxes_from_points(points: Tensor, instance_ids: Tensor, num_instances: int) -> tuple[Tensor, Tensor]:
    """Axis-aligned box of each instance from the points that carry its id (ESAM's `BboxCalculation`).

    For ESAM's amodal box targets pass the COMPLETE object: the reconstructed scene mesh vertices `points (P, 3)`
    (in the same frame and with the same augmentation as the frames' points) and their scene-level instance ids
    `instance_ids (P,)` long in [0, num_instances), -1 = no instance. A frame's targets are then rows of the
    result picked by the scene ids of the instances visible in that frame.

    Returns `boxes (G, 6)` `(centre, size)` (zeros for an instance without points) and `present (G,)` bool.
    """
    if points.shape[0] != instance_ids.shape[0]:
        raise ValueError(
            f"instance_boxes_from_points: points {tuple(points.shape)} and instance_ids "
            f"{tuple(instance_ids.shape)} must have the same length"
        )
    labelled = instance_ids >= 0
    ids = instance_ids[labelled]
    coordinates = points[labelled]
    index = ids[:, None].expand_as(coordinates)
    minimum = coordinates.new_zeros((num_instances, 3)).scatter_reduce(
        0, index, coordinates, reduce="amin", include_self=False
    )
    maximum = coordinates.new_zeros((num_instances, 3)).scatter_reduce(
        0, index, coordinates, reduce="amax", include_self=False
    )
    present = torch.bincount(ids, minlength=num_instances) > 0
    boxes = torch.cat([0.5 * (minimum + maximum), maximum - minimum], dim=1)
    return boxes, present


class BoxHead(nn.Module):
    """ESAM's multi-view box head: MLP d_model -> d_model -> 6 on the final (LayerNorm'd) queries.

    The 6 outputs are an offset (3) from the query's anchor (its superpoint's mean xyz,
    `PooledSuperpoints.centers[query_superpoints]`) and a log-size (3); the box is
    `(anchor + offset, exp(log-size))`, in the frame of the anchors.
    """

    def __init__(self, d_model: int = 256) -> None:
        super().__init__()
        self.regression = two_layer_mlp(d_model, d_model, 6)

    def forward(self, queries: Tensor, anchor_centers: Tensor) -> Tensor:
        """queries (Q, d_model), anchor_centers (Q, 3) -> boxes (Q, 6) `(centre, size)`."""
        regression = self.regression(queries)
        return torch.cat([anchor_centers + regression[:, :3], regression[:, 3:].exp()], dim=1)
