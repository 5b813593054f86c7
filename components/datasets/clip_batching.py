"""Batches of multi-view training clips: per-frame tensors plus the targets of `OnlineCriterion`.

Per frame the targets are the single-view ones (`batching.instance_targets`); on top, each frame instance gets
a clip-level id (by its raw ScanNet instance id, objectId + 1, which all frames of a scene share) and every
clip instance an amodal box from the complete object in the clip's (identically augmented) scene geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bifusion.components.datasets.batching import frame_tensors
from bifusion.components.datasets.multi_view import PointClip
from bifusion.components.datasets.point_frames import PointFrame
from bifusion.model.box_head import instance_boxes_from_points
from bifusion.model.online_criterion import ClipTargets


@dataclass
class ClipBatch:
    """Lists indexed `[clip][frame]`, frames in stream order: xyz (N, 3) world frame (augmented), colors (N, 3),
    superpoints (N,) long, semantic (N,) long contiguous ScanNet200 index; targets: one `ClipTargets` per clip."""

    scenes: list[str]
    frames: list[list[PointFrame]]
    xyz: list[list[Tensor]]
    colors: list[list[Tensor]]
    superpoints: list[list[Tensor]]
    semantic: list[list[Tensor]]
    targets: list[ClipTargets]

    def to(self, device: torch.device) -> ClipBatch:
        def move(clips: list[list[Tensor]]) -> list[list[Tensor]]:
            return [[t.to(device, non_blocking=True) for t in clip] for clip in clips]

        return ClipBatch(self.scenes, self.frames, move(self.xyz), move(self.colors), move(self.superpoints),
                         move(self.semantic), [t.to(device) for t in self.targets])


def frame_instance_raw_ids(instance_raw: np.ndarray, ids: np.ndarray, num_instances: int) -> np.ndarray:
    """Raw instance id (G,) of each contiguous frame instance id of `instance_targets`."""
    raw = np.zeros(num_instances, dtype=np.int64)
    labelled = ids >= 0
    raw[ids[labelled]] = instance_raw[labelled]
    return raw


def vertex_instance_ids(vertex_raw: np.ndarray, clip_raw_ids: np.ndarray) -> np.ndarray:
    """Clip-level id (V,) of each scene vertex: its position in the sorted `clip_raw_ids`, -1 when the vertex's
    raw instance is not one of the clip's."""
    if len(clip_raw_ids) == 0:
        return np.full(len(vertex_raw), -1, dtype=np.int64)
    position = np.searchsorted(clip_raw_ids, vertex_raw).clip(max=len(clip_raw_ids) - 1)
    return np.where(clip_raw_ids[position] == vertex_raw, position, -1).astype(np.int64)


class ClipCollator:
    """DataLoader collate_fn: `PointClip`s -> `ClipBatch` (targets built on the CPU, in the loader workers)."""

    def __init__(self, class_agnostic: bool):
        self.class_agnostic = class_agnostic

    def __call__(self, clips: list[PointClip]) -> ClipBatch:
        batch = ClipBatch([], [], [], [], [], [], [])
        for clip in clips:
            tensors = [frame_tensors(frame, self.class_agnostic) for frame in clip.frames]
            frame_raw_ids = [frame_instance_raw_ids(frame.instance_raw, t.instance_ids, t.num_instances)
                             for frame, t in zip(clip.frames, tensors)]
            clip_raw_ids = np.unique(np.concatenate(frame_raw_ids)) if frame_raw_ids else np.zeros(0, np.int64)
            frame_instance_ids = [torch.from_numpy(np.searchsorted(clip_raw_ids, raw)) for raw in frame_raw_ids]
            boxes, present = instance_boxes_from_points(
                torch.from_numpy(clip.geometry.xyz.astype(np.float32)),
                torch.from_numpy(vertex_instance_ids(clip.geometry.instance_raw, clip_raw_ids)), len(clip_raw_ids),
            )
            batch.scenes.append(clip.scene)
            batch.frames.append(clip.frames)
            batch.xyz.append([t.xyz for t in tensors])
            batch.colors.append([t.colors for t in tensors])
            batch.superpoints.append([t.superpoints for t in tensors])
            batch.semantic.append([t.semantic for t in tensors])
            batch.targets.append(ClipTargets([t.targets for t in tensors], frame_instance_ids, boxes, present))
        return batch
