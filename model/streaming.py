"""Streaming online instance segmentation: RGB-D frames in, instances over all points seen so far out.

`StreamingSegmenter` turns each posed frame into a world-frame point sample (depth image or given points),
asks an online model for that frame's instances (`OnlineFrameModel.predict_frame`, e.g. `ESAMOnline`) and
merges them into the scene's instances (`OnlineInstanceMerger`, esam.md §1.6). After every frame the caller
gets the accumulated points and the current top-k merged instances over them.

Coordinate frames: depth pixels are lifted with the frame's intrinsics into the camera frame (OpenCV:
x right, y down, z forward) and moved to the world with `cam_to_world (4, 4)`; all frames of a sequence share
that world frame, which is what merging across frames needs.

Superpoints: the network pools features over per-frame superpoints. `superpoint_fn(color, depth_m,
intrinsics) -> (H, W)` segment ids is used when given (the CLI passes prep's Felzenszwalb segmentation, so
inference sees what training saw); without it, points are grouped by a cubic grid of `superpoint_voxel_m`
(a geometric fallback, no image needed). For points given without depth, `superpoint_fn` receives a depth
image rasterised from the points (0 where no point lands).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from bifusion.model.geometry import is_valid_pose, unproject_depth
from bifusion.model.online_merge import FrameInstances, MergedInstances, OnlineInstanceMerger

SuperpointFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""color (H, W, 3) uint8, depth_m (H, W) metres, intrinsics (3, 3) -> segment ids (H, W) int."""

ColorTransform = Callable[[np.ndarray], np.ndarray]
"""rgb (N, 3) uint8 -> network colour input (N, 3) float (training's normalisation)."""


class OnlineFrameModel(Protocol):
    """What streaming needs from an online network (`ESAMOnline` implements it)."""

    def reset_memory(self) -> None:
        """Forget the previous sequence (called by `StreamingSegmenter.reset`)."""

    def predict_frame(self, xyz: Tensor, colors: Tensor, superpoints: Tensor) -> FrameInstances:
        """xyz (N, 3) world frame, colors (N, 3) network colour input, superpoints (N,) long contiguous from 0."""


@dataclass(frozen=True)
class SequenceSettings:
    """Camera and sampling settings of one sequence.

    intrinsics (3, 3) of the depth grid, or None when every `add_frame` passes its own; depth_scale: depth
    image units per metre (ScanNet PNGs: 1000); depth_range_m: (min, max) valid depth in metres;
    points_per_frame: most points kept per frame (random subset, none repeated; ESAM: 20,000);
    subsample_voxel_m: when set, keep one point per cube of this size before the random subset;
    superpoint_voxel_m: grid size of the fallback superpoints; seed: sampling RNG seed (reset per sequence).
    """

    intrinsics: np.ndarray | None = None
    depth_scale: float = 1000.0
    depth_range_m: tuple[float, float] = (0.1, 10.0)
    points_per_frame: int = 20000
    subsample_voxel_m: float | None = None
    superpoint_voxel_m: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        near, far = self.depth_range_m
        if not 0.0 <= near < far:
            raise ValueError(f"depth_range_m: expected 0 <= min < max metres, got {self.depth_range_m}")
        if not self.depth_scale > 0:
            raise ValueError(f"depth_scale: expected depth units per metre > 0, got {self.depth_scale}")
        if self.points_per_frame < 1:
            raise ValueError(f"points_per_frame: expected >= 1, got {self.points_per_frame}")
        if self.subsample_voxel_m is not None and not self.subsample_voxel_m > 0:
            raise ValueError(f"subsample_voxel_m: expected > 0 metres or None, got {self.subsample_voxel_m}")
        if not self.superpoint_voxel_m > 0:
            raise ValueError(f"superpoint_voxel_m: expected > 0 metres, got {self.superpoint_voxel_m}")
        if self.intrinsics is not None:
            check_intrinsics(self.intrinsics, "SequenceSettings.intrinsics")


