"""Exact ray casting of upright boxes into registered depth and colour images.

The ray of pixel (u, v) has direction K^-1 [u, v, 1] in the camera frame (OpenCV: x right, y down, z forward;
pixel centres at integer coordinates), so the ray parameter of a hit is its camera z, i.e. the depth a
ScanNet sensor reports. Each box is intersected analytically (slab method) with the rays of the pixels
inside its projected bounding rectangle only, keeping a frame fast in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bifusion.components.synth.geometry import BOX_EDGES, Box
from bifusion.components.synth.textures import lambert_shading

NEAR_PLANE_M = 1e-3  # hits closer than this would round to depth 0 (invalid) anyway
MAX_DEPTH_MM = 65535  # the largest depth a uint16 PNG holds
BACKGROUND_RGB = (205, 205, 210)  # where rays leave over the walls: the missing ceiling, a light grey


def intrinsic_matrix(focal_length_px: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (3, 3): focal length given at 640 px width and scaled with it, centre between the middle pixels
    (ScanNet: 319.5, 239.5 at 640x480)."""
    focal = focal_length_px * width / 640.0
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def pixel_rays(intrinsics: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame rays K^-1 [u, v, 1] = (ray_x[u], ray_y[v], 1) of the pixel centres, as `ray_x (W,)` and
    `ray_y (H,)`: with a skew-free K they are separable, which keeps per-box ray sets cheap to form."""
    if intrinsics[0, 1] != 0.0:
        raise ValueError("pixel_rays: expected a skew-free intrinsic matrix")
    ray_x = (np.arange(width) - intrinsics[0, 2]) / intrinsics[0, 0]
    ray_y = (np.arange(height) - intrinsics[1, 2]) / intrinsics[1, 1]
    return ray_x, ray_y


@dataclass
class RenderedFrame:
    """`depth_mm (H, W)` uint16 millimetres along the optical axis (0 = nothing hit), `rgb (H, W, 3)` uint8."""

    depth_mm: np.ndarray
    rgb: np.ndarray


def _pixel_window(
    box: Box, world_to_camera: np.ndarray, intrinsics: np.ndarray, width: int, height: int
) -> tuple[slice, slice] | None:
    """Rows and columns of the pixels whose rays can hit `box` in front of the camera, or None.

    The part of the box in front of the near plane is the convex hull of its corners there and of the points
    where its edges cross the plane, so the projections of those points bound the box's image."""
    corners = box.corners() @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    in_front = corners[:, 2] > NEAR_PLANE_M
    if not in_front.any():
        return None
    points = [corners[in_front]]
    for a, b in BOX_EDGES:
        if in_front[a] != in_front[b]:
            share = (NEAR_PLANE_M - corners[a, 2]) / (corners[b, 2] - corners[a, 2])
            points.append((corners[a] + share * (corners[b] - corners[a]))[None, :])
    hull = np.concatenate(points)
    projected = hull @ intrinsics.T
    u = projected[:, 0] / projected[:, 2]
    v = projected[:, 1] / projected[:, 2]
    # One pixel of margin absorbs rounding in the projection; the slab test decides the exact hits.
    u0, u1 = max(math.floor(u.min()) - 1, 0), min(math.ceil(u.max()) + 1, width - 1)
    v0, v1 = max(math.floor(v.min()) - 1, 0), min(math.ceil(v.max()) + 1, height - 1)
    if u0 > u1 or v0 > v1:
        return None
    return slice(v0, v1 + 1), slice(u0, u1 + 1)


def _box_frame(box: Box, camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre (3,) in the box's own frame and the rotation (3, 3) from camera to box axes."""
    to_box = box.rotation.T
    return to_box @ (camera_to_world[:3, 3] - np.asarray(box.center)), to_box @ camera_to_world[:3, :3]


def _slab_entry(
    origin: np.ndarray, directions: list[np.ndarray], half_size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Entry ray parameter into the box [-half_size, half_size] (inf where missed or behind the origin) and the
    box axis of the entry face, for rays `origin + t * d` given per axis as `directions[k]` (any shape)."""
    t_enter = np.full(directions[0].shape, -np.inf)
    t_exit = np.full(directions[0].shape, np.inf)
    axis = np.zeros(directions[0].shape, dtype=np.int64)
    # A ray parallel to a slab gives +-inf (inside or outside it) or, exactly on its plane, NaN: a miss.
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            t_low = (-half_size[k] - origin[k]) / directions[k]
            t_high = (half_size[k] - origin[k]) / directions[k]
            t_near = np.minimum(t_low, t_high)
            later = t_near > t_enter
            t_enter = np.where(later, t_near, t_enter)
            axis[later] = k
            t_exit = np.minimum(t_exit, np.maximum(t_low, t_high))
    hit = (t_enter <= t_exit) & (t_enter > 0.0)
    return np.where(hit, t_enter, np.inf), axis


def _face_shading(box: Box) -> np.ndarray:
    """Shading (3, 2) of the box's faces: [axis, 0] for the face normal to -axis, [axis, 1] for +axis."""
    normals_local = np.stack([-np.eye(3), np.eye(3)], axis=1)  # (axis, side, 3)
    return lambert_shading((normals_local @ box.rotation.T).reshape(6, 3)).reshape(3, 2)


def render_frame(
    boxes: Sequence[Box], camera_to_world: np.ndarray, intrinsics: np.ndarray, width: int, height: int
) -> RenderedFrame:
    """Depth and colour seen by a camera at `camera_to_world (4, 4)` (the frame the boxes live in).

    First a depth pass keeps, per pixel, the nearest box hit and its entry face; then each box colours its
    pixels with its texture at the exact hit point, shaded by the face normal (view-independent)."""
    ray_x, ray_y = pixel_rays(intrinsics, width, height)
    world_to_camera = np.linalg.inv(camera_to_world)
    depth = np.full((height, width), np.inf)
    owner = np.full((height, width), -1, dtype=np.int64)
    face_axis = np.zeros((height, width), dtype=np.int64)
    for index, box in enumerate(boxes):
        window = _pixel_window(box, world_to_camera, intrinsics, width, height)
        if window is None:
            continue
        rows, columns = window
        origin, to_box = _box_frame(box, camera_to_world)
        x, y = ray_x[None, columns], ray_y[rows, None]
        directions = [to_box[k, 0] * x + to_box[k, 1] * y + to_box[k, 2] for k in range(3)]
        t, axis = _slab_entry(origin, directions, box.half_size)
        closer = t < depth[window]
        # Basic slices are views: these assignments write into the frame buffers.
        depth[window][closer] = t[closer]
        owner[window][closer] = index
        face_axis[window][closer] = axis[closer]

    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND_RGB
    flat_owner = owner.ravel()
    order = np.argsort(flat_owner, kind="stable")
    boundaries = np.searchsorted(flat_owner[order], np.arange(len(boxes) + 1))
    for index, box in enumerate(boxes):
        pixels = order[boundaries[index] : boundaries[index + 1]]
        if len(pixels) == 0:
            continue
        origin, to_box = _box_frame(box, camera_to_world)
        x, y = ray_x[pixels % width], ray_y[pixels // width]
        directions = [to_box[k, 0] * x + to_box[k, 1] * y + to_box[k, 2] for k in range(3)]
        t = depth.ravel()[pixels]
        local = np.stack([origin[k] + t * directions[k] for k in range(3)], axis=1)
        axis = face_axis.ravel()[pixels]
        # A ray enters through the face whose outward normal opposes its direction.
        positive_face = np.choose(axis, directions) < 0.0
        shading = _face_shading(box)[axis, positive_face.astype(np.int64)]
        colors = box.texture.colors(local + box.half_size, axis) * shading[:, None]
        rgb.reshape(-1, 3)[pixels] = np.clip(np.rint(colors), 0, 255).astype(np.uint8)

    depth_mm = np.rint(depth * 1000.0)
    depth_mm[~np.isfinite(depth_mm) | (depth_mm > MAX_DEPTH_MM)] = 0
    return RenderedFrame(depth_mm.astype(np.uint16), rgb)
