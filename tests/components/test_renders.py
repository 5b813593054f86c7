"""Scene renders: z-buffered splats, projection conventions, and PNGs of the expected size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifusion.components import renders
from bifusion.model.geometry import SCANNET_AVERAGE_INTRINSICS_640x480, scale_intrinsics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.size == size
        return np.asarray(image.convert("RGB"))


def tiny_scene() -> tuple[np.ndarray, np.ndarray]:
    """Two 0.2 m boxes on a 1 x 1 m floor: ids 0 (floor), 1 (box at x 0.2), 2 (box at x 0.8)."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 1, (400, 2)), np.zeros(400)]
    box1 = np.c_[rng.uniform(0.1, 0.3, (150, 2)), rng.uniform(0, 0.2, 150)]
    box2 = np.c_[rng.uniform(0.7, 0.9, (150, 2)), rng.uniform(0, 0.2, 150)]
    return np.r_[floor, box1, box2], np.r_[np.zeros(400), np.ones(150), np.full(150, 2)].astype(np.int64)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_to_world (4, 4) of an OpenCV camera at eye looking at target with world +z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = eye
    return pose


def test_instance_colors_are_deterministic_and_grey_without_instance() -> None:
    colors = renders.instance_colors(np.array([0, 1, 2, 1, -1]))
    np.testing.assert_array_equal(colors[1], colors[3])
    assert not np.allclose(colors[1], colors[2])
    np.testing.assert_allclose(colors[[0, 4]], [renders.UNASSIGNED_COLOR] * 2)


def test_splat_keeps_the_nearest_point_per_pixel() -> None:
    uv = np.array([[2.0, 2.0], [2.2, 1.9], [0.0, 0.0]])
    depth = np.array([5.0, 1.0, 3.0])
    colors = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    layer, covered = renders.splat_points(uv, depth, colors, (4, 3), radius_px=0)
    np.testing.assert_array_equal(layer[2, 2], [0, 1, 0])  # depth 1 beats depth 5 on pixel (2, 2)
    np.testing.assert_array_equal(layer[0, 0], [0, 0, 1])
    assert covered.sum() == 2
    _, covered = renders.splat_points(uv[2:], depth[2:], colors[2:], (4, 3), radius_px=1)
    assert covered.sum() == 3  # a disc of radius 1 at a corner: the centre, right and below


def test_top_view_puts_world_x_right_and_y_up() -> None:
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    uv, depth, visible = renders.project_view(points, renders.OrthographicView(margin=0.0), (101, 101))
    np.testing.assert_allclose(uv, [[0, 100], [100, 100], [0, 0]], atol=1e-9)
    assert visible.all()
    np.testing.assert_allclose(depth, 0.0)


def test_pinhole_view_uses_geometry_conventions() -> None:
    # A point on the optical axis lands on the principal point of the panel; letterboxing keeps 4:3.
    pose = look_at(np.array([0.5, -1.0, 1.0]), np.array([0.5, 0.5, 0.0]))
    view = renders.PinholeView(SCANNET_AVERAGE_INTRINSICS_640x480, pose, (640, 480))
    on_axis = pose[:3, 3] + 2.0 * pose[:3, 2]
    uv, depth, visible = renders.project_view(on_axis[None], view, (320, 240))
    np.testing.assert_allclose(uv[0], [159.5, 119.5], atol=1e-6)
    assert depth[0] == pytest.approx(2.0) and visible[0]
    uv, _, _ = renders.project_view(on_axis[None], view, (400, 240))  # 40 px bars left and right
    np.testing.assert_allclose(uv[0], [199.5, 119.5], atol=1e-6)
    _, _, visible = renders.project_view((pose[:3, 3] - pose[:3, 2])[None], view, (320, 240))
    assert not visible[0]  # behind the camera


def test_prediction_ids_take_the_matched_gt_id() -> None:
    _, gt = tiny_scene()
    box1, box2 = gt == 1, gt == 2
    half_box2 = box2 & (np.cumsum(box2) <= 60)  # 60 of 150 points: IoU 0.4, unmatched
    ids = renders.prediction_instance_ids(np.stack([box1, half_box2]), np.array([0.9, 0.8]), gt)
    assert (ids[box1] == 1).all()
    assert (ids[half_box2] == 3 + 1).all()  # above every GT id (next free id 3, + mask index 1)
    assert (ids[~box1 & ~half_box2] == 0).all()
    overlapping = renders.prediction_instance_ids(np.stack([box1, box1]), np.array([0.1, 0.9]), gt)
    assert (overlapping[box1] == 1).all()


def test_side_by_side_render_writes_both_panels(tmp_path: Path) -> None:
    points, gt = tiny_scene()
    masks = np.stack([gt == 1, gt == 2])
    path = renders.render_instances_side_by_side(points, gt, masks, tmp_path / "scene.png", np.array([0.9, 0.5]), size_px=(401, 200))
    pixels = read_png(path, (401, 200))
    box1_color = np.rint(renders.instance_colors(np.array([1]))[0] * 255)
    for panel in (pixels[:, :200], pixels[:, 201:]):
        assert (np.abs(panel.astype(int) - box1_color).sum(axis=2) <= 3).sum() > 50  # the matched box has GT's colour
    pose = look_at(np.array([0.5, -1.0, 1.0]), np.array([0.5, 0.5, 0.0]))
    view = renders.PinholeView(SCANNET_AVERAGE_INTRINSICS_640x480, pose, (640, 480))
    path = renders.render_instances_side_by_side(points, gt, masks, tmp_path / "camera.png", view=view, size_px=(320, 120))
    read_png(path, (320, 120))


def test_projection_overlay_has_the_image_size(tmp_path: Path) -> None:
    points, _ = tiny_scene()
    pose = look_at(np.array([0.5, -1.0, 1.0]), np.array([0.5, 0.5, 0.0]))
    intrinsics = scale_intrinsics(SCANNET_AVERAGE_INTRINSICS_640x480, (640, 480), (80, 60))
    uv, depth, valid = renders.project_to_image(points, intrinsics, pose, (80, 60))
    assert valid.sum() > 100
    image = np.full((60, 80, 3), 40, dtype=np.uint8)
    pixels = read_png(renders.render_projection_overlay(image, uv, valid, tmp_path / "overlay.png", depth=depth), (80, 60))
    assert (pixels != 40).any(axis=2).sum() > 100  # points drawn over the flat image
    read_png(renders.render_projection_overlay(image, uv, np.zeros(len(uv), bool), tmp_path / "empty.png"), (80, 60))
    with pytest.raises(ValueError, match="image must have shape"):
        renders.render_projection_overlay(image[..., 0], uv, valid, tmp_path / "bad.png")
