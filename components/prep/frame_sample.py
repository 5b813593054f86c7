"""One frame -> a fixed-size labelled point sample that remembers each point's source pixel."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from bifusion.components.config_schema import PrepConfig
from bifusion.components.prep.frames import Frame, FrameSkipped
from bifusion.components.prep.scene_labels import SceneAnnotation, transfer_labels
from bifusion.components.prep.superpoints import lift_to_points
from bifusion.model.geometry import unproject_depth


@dataclass
class FrameSample:
    """`points_per_frame` points of one frame, all arrays `(N, ...)` aligned row by row.

    points_world (N, 3) float64 in the raw scan frame; colors (N, 3) uint8; pixels (N, 2) int32 source
    pixel (u, v) on the depth grid; instance/semantic/superpoints (N,) int64.
    """

    frame: int
    points_world: np.ndarray
    colors: np.ndarray
    pixels: np.ndarray
    instance: np.ndarray
    semantic: np.ndarray
    superpoints: np.ndarray
    cam_to_world: np.ndarray
    num_valid_pixels: int


def frame_rng(seed: int, scene: str, frame: int) -> np.random.Generator:
    """Sampling RNG that depends only on (seed, scene, frame), so results do not depend on worker order."""
    return np.random.default_rng([seed, zlib.crc32(f"{scene}/{frame}".encode())])


def sample_frame(
    frame: Frame,
    scene: str,
    intrinsics: np.ndarray,
    annotation: SceneAnnotation,
    segment_image: np.ndarray,
    config: PrepConfig,
    source_uri: str,
) -> FrameSample:
    """Unproject valid depth, sample `points_per_frame` points (with replacement when fewer), label them.

    `segment_image (H, W)` holds the frame's 2D superpoint ids; `source_uri` names the frame in errors.
    """
    points_world, pixels = unproject_depth(frame.depth_m, intrinsics, frame.cam_to_world, config.depth_range_m)
    if len(points_world) < config.min_valid_points:
        raise FrameSkipped(source_uri, f"too few valid depth points ({len(points_world)} < prep.min_valid_points={config.min_valid_points})")
    num_valid = len(points_world)
    rng = frame_rng(config.seed, scene, frame.number)
    chosen = rng.choice(num_valid, size=config.points_per_frame, replace=num_valid < config.points_per_frame)
    points_world, pixels = points_world[chosen], pixels[chosen]
    instance, semantic = transfer_labels(annotation, points_world, config.label_box_margin_m)
    return FrameSample(
        frame=frame.number,
        points_world=points_world,
        colors=frame.color[pixels[:, 1], pixels[:, 0]],
        pixels=pixels,
        instance=instance,
        semantic=semantic,
        superpoints=lift_to_points(segment_image, pixels),
        cam_to_world=frame.cam_to_world,
        num_valid_pixels=num_valid,
    )
