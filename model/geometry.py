"""Pinhole camera math shared by data prep (numpy) and the fusion encoder (torch, at the end); no I/O.

Conventions (ScanNet/OpenCV): camera x right, y down, z forward; pixel (u, v) = (column, row) with
pixel centres at integer coordinates (ScanNet's cx = 319.5 for 640 px); poses are camera-to-world 4x4;
depth images hold z along the optical axis (not ray length).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # Annotations only: prep's spawned workers import this module for the numpy functions, and importing
    # torch would cost each of them seconds and hundreds of MB. The torch functions below use tensor methods.
    from torch import Tensor

# ScanNet's dataset-average depth intrinsics at 640x480, hard-coded by ESAM for every scene.
SCANNET_AVERAGE_INTRINSICS_640x480 = np.array(
    [[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]], dtype=np.float64
)


def scale_intrinsics(intrinsics: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics `(3, 3)` of an image resized from `(W, H)` to `(W', H')`.

    fx scales by s = W'/W (fy by H'/H). With pixel centres at integer coordinates (pixel u covers
    [u - 0.5, u + 0.5]), resizing maps u to (u + 0.5) s - 0.5, so c' = (c + 0.5) s - 0.5: ScanNet's
    cx = 319.5 at 640 px becomes 159.5 at 320 px (plain c * s would be off by a quarter pixel there).
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    scaled = np.array(intrinsics[:3, :3], dtype=np.float64)
    scaled[0, 0] *= sx
    scaled[1, 1] *= sy
    scaled[0, 2] = (scaled[0, 2] + 0.5) * sx - 0.5
    scaled[1, 2] = (scaled[1, 2] + 0.5) * sy - 0.5
    scaled[2] = (0.0, 0.0, 1.0)
    return scaled


def unproject_depth(
    depth_m: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray, depth_range_m: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Lift every valid depth pixel to the world frame.

    depth_m (H, W) metres, intrinsics (3, 3), cam_to_world (4, 4).
    Returns points_world (N, 3) float64 and pixels (N, 2) int32 as (u, v), for pixels with
    depth inside `depth_range_m` (0 = no measurement is always invalid).
    """
    near, far = depth_range_m
    rows, cols = np.nonzero((depth_m > 0) & (depth_m >= near) & (depth_m <= far))
    z = depth_m[rows, cols].astype(np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    points_cam = np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=1)
    points_world = points_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
    return points_world, np.stack([cols, rows], axis=1).astype(np.int32)


def project_points(points_world: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into a camera.

    points_world (N, 3), intrinsics (3, 3), cam_to_world (4, 4).
    Returns uv (N, 2) float64 continuous pixel coordinates and z (N,) depth along the optical axis;
    points with z <= 0 are behind the camera and their uv is meaningless.
    """
    world_to_cam = np.linalg.inv(cam_to_world)
    points_cam = points_world @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = points_cam[:, 2]
    safe_z = np.where(np.abs(z) > 1e-12, z, 1e-12)
    u = intrinsics[0, 0] * points_cam[:, 0] / safe_z + intrinsics[0, 2]
    v = intrinsics[1, 1] * points_cam[:, 1] / safe_z + intrinsics[1, 2]
    return np.stack([u, v], axis=1), z


def backproject_image(depth_m: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Camera-frame point of every pixel `(H, W, 3)` from depth_m (H, W); zero depth gives the origin."""
    h, w = depth_m.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([(cols - cx) * depth_m / fx, (rows - cy) * depth_m / fy, depth_m], axis=-1)


def depth_normals(depth_m: np.ndarray, intrinsics: np.ndarray, baseline_px: int = 3) -> np.ndarray:
    """Unit surface normals `(H, W, 3)` in the camera frame from a depth image (zeros where undefined).

    Differences of back-projected points `baseline_px` pixels apart on either side: depth is quantised
    (ScanNet: 1 mm), and one-pixel differences turn that quantisation into normal noise that traces
    depth contour lines on slanted walls and floors.
    """
    b = baseline_px
    points = backproject_image(depth_m, intrinsics)
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, b:-b] = points[:, 2 * b :] - points[:, : -2 * b]
    dv[b:-b, :] = points[2 * b :, :] - points[: -2 * b, :]
    normals = np.cross(du, dv)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    valid = (norm[..., 0] > 1e-12) & (depth_m > 0)
    valid[:, b:-b] &= (depth_m[:, 2 * b :] > 0) & (depth_m[:, : -2 * b] > 0)
    valid[b:-b, :] &= (depth_m[2 * b :, :] > 0) & (depth_m[: -2 * b, :] > 0)
    return np.where(valid[..., None], normals / np.maximum(norm, 1e-12), 0.0)


def is_valid_pose(cam_to_world: np.ndarray, tolerance: float = 1e-3) -> bool:
    """True for a finite rigid transform (rotation part orthonormal with det +1, last row 0 0 0 1)."""
    if cam_to_world.shape != (4, 4) or not np.isfinite(cam_to_world).all():
        return False
    rotation = cam_to_world[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=tolerance):
        return False
    if abs(np.linalg.det(rotation) - 1.0) > tolerance:
        return False
    return np.allclose(cam_to_world[3], (0.0, 0.0, 0.0, 1.0), atol=tolerance)


