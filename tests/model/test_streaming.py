"""StreamingSegmenter on rendered frames of a synthetic room: one box in front of a wall, seen from 3 poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from bifusion.model.online_merge import FrameInstances
from bifusion.model.streaming import SequenceSettings, StreamingSegmenter, voxel_superpoints

WIDTH, HEIGHT = 64, 48
INTRINSICS = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])
BOX = np.array([[-0.3, -0.3, 1.7], [0.3, 0.3, 2.3]])  # world min / max corners
WALL_Z = 3.0


def camera_at(x: float) -> np.ndarray:
    pose = np.eye(4)
    pose[0, 3] = x
    return pose


def render_depth_m(cam_to_world: np.ndarray, intrinsics: np.ndarray = INTRINSICS) -> np.ndarray:
    """z-depth (H, W) of the wall and the box for a camera translated (no rotation) to cam_to_world[:3, 3]."""
    origin = cam_to_world[:3, 3]
    cols, rows = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    rays = np.stack([(cols - intrinsics[0, 2]) / intrinsics[0, 0], (rows - intrinsics[1, 2]) / intrinsics[1, 1],
                     np.ones_like(cols, dtype=np.float64)], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (BOX[0] - origin) / rays
        t1 = (BOX[1] - origin) / rays
    near = np.nanmax(np.minimum(t0, t1), axis=-1)
    far = np.nanmin(np.maximum(t0, t1), axis=-1)
    hit_box = (near <= far) & (near > 0)
    return np.where(hit_box, near, WALL_Z - origin[2])


def render_color(depth_m: np.ndarray) -> np.ndarray:
    color = np.full((*depth_m.shape, 3), 128, dtype=np.uint8)
    color[depth_m < WALL_Z - 0.5] = (200, 30, 30)
    return color


class RedObjectOracle:
    """An OnlineFrameModel that finds the red object by colour: one instance, merge feature (1, 0).

    Its box is the extent of the frame's red points (at least 5 cm thick), so instances of different frames
    merge only when their points land in the same place of the world frame (merge similarity = box IoU here).
    """

    def __init__(self, min_points: int = 5) -> None:
        self.min_points = min_points
        self.frames_seen: list[int] = []
        self.resets = 0

    def reset_memory(self) -> None:
        self.resets += 1

    def predict_frame(self, xyz: Tensor, colors: Tensor, superpoints: Tensor) -> FrameInstances:
        assert xyz.shape == colors.shape and superpoints.shape == xyz.shape[:1] and superpoints.dtype == torch.long
        self.frames_seen.append(xyz.shape[0])
        red = colors[:, 0] > 0.6
        if red.sum() < self.min_points:
            return FrameInstances(torch.zeros((0, xyz.shape[0]), dtype=torch.bool), torch.zeros(0),
                                  torch.zeros(0, dtype=torch.long), torch.zeros((0, 2)), torch.zeros((0, 6)), torch.zeros((0, 3)))
        low, high = xyz[red].min(dim=0).values, xyz[red].max(dim=0).values
        box = torch.cat([(low + high) / 2, (high - low).clamp_min(0.05)])
        return FrameInstances(
            masks=red[None], scores=torch.tensor([0.9]), labels=torch.zeros(1, dtype=torch.long),
            merge_features=torch.tensor([[1.0, 0.0]]), boxes=box[None], semantic_logits=torch.zeros((1, 3)),
        )


def as_float(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) / 255.0


def segmenter(model: RedObjectOracle, **settings) -> StreamingSegmenter:
    return StreamingSegmenter(model, as_float, SequenceSettings(**settings))


def test_box_seen_in_three_frames_is_one_merged_instance() -> None:
    model = RedObjectOracle()
    stream = segmenter(model, intrinsics=INTRINSICS, points_per_frame=1000)
    for x in (-0.4, 0.0, 0.4):
        pose = camera_at(x)
        depth = render_depth_m(pose)
        step = stream.add_frame(render_color(depth), pose, depth=(depth * 1000).astype(np.uint16))
    assert model.frames_seen == [1000, 1000, 1000]
    assert step.points_world.shape == (3000, 3) and step.rgb.shape == (3000, 3)
    assert step.instances.instance_ids.tolist() == [0]
    assert step.instances.merge_counts.tolist() == [2]
    mask = step.instances.dense_masks()[0].numpy()
    inside = ((step.points_world >= BOX[0] - 0.01) & (step.points_world <= BOX[1] + 0.01)).all(axis=1)
    np.testing.assert_array_equal(mask, inside)
    assert inside[:1000].any() and inside[2000:].any()  # the box is seen in the first and the last frame
    assert (step.rgb[mask] == (200, 30, 30)).all()


def test_wrong_pose_splits_the_box() -> None:
    """Control for the test above: identity poses put the two views' box points 1.6 m apart: nothing merges."""
    model = RedObjectOracle()
    stream = segmenter(model, intrinsics=INTRINSICS)
    for x in (-0.8, 0.8):
        depth = render_depth_m(camera_at(x))
        step = stream.add_frame(render_color(depth), np.eye(4), depth=(depth * 1000).astype(np.uint16))
    assert sorted(step.instances.merge_counts.tolist()) == [0, 0]


