"""Pinhole camera math shared by data prep and the fusion encoder (numpy, no I/O).

Conventions (ScanNet/OpenCV): camera x right, y down, z forward; pixel (u, v) = (column, row) with
pixel centres at integer coordinates (ScanNet's cx = 319.5 for 640 px); poses are camera-to-world 4x4;
depth images hold z along the optical axis (not ray length).
"""

from __future__ import annotations

import numpy as np

# ScanNet's dataset-average depth intrinsics at 640x480, hard-coded by ESAM for every scene.
SCANNET_AVERAGE_INTRINSICS_640x480 = np.array(
    [[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]], dtype=np.float64
)


def scale_intrinsics(intrinsics: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics `(3, 3)` of an image resized from `(W, H)` to `(W', H')`: fx, cx scale by W'/W; fy, cy by H'/H.

    Pixel centres stay at integer coordinates, as in ScanNet's exports, so c' = c * s exactly as the
    fusion design specifies.
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    scaled = np.array(intrinsics[:3, :3], dtype=np.float64)
    scaled[0, :] *= sx
    scaled[1, :] *= sy
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