# Torch versions for the fusion encoder. Image sizes are (W, H), as in `scale_intrinsics`. Under the
# integer-centre convention an image of width W spans u in [-0.5, W - 0.5]; resizing keeps that extent, so
# original pixel u lands at u' = (u + 0.5) * W'/W - 0.5 (not u * W'/W, which would hold for pixel corners at
# integers; the two differ by 0.5 * (1 - W'/W) resized pixels, almost half a cell for a 640 -> 40 feature map).


def project_points_to_image(points_world: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """Torch `project_points`: points_world (N, 3), intrinsics (3, 3), cam_to_world (4, 4).

    Returns uv (N, 2) continuous pixel coordinates and z (N,) depth along the optical axis, in the dtype
    and on the device of points_world; uv is meaningless where z <= 0 (behind the camera).
    """
    world_to_cam = cam_to_world.double().inverse().to(points_world)
    points_cam = points_world @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = points_cam[:, 2]
    safe_z = z.where(z.abs() > 1e-12, 1e-12)
    k = intrinsics.to(points_world)
    return points_cam[:, :2] / safe_z[:, None] * k.diagonal()[:2] + k[:2, 2], z


def unproject_pixels(uv: Tensor, depth: Tensor, intrinsics: Tensor, cam_to_world: Tensor) -> Tensor:
    """World points (N, 3) of pixels uv (N, 2) at depths (N,) along the optical axis (inverse of the above)."""
    k = intrinsics.to(uv)
    xy_cam = (uv - k[:2, 2]) / k.diagonal()[:2] * depth[:, None]
    pose = cam_to_world.to(uv)
    return xy_cam @ pose[:3, :2].T + depth[:, None] * pose[:3, 2] + pose[:3, 3]


def resize_pixel_coordinates(uv: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Pixel coordinates uv (N, 2) of an image of size `from_size` (W, H) in the same image resized to `to_size`.

    u' = (u + 0.5) * W'/W - 0.5 (and likewise v): pixel centres stay at integer coordinates in both images.
    """
    scale = uv.new_tensor([to_size[0] / from_size[0], to_size[1] / from_size[1]])
    return (uv + 0.5) * scale - 0.5


def resize_intrinsics(intrinsics: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Intrinsics (3, 3) of an image resized from `from_size` to `to_size` (W, H), pixel centres at integers.

    fx, fy scale by W'/W, H'/H; the principal point maps like any pixel: c' = (c + 0.5) * s - 0.5, so
    projecting with the result equals `resize_pixel_coordinates` of the original projection (the same
    rule as the numpy `scale_intrinsics`).
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    resized = intrinsics[:3, :3].clone()
    resized[0, 0] = intrinsics[0, 0] * sx
    resized[1, 1] = intrinsics[1, 1] * sy
    resized[0, 2] = (intrinsics[0, 2] + 0.5) * sx - 0.5
    resized[1, 2] = (intrinsics[1, 2] + 0.5) * sy - 0.5
    return resized


def pixel_to_grid_coordinates(uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """`grid_sample` coordinates (N, 2) in [-1, 1] for pixels uv (N, 2) of an image of size (W, H).

    x = (2u + 1) / W - 1, y = (2v + 1) / H - 1: with `align_corners=False`, -1 and +1 are the outer edges of
    the border pixels, i.e. u = -0.5 and u = W - 0.5. The result does not depend on the resolution of the
    map being sampled, as long as that map covers the same image (any resize with align_corners=False).
    """
    size = uv.new_tensor([image_size[0], image_size[1]])
    return (2.0 * uv + 1.0) / size - 1.0


def inside_image(uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N,) bool: uv (N, 2) inside an image of size (W, H), i.e. -0.5 <= u < W - 0.5 and the same for v."""
    width, height = image_size
    u, v = uv[:, 0], uv[:, 1]
    return (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)


def visible_in_depth(
    uv: Tensor, z: Tensor, depth_m: Tensor, tolerance_m: float, tolerance_relative: float
) -> Tensor:
    """(N,) bool occlusion test of points at pixels uv (N, 2) with depths z (N,) against a depth map (H, W).

    Reads the nearest depth pixel (bilinear would blend foreground and background across depth edges) and
    keeps a point when the sensor saw something there (d > 0) and |z - d| <= tolerance_m + tolerance_relative * d.
    Symmetric on purpose: a point far behind the surface is occluded; one far in front of it was not there
    when the frame was taken (noise, a moved object), so that pixel does not show it either. Points outside
    the depth map are not visible.
    """
    height, width = depth_m.shape
    inside = inside_image(uv, (width, height))
    cols = uv[:, 0].round().long().clamp(0, width - 1)
    rows = uv[:, 1].round().long().clamp(0, height - 1)
    sensor = depth_m.to(z.device)[rows, cols].to(z.dtype)
    tolerance = tolerance_m + tolerance_relative * sensor
    return inside & (sensor > 0) & ((z - sensor).abs() <= tolerance)
