"""ESAM's online instance merging across the frames of a scene (`OnlineMerge`, `merge_type='learnable_online'`,
esam.md §1.6).

Each new frame's instances are compared with every instance merged so far:
  similarity = (merge feature . merge feature) x (3D IoU of the axis-aligned boxes), negatives -> 0, and 0 when
  the labels differ (class-agnostic callers pass all-zero labels, so this never refuses);
Hungarian assignment maximising the similarity (scipy `linear_sum_assignment`); assigned pairs with similarity
> 0 merge, the other new instances are appended. A merged instance covers its points in every frame it was
seen in; its score, merge feature, box and semantic logits are running means over those frames (ESAM's
`merge_type='count'`; merge features are averaged, not re-normalised, as ESAM); its label is the first one.
Instances never merge with each other once stored, and none is ever dropped: after every frame the output is
the top-k (ESAM: 100) by score, sorted by score (ESAM leaves them in storage order when there are at most k).
Not ported: ESAM's fallback similarity without boxes (1 / centre distance) and its running mean of the raw
decoder queries, which nothing downstream reads.

Points: "all points seen so far" are the concatenation of the frames' points in arrival order; point j of
frame f has the global index (points of frames before f) + j, as in ESAM's column-concatenated masks.

Memory: ESAM keeps a dense bool mask (instances x all points), re-concatenated every frame, so each frame costs
O(instances x points seen) and memory grows with both. Here each frame's masks are stored once, as its
(instance id, global point index) pairs (one int64 tensor pair per frame, 16 bytes per mask point, never
modified afterwards, because a frame's instances only ever join the instance they were assigned to in that
frame). A frame then costs O(frame mask size + stored instances x frame instances) and memory grows with the
number of mask points only.
Dense masks are materialised only on request (`MergedInstances.dense_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from bifusion.model.box_head import pairwise_box_iou


@dataclass
class FrameInstances:
    """Instances predicted in one frame (after post-processing), input of `OnlineInstanceMerger.add_frame`.

    masks (K, N) bool over the frame's N points; scores (K,) float; labels (K,) long (all 0 when class-agnostic);
    merge_features (K, D) from `MergeHead` of each instance's query; boxes (K, 6) `(centre, size)` from `BoxHead`,
    world frame (shared by all frames of the scene); semantic_logits (K, C) of each instance's query.
    """

    masks: Tensor
    scores: Tensor
    labels: Tensor
    merge_features: Tensor
    boxes: Tensor
    semantic_logits: Tensor

    def __post_init__(self) -> None:
        count = self.masks.shape[0]
        rows = {
            "scores": self.scores.shape[0],
            "labels": self.labels.shape[0],
            "merge_features": self.merge_features.shape[0],
            "boxes": self.boxes.shape[0],
            "semantic_logits": self.semantic_logits.shape[0],
        }
        if self.masks.dim() != 2 or any(value != count for value in rows.values()):
            raise ValueError(
                f"FrameInstances: expected masks (K, N) and K rows everywhere, got masks "
                f"{tuple(self.masks.shape)} and row counts {rows}"
            )
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 6:
            raise ValueError(f"FrameInstances.boxes: expected (K, 6) (centre, size), got {tuple(self.boxes.shape)}")


@dataclass
class SparseInstanceMasks:
    """Instance masks over all points seen so far, as (instance id, global point index) pairs.

    owners[f] (nnz_f,) long: instance id of each pair stored for frame f; point_indices[f] (nnz_f,) long: global
    point index of the pair. num_points: points seen so far (width of a dense mask).
    """

    owners: list[Tensor]
    point_indices: list[Tensor]
    num_points: int

    def dense(self, instance_ids: Tensor) -> Tensor:
        """Dense masks (K, num_points) bool of the instances `instance_ids (K,)` long (distinct ids)."""
        masks = torch.zeros((instance_ids.shape[0], self.num_points), dtype=torch.bool, device=instance_ids.device)
        if not self.owners or instance_ids.numel() == 0:
            return masks
        owners = torch.cat(self.owners)
        points = torch.cat(self.point_indices)
        sorted_ids, order = instance_ids.sort()
        position = torch.searchsorted(sorted_ids, owners).clamp_max(sorted_ids.shape[0] - 1)
        wanted = sorted_ids[position] == owners
        masks[order[position[wanted]], points[wanted]] = True
        return masks


@dataclass
class MergedInstances:
    """The top-k merged instances after a frame, by score (descending).

    instance_ids (K,) long: stable ids (order of first appearance in the scene, from 0). scores (K,),
    labels (K,), merge_features (K, D), boxes (K, 6) `(centre, size)`, semantic_logits (K, C): running means
    over the frames merged into the instance (labels: the first frame's). merge_counts (K,) long: frames merged
    into the instance after its first (ESAM's `merge_counts`; seen in merge_counts + 1 frames).
    masks: the masks of the whole scene so far; `dense_masks()` materialises these K instances' masks.
    """

    instance_ids: Tensor
    scores: Tensor
    labels: Tensor
    merge_features: Tensor
    boxes: Tensor
    semantic_logits: Tensor
    merge_counts: Tensor
    masks: SparseInstanceMasks

    def dense_masks(self) -> Tensor:
        """(K, points seen so far) bool, rows in the order of `instance_ids`."""
        return self.masks.dense(self.instance_ids)


def merge_similarity(
    stored_features: Tensor,
    stored_boxes: Tensor,
    stored_labels: Tensor,
    new_features: Tensor,
    new_boxes: Tensor,
    new_labels: Tensor,
) -> Tensor:
    """ESAM's merge score of stored instances (M) against new ones (K) -> (M, K) >= 0.

    (features (M, D) @ features (K, D).T) x pairwise box IoU, clamped at 0, zeroed where labels differ.
    """
    similarity = (stored_features @ new_features.T) * pairwise_box_iou(stored_boxes, new_boxes)
    same_label = stored_labels[:, None] == new_labels[None, :]
    return similarity.clamp_min(0.0) * same_label


def assign_for_merge(similarity: Tensor) -> tuple[Tensor, Tensor]:
    """Hungarian assignment maximising `similarity (M, K)`, keeping pairs with similarity > 0.

    Returns `(stored_indices (P,), new_indices (P,))` long on the similarity's device.
    """
    rows, columns = linear_sum_assignment(similarity.detach().cpu().numpy(), maximize=True)
    rows = torch.from_numpy(rows).to(similarity.device)
    columns = torch.from_numpy(columns).to(similarity.device)
    positive = similarity[rows, columns] > 0
    return rows[positive], columns[positive]


def _running_mean(stored: Tensor, new: Tensor, counts: Tensor) -> Tensor:
    """Mean of `counts` observations `stored` with one more, `new`; counts (P,) >= 1."""
    weights = counts.to(stored.dtype).view(-1, *([1] * (stored.dim() - 1)))
    return (stored * weights + new) / (weights + 1.0)


class OnlineInstanceMerger:
    """Merges each frame's instances into the scene's instances (module docstring). Call `reset()` per scene.

    topk: instances returned after every frame (ESAM `inscat_topk_insts`: 100; streaming demo 200).

    State (M = instances so far): scores (M,), labels (M,) long, merge_features (M, D), boxes (M, 6),
    semantic_logits (M, C), merge_counts (M,) long; per frame, the (instance id, global point index) pairs of
    its masks; and the number of points seen. Instance i is row i (order of first appearance).
    """

    def __init__(self, topk: int = 100) -> None:
        if topk < 1:
            raise ValueError(f"topk: expected >= 1, got {topk}")
        self.topk = topk
        self.reset()

    def reset(self) -> None:
        """Forget the scene: no instances, no frames, no points."""
        self.scores: Tensor | None = None
        self.labels: Tensor | None = None
        self.merge_features: Tensor | None = None
        self.boxes: Tensor | None = None
        self.semantic_logits: Tensor | None = None
        self.merge_counts: Tensor | None = None
        self.mask_owners: list[Tensor] = []
        self.mask_point_indices: list[Tensor] = []
        self.num_points = 0

    @property
    def num_instances(self) -> int:
        return 0 if self.scores is None else self.scores.shape[0]

    @property
    def num_frames(self) -> int:
        return len(self.mask_owners)

    @torch.no_grad()
    def add_frame(self, frame: FrameInstances) -> MergedInstances:
        """Merge one frame's instances into the scene and return the top-k instances over all points so far."""
        if self.scores is None:
            self._start_scene(frame)
            instance_of_new = torch.arange(frame.scores.shape[0], device=frame.scores.device)
        else:
            self._check_widths(frame)
            similarity = merge_similarity(
                self.merge_features, self.boxes, self.labels, frame.merge_features, frame.boxes, frame.labels
            )
            stored, new = assign_for_merge(similarity)
            instance_of_new = self._merge_and_append(frame, stored, new)
        self._store_masks(frame.masks, instance_of_new)
        return self._top_instances()

    def _start_scene(self, frame: FrameInstances) -> None:
        self.scores = frame.scores.clone()
        self.labels = frame.labels.clone()
        self.merge_features = frame.merge_features.clone()
        self.boxes = frame.boxes.clone()
        self.semantic_logits = frame.semantic_logits.clone()
        self.merge_counts = torch.zeros_like(frame.labels, dtype=torch.long)

    def _check_widths(self, frame: FrameInstances) -> None:
        for name in ("merge_features", "semantic_logits"):
            stored_width, new_width = getattr(self, name).shape[1], getattr(frame, name).shape[1]
            if stored_width != new_width:
                raise ValueError(
                    f"FrameInstances.{name}: expected width {stored_width} as in the scene's earlier frames, "
                    f"got {new_width}"
                )

    def _merge_and_append(self, frame: FrameInstances, stored: Tensor, new: Tensor) -> Tensor:
        """Update merged rows, append the rest; returns the scene instance id of each new instance (K,)."""
        num_stored, num_new = self.num_instances, frame.scores.shape[0]
        unmatched = torch.ones(num_new, dtype=torch.bool, device=frame.scores.device)
        unmatched[new] = False
        instance_of_new = torch.empty(num_new, dtype=torch.long, device=frame.scores.device)
        instance_of_new[new] = stored
        instance_of_new[unmatched] = torch.arange(
            num_stored, num_stored + int(unmatched.sum()), device=frame.scores.device
        )

        self.merge_counts[stored] += 1
        counts = self.merge_counts[stored]
        for name in ("scores", "merge_features", "boxes", "semantic_logits"):
            values = getattr(self, name)
            values[stored] = _running_mean(values[stored], getattr(frame, name)[new], counts)
            setattr(self, name, torch.cat([values, getattr(frame, name)[unmatched]]))
        self.labels = torch.cat([self.labels, frame.labels[unmatched]])
        self.merge_counts = torch.cat([self.merge_counts, self.merge_counts.new_zeros(int(unmatched.sum()))])
        return instance_of_new

    def _store_masks(self, masks: Tensor, instance_of_new: Tensor) -> None:
        rows, points = torch.nonzero(masks, as_tuple=True)
        self.mask_owners.append(instance_of_new[rows])
        self.mask_point_indices.append(points + self.num_points)
        self.num_points += masks.shape[1]

    def _top_instances(self) -> MergedInstances:
        order = self.scores.sort(descending=True, stable=True).indices[: self.topk]
        return MergedInstances(
            instance_ids=order,
            scores=self.scores[order],
            labels=self.labels[order],
            merge_features=self.merge_features[order],
            boxes=self.boxes[order],
            semantic_logits=self.semantic_logits[order],
            merge_counts=self.merge_counts[order],
            masks=SparseInstanceMasks(list(self.mask_owners), list(self.mask_point_indices), self.num_points),
        )
