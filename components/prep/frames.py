"""Finding and loading the exported RGB-D frames of a scene, with per-frame validation.

A bad frame (missing file, unreadable image, invalid pose) raises `FrameSkipped` naming the file and the
reason; the stage counts these, warns, and only fails when too many frames are bad.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bifusion.components.scannet_raw import (
    RawDataError,
    SceneLayout,
    decode_color,
    decode_depth_png,
    decode_matrix_txt,
    frame_number,
)
from bifusion.components.storage import NotFoundError, Storage, StorageError, join_uri
from bifusion.model.geometry import SCANNET_AVERAGE_INTRINSICS_640x480, is_valid_pose, scale_intrinsics


class FrameSkipped(Exception):
    """This frame cannot be used; `uri` names the offending file."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


@dataclass
class Frame:
    """One exported RGB-D frame, colour resampled onto the depth grid.

    depth_m (H, W) float32 metres (0 = no measurement), color (H, W, 3) uint8,
    cam_to_world (4, 4) in the scan's raw (not axis-aligned) world frame.
    """

    number: int
    depth_m: np.ndarray
    color: np.ndarray
    cam_to_world: np.ndarray


def list_frames(storage: Storage, layout: SceneLayout) -> list[int]:
    """Frame numbers that have at least one of colour, depth or pose exported."""
    numbers: set[int] = set()
    for kind in ("color", "depth", "pose"):
        for uri in storage.list(join_uri(layout.frame_dir, kind)):
            number = frame_number(uri)
            if number is not None:
                numbers.add(number)
    return sorted(numbers)


def sample_frames(numbers: list[int], step: int) -> list[int]:
    """ESAM's sampling: keep raw frame numbers divisible by `step` (SV 200, MV 40)."""
    return [n for n in numbers if n % step == 0]


def load_depth_intrinsics(storage: Storage, layout: SceneLayout, mode: str, depth_size: tuple[int, int]) -> np.ndarray:
    """Depth intrinsics (3, 3) from the scene's file, or ESAM's fixed ScanNet average scaled to the depth size."""
    if mode == "scannet_average":
        return scale_intrinsics(SCANNET_AVERAGE_INTRINSICS_640x480, (640, 480), depth_size)
    uri = layout.intrinsic_depth
    matrix = decode_matrix_txt(storage.read_bytes(uri), uri)
    intrinsics = matrix[:3, :3]
    if not np.isfinite(intrinsics).all() or intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise RawDataError(f"{uri}: focal lengths must be finite and positive, got fx={intrinsics[0, 0]}, fy={intrinsics[1, 1]}")
    return intrinsics


def _read(storage: Storage, uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except NotFoundError:
        raise FrameSkipped(uri, "missing file") from None
    except StorageError as exc:
        raise FrameSkipped(uri, f"unreadable ({exc})") from None


def load_frame(storage: Storage, layout: SceneLayout, number: int, depth_scale: float) -> Frame:
    """Read and validate one frame's depth, colour and pose."""
    pose_uri = layout.pose(number)
    try:
        cam_to_world = decode_matrix_txt(_read(storage, pose_uri), pose_uri)
    except RawDataError as exc:
        raise FrameSkipped(pose_uri, str(exc).removeprefix(f"{pose_uri}: ")) from None
    if not np.isfinite(cam_to_world).all():
        raise FrameSkipped(pose_uri, "pose contains NaN or inf (tracking lost)")
    if not is_valid_pose(cam_to_world):
        raise FrameSkipped(pose_uri, "pose is singular or not a rigid transform")

    depth_uri = layout.depth(number)
    try:
        depth_raw = decode_depth_png(_read(storage, depth_uri), depth_uri)
    except RawDataError as exc:
        raise FrameSkipped(depth_uri, str(exc).removeprefix(f"{depth_uri}: ")) from None
    height, width = depth_raw.shape

    color_uri = layout.color(number)
    try:
        color = decode_color(_read(storage, color_uri), color_uri, size=(width, height))
    except RawDataError as exc:
        raise FrameSkipped(color_uri, str(exc).removeprefix(f"{color_uri}: ")) from None
    return Frame(number, depth_raw.astype(np.float32) / depth_scale, color, cam_to_world)
