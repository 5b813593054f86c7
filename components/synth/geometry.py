"""Upright oriented boxes and rigid transforms: the only geometry the synthetic rooms are made of.

Boxes turn about +z only, so floors stay horizontal and every surface the renderer hits is one of six
planar faces that the mesh builder can triangulate exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np

from bifusion.components.synth.textures import Texture

# Corner c of a box has local coordinates half_size * CORNER_SIGNS[c]; edges join corners differing in one sign.
CORNER_SIGNS = np.array(list(product((-1.0, 1.0), repeat=3)))
BOX_EDGES = tuple(
    (a, b) for a in range(8) for b in range(a + 1, 8) if int(np.abs(CORNER_SIGNS[a] - CORNER_SIGNS[b]).sum()) == 2
)


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation (3, 3) about +z by `yaw` radians (turns +x towards +y)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rigid_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Homogeneous matrix (4, 4) mapping p to rotation @ p + translation."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) rigid transform to `points (N, 3)`."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]


@dataclass(frozen=True)
class Box:
    """An upright oriented box: `center` and `yaw` place it in its parent frame (the room frame once an object
    is posed); `size` is the full extent along its own x, y, z in metres; `texture` colours its surface in the
    box's own frame, so the pattern moves with the box."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    texture: Texture

    @property
    def half_size(self) -> np.ndarray:
        return np.asarray(self.size, dtype=np.float64) / 2.0

    @property
    def rotation(self) -> np.ndarray:
        """Box-to-parent rotation (3, 3)."""
        return yaw_matrix(self.yaw)

    def corners(self) -> np.ndarray:
        """Corners (8, 3) in the parent frame, ordered like `CORNER_SIGNS`."""
        return (CORNER_SIGNS * self.half_size) @ self.rotation.T + np.asarray(self.center)

    def posed(self, x: float, y: float, yaw: float) -> Box:
        """This box after its parent frame is turned by `yaw` and moved to (x, y) on the floor."""
        center = yaw_matrix(yaw) @ np.asarray(self.center) + np.array([x, y, 0.0])
        return Box((float(center[0]), float(center[1]), float(center[2])), self.size, self.yaw + yaw, self.texture)


@dataclass(frozen=True)
class SceneObject:
    """One annotated instance (a ScanNet segGroup): its raw category label and its boxes in the room frame.

    `vertex_spacing_m` is the mesh spacing its texture needs; both members of an appearance pair share it so
    that point density cannot tell them apart."""

    label: str
    boxes: tuple[Box, ...]
    vertex_spacing_m: float
