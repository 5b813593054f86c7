"""Exact ray casting: depth is camera z of the true intersection, silhouettes follow the pinhole projection."""

from __future__ import annotations

import math

import numpy as np

from bifusion.components.synth.geometry import Box
from bifusion.components.synth.raycast import intrinsic_matrix, render_frame
from bifusion.components.synth.textures import Plain, lambert_shading


def _looking_along_x(height: float) -> np.ndarray:
    """Camera-to-world pose at (0, 0, height) looking along +x, level (OpenCV axes: x right, y down)."""
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = [0, -1, 0], [0, 0, -1], [1, 0, 0]
    pose[2, 3] = height
    return pose


def test_a_box_renders_at_its_exact_depth_inside_its_projected_outline() -> None:
    # A board facing the camera: front face at x = 2, spanning y in [-0.5, 0.3], z in [1.0, 1.6].
    board = Box((2.05, -0.1, 1.3), (0.1, 0.8, 0.6), 0.0, Plain((200.0, 100.0, 50.0), 0.0, (0.0, 0.0, 0.0)))
    width, height = 64, 48
    intrinsics = intrinsic_matrix(577.870605, width, height)
    frame = render_frame([board], _looking_along_x(1.3), intrinsics, width, height)

    fx, cx, cy = intrinsics[0, 0], intrinsics[0, 2], intrinsics[1, 2]
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    # World y = -camera x, world z = height - camera y; on the plane x = 2 (camera z = 2).
    world_y, world_z = -(u - cx) / fx * 2.0, 1.3 - (v - cy) / fx * 2.0
    inside = (world_y >= -0.5) & (world_y <= 0.3) & (world_z >= 1.0) & (world_z <= 1.6)
    assert inside.sum() > 100 and (~inside).sum() > 100
    np.testing.assert_array_equal(frame.depth_mm, np.where(inside, 2000, 0))
    shade = lambert_shading(np.array([[-1.0, 0.0, 0.0]]))[0]
    expected_rgb = np.rint(np.array([200.0, 100.0, 50.0]) * shade).astype(np.uint8)
    assert (frame.rgb[inside] == expected_rgb).all()


def test_depth_is_along_the_optical_axis_and_the_nearest_box_wins() -> None:
    texture = Plain((128.0, 128.0, 128.0), 0.0, (0.0, 0.0, 0.0))
    wall = Box((3.05, 0.0, 1.0), (0.1, 10.0, 4.0), 0.0, texture)  # front face at x = 3
    # A box turned by 30 degrees in front of the wall covers the image centre.
    pillar = Box((1.5, 0.0, 1.0), (0.2, 0.2, 2.0), math.radians(30), texture)
    width, height = 80, 60
    intrinsics = intrinsic_matrix(577.870605, width, height)
    frame = render_frame([wall, pillar], _looking_along_x(1.0), intrinsics, width, height)
    # A plane perpendicular to the optical axis has the same z everywhere, however oblique the ray.
    wall_pixels = frame.depth_mm > 2500
    assert wall_pixels.mean() > 0.5 and (frame.depth_mm[wall_pixels] == 3000).all()
    # The pillar's nearest edge (a vertical edge at x = 1.5 - 0.1 cos30 - 0.1 sin30) is in front of the wall.
    nearest = 1.5 - 0.1 * math.cos(math.radians(30)) - 0.1 * math.sin(math.radians(30))
    pillar_depth = frame.depth_mm[(frame.depth_mm > 0) & ~wall_pixels]
    assert pillar_depth.min() >= round(nearest * 1000) and pillar_depth.max() <= 1600
