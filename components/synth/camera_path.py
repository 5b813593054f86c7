"""The scanning walk: a closed loop around the room centre, sampled as consecutive camera poses.

Like a person scanning a room with a handheld sensor, the camera goes once around an ellipse inset from the
walls (with a gentle wobble), its height bobbing slightly, looking towards the room's interior and a little
down. Furniture is placed away from this loop (see `room_layout`), so the camera never enters an object.
Poses use the OpenCV camera convention (x right, y down, z forward) and map camera to room coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WALL_INSET_FRACTION = 0.3  # the loop keeps this fraction of each room side between itself and the walls ...
WALL_INSET_RANGE_M = (0.95, 1.6)  # ... clipped to this range, so small rooms still have a walkable ring
MIN_SEMI_AXIS_M = 0.3  # the smallest loop still worth walking around
HEIGHT_SWING_M = 0.08
HEADING_SWAY_RAD = 0.3
PITCH_RANGE_RAD = (0.12, 0.3)  # downward tilt, about 7-17 degrees: some frames see over the walls
PITCH_SWING_RAD = 0.04
WOBBLE_MAX = 0.06  # radial wobble of the loop, as a fraction of its radius


@dataclass(frozen=True)
class CameraLoop:
    """One closed walk in the room frame (floor z = 0, room centre at the origin)."""

    semi_axes: tuple[float, float]
    wobble: float
    start_angle: float
    direction: int  # +1: counter-clockwise seen from above, -1: clockwise
    height: float
    height_swing: float
    pitch: float  # mean downward tilt in radians
    phase: float  # decorrelates wobble, height, heading and pitch variations between scenes

    @classmethod
    def sample(
        cls, room_size: tuple[float, float], height_range: tuple[float, float], rng: np.random.Generator
    ) -> CameraLoop:
        """A loop for a room of `room_size` (x, y) metres at a height within `height_range`."""
        low, high = height_range
        if not 0.0 < low <= high:
            raise ValueError(f"synth.camera_height_m: expected 0 < min <= max, got {list(height_range)}")
        semi_axes = []
        for side in room_size:
            inset = float(np.clip(WALL_INSET_FRACTION * side, *WALL_INSET_RANGE_M))
            if side / 2.0 - inset < MIN_SEMI_AXIS_M:
                raise ValueError(
                    f"synth.room_size_m: a {side:.2f} m side leaves no room for the camera loop"
                    f" (need >= {2 * (inset + MIN_SEMI_AXIS_M):.2f} m)"
                )
            semi_axes.append(side / 2.0 - inset)
        swing = min(HEIGHT_SWING_M, (high - low) / 2.0)
        return cls(
            semi_axes=(semi_axes[0], semi_axes[1]),
            wobble=float(rng.uniform(0.0, WOBBLE_MAX)),
            start_angle=float(rng.uniform(-math.pi, math.pi)),
            direction=1 if rng.random() < 0.5 else -1,
            height=float(rng.uniform(low + swing, high - swing)),
            height_swing=swing,
            pitch=float(rng.uniform(*PITCH_RANGE_RAD)),
            phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        )

    def floor_points(self, angles: np.ndarray) -> np.ndarray:
        """Positions (N, 2) on the floor below the camera at loop `angles (N,)`."""
        radius = 1.0 + self.wobble * np.sin(3.0 * angles + self.phase)
        x = self.semi_axes[0] * radius * np.cos(angles)
        y = self.semi_axes[1] * radius * np.sin(angles)
        return np.stack([x, y], axis=1)

    def outline(self, count: int = 720) -> np.ndarray:
        """The whole loop densely sampled (count, 2) on the floor, for clearance checks."""
        return self.floor_points(np.linspace(0.0, 2.0 * math.pi, count, endpoint=False))

    def poses(self, num_frames: int) -> np.ndarray:
        """Camera-to-room poses (num_frames, 4, 4) at equal steps once around the loop."""
        angles = self.start_angle + self.direction * 2.0 * math.pi * np.arange(num_frames) / num_frames
        floor = self.floor_points(angles)
        heights = self.height + self.height_swing * np.sin(2.0 * angles + self.phase)
        heading = np.arctan2(-floor[:, 1], -floor[:, 0]) + HEADING_SWAY_RAD * np.sin(2.0 * angles + 2.0 * self.phase)
        pitch = self.pitch + PITCH_SWING_RAD * np.sin(3.0 * angles + 3.0 * self.phase)
        forward = np.stack([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), -np.sin(pitch)], axis=1)
        right = np.stack([np.sin(heading), -np.cos(heading), np.zeros(num_frames)], axis=1)
        down = np.cross(forward, right)
        poses = np.tile(np.eye(4), (num_frames, 1, 1))
        poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2] = right, down, forward
        poses[:, :3, 3] = np.concatenate([floor, heights[:, None]], axis=1)
        return poses
