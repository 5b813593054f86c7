"""One synthetic scene: its name, its room and objects, its camera walk, and where it sits in the raw world
frame. Everything is drawn from a generator seeded with (`SynthConfig.seed`, scene index), so a scene can be
regenerated anywhere (another worker, a resumed run) without storing anything."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bifusion.components.config_schema import SynthConfig
from bifusion.components.synth.camera_path import CameraLoop
from bifusion.components.synth.geometry import SceneObject, rigid_transform, yaw_matrix
from bifusion.components.synth.room_layout import Room, generate_objects

SCENE_ID_OFFSET = 9000  # real ScanNet scene ids stop at 0806, so synthetic names never collide with them
MAX_SCENES = 1000  # keeps the four-digit ScanNet naming
MAX_TRANSLATION_M = 3.0


def scene_name(index: int) -> str:
    """ScanNet-style name of synthetic scene `index`: 0 -> "scene9000_00"."""
    if not 0 <= index < MAX_SCENES:
        raise ValueError(f"synthetic scene index must be in [0, {MAX_SCENES}), got {index}")
    return f"scene{SCENE_ID_OFFSET + index:04d}_00"


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A generated room before rendering. `objects` are in the room frame (= the axis-aligned frame: walls
    parallel to x / y, floor z = 0, centre at the origin), and their order gives the ScanNet objectIds.
    `room_to_world (4, 4)` moves the room into the raw world frame the mesh and the poses are written in."""

    name: str
    room: Room
    objects: tuple[SceneObject, ...]
    camera: CameraLoop
    room_to_world: np.ndarray

    @property
    def axis_alignment(self) -> np.ndarray:
        """ScanNet's axisAlignment (4, 4): raw world -> axis-aligned (room) frame."""
        return np.linalg.inv(self.room_to_world)


def generate_scene(config: SynthConfig, index: int) -> SyntheticScene:
    """Room, objects, camera loop and raw-frame placement of scene `index`; cheap, nothing is rendered yet."""
    if config.seed < 0:
        raise ValueError(f"synth.seed must be >= 0, got {config.seed}")
    low, high = config.room_size_m
    if not 0.0 < low <= high:
        raise ValueError(f"synth.room_size_m: expected 0 < min <= max, got {list(config.room_size_m)}")
    name = scene_name(index)
    rng = np.random.default_rng([config.seed, index])
    room = Room((float(rng.uniform(low, high)), float(rng.uniform(low, high))), config.wall_height_m)
    camera = CameraLoop.sample(room.size, config.camera_height_m, rng)
    objects = generate_objects(config, room, camera.outline(), rng)
    yaw = float(rng.uniform(-math.pi, math.pi))
    shift_x, shift_y = rng.uniform(-MAX_TRANSLATION_M, MAX_TRANSLATION_M, 2)
    room_to_world = rigid_transform(yaw_matrix(yaw), np.array([shift_x, shift_y, 0.0]))
    return SyntheticScene(name, room, tuple(objects), camera, room_to_world)