@dataclass
class StreamStep:
    """State after one frame.

    frame_index: frames added before this one; points_world (P, 3) float32 and rgb (P, 3) uint8: all points kept so far, in arrival order (the columns of
    the instance masks); instances: top-k merged instances (`instances.dense_masks()` -> (K, P) bool);
    frame_points: points this frame added (the last `frame_points` rows); seconds_network / seconds_merge:
    time of this frame's `predict_frame` and merge.
    """

    frame_index: int
    points_world: np.ndarray
    rgb: np.ndarray
    instances: MergedInstances
    frame_points: int
    seconds_network: float
    seconds_merge: float


def check_intrinsics(intrinsics: np.ndarray, name: str) -> np.ndarray:
    """(3, 3) float64 from a (3, 3) or (4, 4) pinhole matrix; raises on non-finite or non-positive focals."""
    matrix = np.asarray(intrinsics, dtype=np.float64)
    if matrix.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"{name}: expected a (3, 3) or (4, 4) matrix, got shape {matrix.shape}")
    matrix = matrix[:3, :3]
    if not np.isfinite(matrix).all() or matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        raise ValueError(f"{name}: expected finite intrinsics with fx, fy > 0, got {matrix.tolist()}")
    return matrix


def voxel_superpoints(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """Superpoint ids (N,) int64, contiguous from 0: points (N, 3) grouped by a cubic grid of `voxel_m`."""
    cells = np.floor(points / voxel_m).astype(np.int64)
    return np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def voxel_subsample(points: np.ndarray, voxel_m: float) -> np.ndarray:
    """Indices (M,) of one point (the first) per occupied cube of `voxel_m`, in input order."""
    cells = np.floor(points / voxel_m).astype(np.int64)
    first = np.unique(cells, axis=0, return_index=True)[1]
    return np.sort(first)


def resize_nearest(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of an (H, W, ...) image to (H', W', ...) (pixel centres kept aligned)."""
    height, width = image.shape[:2]
    rows = np.minimum(((np.arange(size_hw[0]) + 0.5) * height / size_hw[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size_hw[1]) + 0.5) * width / size_hw[1]).astype(np.int64), width - 1)
    return image[rows][:, cols]


class StreamingSegmenter:
    """Online segmentation of one RGB-D sequence at a time (module docstring). Call `reset()` per sequence.

    model: an `OnlineFrameModel` (switched to eval mode when it is an nn.Module); color_transform: rgb uint8 ->
    the network's colour input (pass training's normalisation); settings: camera and sampling settings;
    superpoint_fn: 2D segmentation of a frame, or None for the voxel-grid fallback; topk: merged instances
    returned per frame (ESAM: 100); device: where the network runs (default: CPU).
    """

    def __init__(
        self,
        model: OnlineFrameModel,
        color_transform: ColorTransform,
        settings: SequenceSettings | None = None,
        superpoint_fn: SuperpointFn | None = None,
        topk: int = 100,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.color_transform = color_transform
        self.settings = settings or SequenceSettings()
        self.superpoint_fn = superpoint_fn
        self.device = torch.device(device)
        self.merger = OnlineInstanceMerger(topk)
        self.reset()

    def reset(self) -> None:
        """Start a new sequence: forget points, instances and the model's memory."""
        self.model.reset_memory()
        self.merger.reset()
        self.rng = np.random.default_rng(self.settings.seed)
        self._points: list[np.ndarray] = []
        self._rgb: list[np.ndarray] = []
        self.num_frames = 0

    def add_frame(
        self,
        color: np.ndarray,
        cam_to_world: np.ndarray,
        depth: np.ndarray | None = None,
        points: np.ndarray | None = None,
        points_frame: str = "camera",
        intrinsics: np.ndarray | None = None,
    ) -> StreamStep:
        """Segment one frame and merge it into the sequence.

        color (H, W, 3) uint8; cam_to_world (4, 4) rigid, camera to world; exactly one of depth (H_d, W_d) in
        depth units (divided by `settings.depth_scale`; colour is resampled onto the depth grid) or points
        (N, 3) metres in `points_frame` "camera" or "world" (coloured by projecting into `color`; points
        outside the image or outside the depth range are dropped). intrinsics (3, 3) of the depth grid (or of
        `color` for points) overrides `settings.intrinsics` for this frame.
        """
        color = self._check_color(color)
        cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
        if cam_to_world.shape != (4, 4) or not np.isfinite(cam_to_world).all():
            raise ValueError(f"cam_to_world: expected a finite (4, 4) matrix, got shape {cam_to_world.shape} "
                             f"(non-finite poses mean tracking was lost: skip the frame)")
        if not is_valid_pose(cam_to_world):
            raise ValueError("cam_to_world: not a rigid transform (rotation not orthonormal or last row not 0 0 0 1)")
        if (depth is None) == (points is None):
            raise ValueError("add_frame: pass exactly one of depth (H, W) or points (N, 3)")
        if intrinsics is None and self.settings.intrinsics is None:
            raise ValueError("add_frame: no intrinsics; pass intrinsics= or set SequenceSettings.intrinsics")
        matrix = check_intrinsics(intrinsics if intrinsics is not None else self.settings.intrinsics, "intrinsics")
        if depth is not None:
            points_world, rgb, segment_ids = self._sample_depth(color, depth, matrix, cam_to_world)
        else:
            points_world, rgb, segment_ids = self._sample_points(color, points, points_frame, matrix, cam_to_world)
        return self.add_points(points_world, rgb, segment_ids)

    def add_points(self, points_world: np.ndarray, rgb: np.ndarray, superpoints: np.ndarray | None = None) -> StreamStep:
        """Segment one frame given as world points (N, 3), rgb (N, 3) uint8 and optional superpoint ids (N,)
        (any integers; None = voxel-grid fallback), and merge it. Points are used as given (no subsampling)."""
        points_world = np.asarray(points_world, dtype=np.float32)
        if points_world.ndim != 2 or points_world.shape[1] != 3 or len(points_world) == 0:
            raise ValueError(f"points_world: expected (N, 3) with N > 0, got shape {points_world.shape}")
        if not np.isfinite(points_world).all():
            raise ValueError("points_world: contains NaN or inf")
        if rgb.shape != points_world.shape:
            raise ValueError(f"rgb: expected {points_world.shape} like points_world, got {rgb.shape}")
        if superpoints is None:
            superpoints = voxel_superpoints(points_world, self.settings.superpoint_voxel_m)
        elif superpoints.shape != (len(points_world),):
            raise ValueError(f"superpoints: expected ({len(points_world)},), got {superpoints.shape}")
        contiguous = np.unique(superpoints, return_inverse=True)[1].reshape(-1)

        started = time.perf_counter()
        with torch.no_grad():
            frame = self.model.predict_frame(
                torch.from_numpy(points_world).to(self.device),
                torch.from_numpy(np.asarray(self.color_transform(rgb), dtype=np.float32)).to(self.device),
                torch.from_numpy(contiguous.astype(np.int64)).to(self.device),
            )
        if frame.masks.shape[1] != len(points_world):
            raise ValueError(f"predict_frame: masks cover {frame.masks.shape[1]} points, expected {len(points_world)}")
        merge_started = time.perf_counter()
        instances = self.merger.add_frame(frame)
        finished = time.perf_counter()

        self._points.append(points_world)
        self._rgb.append(np.asarray(rgb, dtype=np.uint8))
        self.num_frames += 1
        return StreamStep(
            points_world=np.concatenate(self._points), rgb=np.concatenate(self._rgb), instances=instances,
            frame_points=len(points_world), seconds_network=merge_started - started,
            seconds_merge=finished - merge_started, frame_index=self.num_frames - 1,
        )

    @staticmethod
    def _check_color(color: np.ndarray) -> np.ndarray:
        color = np.asarray(color)
        if color.ndim != 3 or color.shape[2] != 3 or color.dtype != np.uint8:
            raise ValueError(f"color: expected (H, W, 3) uint8, got shape {color.shape} dtype {color.dtype}")
        return color

    def _subsample(self, points: np.ndarray) -> np.ndarray:
        """Indices of the points kept: voxel subsampling (when set), then a random `points_per_frame` subset."""
        keep = np.arange(len(points))
        if self.settings.subsample_voxel_m is not None:
            keep = voxel_subsample(points, self.settings.subsample_voxel_m)
        if len(keep) > self.settings.points_per_frame:
            keep = np.sort(self.rng.choice(keep, size=self.settings.points_per_frame, replace=False))
        return keep

    def _segments(self, color: np.ndarray, depth_m: np.ndarray, intrinsics: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
        if self.superpoint_fn is None:
            return None
        segment_image = np.asarray(self.superpoint_fn(color, depth_m, intrinsics))
        if segment_image.shape != depth_m.shape:
            raise ValueError(f"superpoint_fn: expected segment ids of shape {depth_m.shape}, got {segment_image.shape}")
        return segment_image[pixels[:, 1], pixels[:, 0]]

    def _sample_depth(
        self, color: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        depth = np.asarray(depth)
        if depth.ndim != 2:
            raise ValueError(f"depth: expected (H, W), got shape {depth.shape}")
        depth_m = np.where(np.isfinite(depth), depth, 0).astype(np.float32) / np.float32(self.settings.depth_scale)
        if color.shape[:2] != depth_m.shape:
            color = resize_nearest(color, depth_m.shape)
        points_world, pixels = unproject_depth(depth_m, intrinsics, cam_to_world, self.settings.depth_range_m)
        if len(points_world) == 0:
            raise ValueError(f"depth: no pixel inside depth_range_m={self.settings.depth_range_m} "
                             f"(depth_scale={self.settings.depth_scale} units per metre; wrong scale?)")
        keep = self._subsample(points_world)
        pixels = pixels[keep]
        segments = self._segments(color, depth_m, intrinsics, pixels)
        return points_world[keep], color[pixels[:, 1], pixels[:, 0]], segments

    def _sample_points(
        self, color: np.ndarray, points: np.ndarray, points_frame: str, intrinsics: np.ndarray, cam_to_world: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points: expected (N, 3), got shape {points.shape}")
        if points_frame == "world":
            world_to_cam = np.linalg.inv(cam_to_world)
            points_cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        elif points_frame == "camera":
            points_cam = points
        else:
            raise ValueError(f"points_frame: expected 'camera' or 'world', got {points_frame!r}")
        height, width = color.shape[:2]
        z = points_cam[:, 2]
        near, far = self.settings.depth_range_m
        valid = np.isfinite(points_cam).all(axis=1) & (z >= near) & (z <= far) & (z > 0)
        safe_z = np.where(valid, z, 1.0)
        u = np.rint(intrinsics[0, 0] * points_cam[:, 0] / safe_z + intrinsics[0, 2]).astype(np.int64)
        v = np.rint(intrinsics[1, 1] * points_cam[:, 1] / safe_z + intrinsics[1, 2]).astype(np.int64)
        valid &= (u >= 0) & (u < width) & (v >= 0) & (v < height)
        if not valid.any():
            raise ValueError("points: none projects into the colour image inside depth_range_m; wrong frame or intrinsics?")
        points_cam, pixels = points_cam[valid], np.stack([u[valid], v[valid]], axis=1)
        keep = self._subsample(points_cam)
        points_cam, pixels = points_cam[keep], pixels[keep]
        segments = None
        if self.superpoint_fn is not None:
            depth_m = np.full((height, width), np.inf)
            np.minimum.at(depth_m, (pixels[:, 1], pixels[:, 0]), points_cam[:, 2])
            depth_m[np.isinf(depth_m)] = 0.0
            segments = self._segments(color, depth_m.astype(np.float32), intrinsics, pixels)
        points_world = points_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
        return points_world, color[pixels[:, 1], pixels[:, 0]], segments
