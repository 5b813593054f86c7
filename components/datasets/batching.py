"""Batches of variable-size frames: per-frame tensors plus the training targets ESAM's criterion wants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bifusion.components.datasets.point_frames import PointFrame
from bifusion.components.evaluate.benchmark_classes import SCANNET200_IGNORE_INDEX, scannet200_raw_to_index
from bifusion.model.criterion import FrameTargets, make_frame_targets

NUM_STUFF_CLASSES = 2  # ScanNet200 semantic indices 0 (wall) and 1 (floor) are never instances


@dataclass
class PointBatch:
    """Lists with one entry per frame (frames differ in point and superpoint counts).

    xyz (N_i, 3), colors (N_i, 3) float; superpoints (N_i,) long; semantic (N_i,) long contiguous
    ScanNet200 index (200 = ignore); targets for the criterion.
    """

    frames: list[PointFrame]
    xyz: list[Tensor]
    colors: list[Tensor]
    superpoints: list[Tensor]
    semantic: list[Tensor]
    targets: list[FrameTargets]

    def to(self, device: torch.device) -> "PointBatch":
        move = lambda tensors: [t.to(device, non_blocking=True) for t in tensors]  # noqa: E731
        targets = [
            FrameTargets(t.point_masks.to(device), t.superpoint_masks.to(device), t.labels.to(device), t.superpoint_semantics.to(device))
            for t in self.targets
        ]
        return PointBatch(self.frames, move(self.xyz), move(self.colors), move(self.superpoints), move(self.semantic), targets)


def instance_targets(instance_raw: np.ndarray, semantic_index: np.ndarray, class_agnostic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous instance ids (N,) (-1 = none) over thing instances, and their class (G,).

    Stuff (wall, floor) and ignored classes are not instances (ESAM learns them with the semantic head
    only). An instance's class is the majority semantic class of its points; class-agnostic gives 0.
    """
    thing = (instance_raw > 0) & (semantic_index >= NUM_STUFF_CLASSES) & (semantic_index < SCANNET200_IGNORE_INDEX)
    ids = np.full(len(instance_raw), -1, dtype=np.int64)
    labels = []
    for new_id, raw_id in enumerate(np.unique(instance_raw[thing])):
        members = thing & (instance_raw == raw_id)
        ids[members] = new_id
        majority = np.bincount(semantic_index[members]).argmax()
        labels.append(0 if class_agnostic else majority - NUM_STUFF_CLASSES)
    return ids, np.asarray(labels, dtype=np.int64)


@dataclass
class FrameTensors:
    """One frame's network inputs and targets as tensors; `instance_ids` (N,) and `num_instances` are the
    contiguous thing instances of `instance_targets` (multi-view collation maps them to clip-level ids)."""

    xyz: Tensor
    colors: Tensor
    superpoints: Tensor
    semantic: Tensor
    targets: FrameTargets
    instance_ids: np.ndarray
    num_instances: int


def frame_tensors(frame: PointFrame, class_agnostic: bool) -> FrameTensors:
    semantic_index = scannet200_raw_to_index(frame.semantic_raw)
    ids, labels = instance_targets(frame.instance_raw, semantic_index, class_agnostic)
    sp = torch.from_numpy(frame.superpoints)
    sem = torch.from_numpy(semantic_index)
    targets = make_frame_targets(
        torch.from_numpy(ids), torch.from_numpy(labels), sem, sp, int(sp.max()) + 1 if len(sp) else 0, SCANNET200_IGNORE_INDEX
    )
    return FrameTensors(torch.from_numpy(frame.xyz), torch.from_numpy(frame.colors), sp, sem, targets, ids, len(labels))


class FrameCollator:
    """DataLoader collate_fn: frames -> PointBatch (targets built on the CPU, in the loader workers)."""

    def __init__(self, class_agnostic: bool):
        self.class_agnostic = class_agnostic

    def __call__(self, frames: list[PointFrame]) -> PointBatch:
        tensors = [frame_tensors(frame, self.class_agnostic) for frame in frames]
        xyz, colors, superpoints, semantic, targets = (
            [t.xyz for t in tensors], [t.colors for t in tensors], [t.superpoints for t in tensors],
            [t.semantic for t in tensors], [t.targets for t in tensors],
        )
        return PointBatch(frames, xyz, colors, superpoints, semantic, targets)
