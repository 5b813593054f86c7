"""Clip collation: per-frame targets, clip-level instance ids shared across frames, amodal boxes from the
scene geometry."""

from __future__ import annotations

import numpy as np
import torch

from bifusion.components.datasets.clip_batching import ClipCollator, vertex_instance_ids
from bifusion.components.datasets.multi_view import PointClip, SceneGeometry
from bifusion.components.datasets.point_frames import PointFrame

WALL, CHAIR, TABLE = 1, 2, 4  # raw ScanNet ids


def frame(name: str, xyz: list[list[float]], instance: list[int], semantic: list[int]) -> PointFrame:
    points = np.asarray(xyz, dtype=np.float32)
    count = len(points)
    return PointFrame(
        name=name, xyz=points, xyz_stored=points, colors=np.zeros((count, 3), np.float32),
        rgb=np.zeros((count, 3), np.uint8), instance_raw=np.asarray(instance, np.int64),
        semantic_raw=np.asarray(semantic, np.int64), superpoints=np.arange(count, dtype=np.int64) // 2,
        source_pixels=None, augment=np.eye(4),
    )


def test_clip_ids_are_shared_by_frames_and_boxes_cover_the_complete_object() -> None:
    # Raw instance 9 (a table) is seen in both frames, 5 (a chair) only in the second, 3 (wall) is stuff.
    first = frame("s_0", [[2.1, 2, 0], [2.2, 2, 0], [5, 5, 0], [5, 5, 1]], [9, 9, 3, 3], [TABLE, TABLE, WALL, WALL])
    second = frame("s_1", [[2, 2, 0], [2.4, 2, 0], [0.1, 0, 0], [0.3, 0.1, 0]], [9, 9, 5, 5], [TABLE, TABLE, CHAIR, CHAIR])
    geometry = SceneGeometry(
        xyz=np.array([[-0.5, 0, 0], [0.5, 0.4, 0.8], [2, 2, 0], [3, 2.5, 1], [9, 9, 9]]),
        instance_raw=np.array([5, 5, 9, 9, 3]), semantic_raw=np.array([CHAIR, CHAIR, TABLE, TABLE, WALL]),
        segments=np.zeros(5, np.int64),
    )
    batch = ClipCollator(class_agnostic=True)([PointClip("s", [first, second], geometry, np.eye(4))])
    (targets,) = batch.targets
    # Frame rows follow raw ids (5, then 9) in each frame; clip ids are 5 -> 0, 9 -> 1 in every frame.
    assert [ids.tolist() for ids in targets.frame_instance_ids] == [[1], [0, 1]]
    assert targets.frames[1].point_masks.tolist() == [[False, False, True, True], [True, True, False, False]]
    assert targets.box_present.tolist() == [True, True]
    torch.testing.assert_close(targets.boxes, torch.tensor([[0.0, 0.2, 0.4, 1.0, 0.4, 0.8], [2.5, 2.25, 0.5, 1.0, 0.5, 1.0]]))
    assert [len(clip) for clip in batch.xyz] == [2]


def test_vertices_of_instances_outside_the_clip_get_no_id() -> None:
    assert vertex_instance_ids(np.array([4, 7, 0, 9, 12]), np.array([4, 9])).tolist() == [0, -1, -1, 1, -1]
    assert vertex_instance_ids(np.array([4, 7]), np.zeros(0, np.int64)).tolist() == [-1, -1]