def test_custom_intrinsics_depth_scale_and_range() -> None:
    wide = np.array([[30.0, 0.0, 30.0], [0.0, 30.0, 20.0], [0.0, 0.0, 1.0]])
    pose = camera_at(0.2)
    depth_m = render_depth_m(pose, wide)
    model = RedObjectOracle()
    stream = segmenter(model, depth_scale=4000.0, depth_range_m=(0.5, 2.5), points_per_frame=10**6)
    step = stream.add_frame(render_color(depth_m), pose, depth=np.rint(depth_m * 4000).astype(np.uint16), intrinsics=wide)
    # the wall (z = 3 m) is outside the range: only the box's front face remains, at its world position
    assert step.frame_points == int((depth_m <= 2.5).sum())
    np.testing.assert_allclose(step.points_world[:, 2], BOX[0, 2], atol=1e-3)
    assert step.points_world[:, 0].min() == pytest.approx(BOX[0, 0], abs=0.06)
    assert step.points_world[:, 0].max() == pytest.approx(BOX[1, 0], abs=0.06)
    assert step.instances.dense_masks().all()


def test_points_input_in_camera_and_world_frames_agree() -> None:
    pose = camera_at(0.3)
    depth = render_depth_m(pose)
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols]
    points_cam = np.stack([(cols - 31.5) * z / 50.0, (rows - 23.5) * z / 50.0, z], axis=1)
    points_world = points_cam + pose[:3, 3]
    results = []
    for points, frame in ((points_cam, "camera"), (points_world, "world")):
        stream = segmenter(RedObjectOracle(), intrinsics=INTRINSICS, points_per_frame=10**6)
        results.append(stream.add_frame(render_color(depth), pose, points=points, points_frame=frame))
    np.testing.assert_allclose(results[0].points_world, results[1].points_world, atol=1e-5)
    np.testing.assert_allclose(np.sort(results[0].points_world[:, 0]), np.sort(points_world[:, 0]), atol=1e-5)
    np.testing.assert_array_equal(results[0].rgb, results[1].rgb)


def test_superpoint_fn_is_used_and_voxel_subsampling_caps_points() -> None:
    calls = []

    def halves(color: np.ndarray, depth_m: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
        calls.append(depth_m.shape)
        return (np.arange(color.shape[1])[None, :] >= color.shape[1] // 2).repeat(color.shape[0], 0).astype(np.int64) * 7

    class SuperpointSpy(RedObjectOracle):
        def predict_frame(self, xyz: Tensor, colors: Tensor, superpoints: Tensor) -> FrameInstances:
            self.superpoints = superpoints
            return super().predict_frame(xyz, colors, superpoints)

    model = SuperpointSpy()
    stream = StreamingSegmenter(model, as_float, SequenceSettings(intrinsics=INTRINSICS, subsample_voxel_m=0.1), superpoint_fn=halves)
    depth = render_depth_m(camera_at(0.0))
    step = stream.add_frame(render_color(depth), camera_at(0.0), depth=(depth * 1000).astype(np.uint16))
    assert calls == [(HEIGHT, WIDTH)]
    assert sorted(model.superpoints.unique().tolist()) == [0, 1]
    cells = np.floor(step.points_world / 0.1).astype(np.int64)
    assert len(np.unique(cells, axis=0)) == step.frame_points < HEIGHT * WIDTH


def test_reset_forgets_the_sequence() -> None:
    model = RedObjectOracle()
    stream = segmenter(model, intrinsics=INTRINSICS, points_per_frame=500)
    depth = render_depth_m(camera_at(0.0))
    for _ in range(2):
        stream.add_frame(render_color(depth), camera_at(0.0), depth=(depth * 1000).astype(np.uint16))
    stream.reset()
    step = stream.add_frame(render_color(depth), camera_at(0.0), depth=(depth * 1000).astype(np.uint16))
    assert step.points_world.shape == (500, 3) and step.frame_index == 0
    assert step.instances.merge_counts.tolist() == [0]
    assert model.resets == 2  # construction and reset()


def test_voxel_superpoints_group_by_cell() -> None:
    points = np.array([[0.01, 0.0, 0.0], [0.05, 0.05, 0.05], [0.25, 0.0, 0.0]])
    assert voxel_superpoints(points, 0.2).tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pose": np.full((4, 4), np.nan)}, "finite"),
        ({"pose": np.diag([2.0, 1.0, 1.0, 1.0])}, "rigid"),
        ({"color": np.zeros((HEIGHT, WIDTH, 3), dtype=np.float32)}, "uint8"),
        ({"depth": np.zeros((HEIGHT, WIDTH, 1))}, "depth: expected"),
        ({"depth": np.zeros((HEIGHT, WIDTH))}, "no pixel inside depth_range_m"),
        ({"depth": None}, "exactly one of depth"),
        ({"points": np.zeros((5, 3))}, "exactly one of depth"),
        ({"intrinsics": np.array([[0.0, 0, 1], [0, 1, 1], [0, 0, 1]])}, "fx, fy > 0"),
    ],
)
def test_bad_input_raises(change: dict, message: str) -> None:
    depth = render_depth_m(camera_at(0.0))
    arguments = {"color": render_color(depth), "pose": camera_at(0.0), "depth": (depth * 1000).astype(np.uint16)}
    arguments.update(change)
    stream = segmenter(RedObjectOracle(), intrinsics=INTRINSICS)
    with pytest.raises(ValueError, match=message):
        stream.add_frame(arguments.pop("color"), arguments.pop("pose"), **arguments)


def test_missing_intrinsics_and_bad_settings_raise() -> None:
    depth = render_depth_m(camera_at(0.0))
    with pytest.raises(ValueError, match="no intrinsics"):
        segmenter(RedObjectOracle()).add_frame(render_color(depth), camera_at(0.0), depth=depth)
    with pytest.raises(ValueError, match="depth_range_m"):
        SequenceSettings(depth_range_m=(2.0, 1.0))
