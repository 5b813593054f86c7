"""Room and furniture placement in the room frame (axis-aligned: walls parallel to x / y, floor z = 0,
room centre at the origin).

Floor items are placed by rejection sampling of their oriented footprints: inside the room, apart from each
other, out of the keep-clear zones of doors and boards, and off the camera's walking loop. Wall items are
placed along the walls without overlapping each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bifusion.components.config_schema import SynthConfig
from bifusion.components.synth import furniture, textures
from bifusion.components.synth.furniture import ObjectModel
from bifusion.components.synth.geometry import Box, SceneObject, yaw_matrix

WALL_THICKNESS_M = 0.1
FLOOR_THICKNESS_M = 0.1
WALL_GAP_M = (0.03, 0.1)  # space left behind wall-backed furniture
WALL_ITEM_GAP_M = 0.15  # between wall items along a wall, and from the room corners
ITEM_GAP_M = 0.05  # between two floor items
PATH_CLEARANCE_M = 0.45  # free corridor on each side of the camera loop
ATTEMPTS_PER_ITEM = 200
KINDS_PER_FURNITURE_SLOT = 6  # if a drawn kind does not fit anywhere, draw another
FREE_ITEM_AGAINST_WALL_PROBABILITY = 0.3  # free-standing items (couch, box, ...) also stand against walls


@dataclass(frozen=True, eq=False)
class Wall:
    """One wall seen from inside: the midpoint of its foot (2,), its inward unit normal (2,) and its length."""

    midpoint: np.ndarray
    normal: np.ndarray
    length: float

    @property
    def facing_yaw(self) -> float:
        """Yaw that turns an object's front (+y) towards the room, i.e. along the inward normal."""
        return math.atan2(-self.normal[0], self.normal[1])

    @property
    def along(self) -> np.ndarray:
        """Unit direction (2,) along the wall: the +x axis of an object facing the room."""
        return np.array([self.normal[1], -self.normal[0]])


@dataclass(frozen=True)
class Room:
    """The empty room: `size` (x, y) in metres between the inner wall faces, walls `wall_height` tall."""

    size: tuple[float, float]
    wall_height: float

    def walls(self) -> list[Wall]:
        """The four walls in the order -x, +x, -y, +y (the order of the wall objects)."""
        half_x, half_y = self.size[0] / 2.0, self.size[1] / 2.0
        return [
            Wall(np.array([-half_x, 0.0]), np.array([1.0, 0.0]), self.size[1]),
            Wall(np.array([half_x, 0.0]), np.array([-1.0, 0.0]), self.size[1]),
            Wall(np.array([0.0, -half_y]), np.array([0.0, 1.0]), self.size[0]),
            Wall(np.array([0.0, half_y]), np.array([0.0, -1.0]), self.size[0]),
        ]

    def random_wall_index(self, rng: np.random.Generator) -> int:
        """Index into `walls()` drawn with probability proportional to the wall's length."""
        lengths = np.array([wall.length for wall in self.walls()])
        return int(rng.choice(len(lengths), p=lengths / lengths.sum()))


def room_shell(room: Room, rng: np.random.Generator) -> list[SceneObject]:
    """Floor and four walls as slabs outside the room volume, so their inner faces are exactly the room's
    boundary; no ceiling, so rays leaving over the walls measure nothing (depth 0), as in real scans."""
    half_x, half_y, height = room.size[0] / 2.0, room.size[1] / 2.0, room.wall_height
    floor_size = (room.size[0], room.size[1], FLOOR_THICKNESS_M)
    floor = Box((0.0, 0.0, -FLOOR_THICKNESS_M / 2.0), floor_size, 0.0, textures.floor_planks(rng))
    objects = [SceneObject("floor", (floor,), textures.FLOOR_VERTEX_SPACING_M)]
    paint = textures.wall_paint(rng)
    offset_x, offset_y = half_x + WALL_THICKNESS_M / 2.0, half_y + WALL_THICKNESS_M / 2.0
    for center, size in (
        ((-offset_x, 0.0), (WALL_THICKNESS_M, room.size[1])),
        ((offset_x, 0.0), (WALL_THICKNESS_M, room.size[1])),
        ((0.0, -offset_y), (room.size[0], WALL_THICKNESS_M)),
        ((0.0, offset_y), (room.size[0], WALL_THICKNESS_M)),
    ):
        wall = Box((center[0], center[1], height / 2.0), (size[0], size[1], height), 0.0, paint)
        objects.append(SceneObject("wall", (wall,), textures.PLAIN_VERTEX_SPACING_M))
    return objects


@dataclass(frozen=True, eq=False)
class _Footprint:
    """An oriented rectangle on the floor: `corners (4, 2)` in the room frame, counter-clockwise."""

    corners: np.ndarray

    @classmethod
    def of(cls, extent: tuple[float, float, float, float], x: float, y: float, yaw: float) -> _Footprint:
        x0, x1, y0, y1 = extent
        local = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        return cls(local @ yaw_matrix(yaw)[:2, :2].T + np.array([x, y]))

    def axes(self) -> np.ndarray:
        """Unit normals (2, 2) of its edges."""
        edges = np.diff(self.corners[:3], axis=0)
        return edges[:, ::-1] * np.array([1.0, -1.0]) / np.linalg.norm(edges, axis=1, keepdims=True)

    def separated_from(self, other: _Footprint, gap: float) -> bool:
        """Whether some edge direction separates the two rectangles by at least `gap` (separating axis test)."""
        for axis in np.concatenate([self.axes(), other.axes()]):
            mine, theirs = self.corners @ axis, other.corners @ axis
            if mine.min() >= theirs.max() + gap or theirs.min() >= mine.max() + gap:
                return True
        return False

    def distance_to(self, points: np.ndarray) -> np.ndarray:
        """Euclidean distance (N,) from `points (N, 2)` to the rectangle (0 inside)."""
        origin = self.corners[0]
        u, v = self.corners[1] - origin, self.corners[3] - origin
        lengths = np.array([np.linalg.norm(u), np.linalg.norm(v)])
        local = (points - origin) @ np.stack([u / lengths[0], v / lengths[1]], axis=1)
        outside = np.maximum(np.maximum(-local, local - lengths), 0.0)
        return np.linalg.norm(outside, axis=1)

    def inside_room(self, room: Room, margin: float) -> bool:
        half = np.array(room.size) / 2.0 - margin
        return bool((np.abs(self.corners) <= half).all())


def _alternating(pair: tuple[str, str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` members of an appearance pair, alternating from a random first one, so a scene with two or more
    shows both."""
    first = int(rng.integers(2))
    return [pair[(first + k) % 2] for k in range(count)]


def _place_wall_items(room: Room, rng: np.random.Generator) -> tuple[list[SceneObject], list[_Footprint]]:
    """A door, up to two windows and two or three boards on the walls (each skipped if it does not fit under
    the wall height or along any wall); returns them and their keep-clear zones on the floor."""
    models = [furniture.door(rng)]
    models += [furniture.window(rng) for _ in range(int(rng.integers(0, 3)))]
    board_labels = _alternating(furniture.BOARD_LABELS, int(rng.integers(2, 4)), rng)
    models += [furniture.board(label, rng) for label in board_labels]
    walls = room.walls()
    occupied: list[list[tuple[float, float]]] = [[] for _ in walls]
    placed, keep_clear = [], []
    for model in models:
        x0, x1, _, _ = model.extent()
        top = max(float(box.corners()[:, 2].max()) for box in model.boxes)
        if top > room.wall_height - 0.05:
            continue
        for _ in range(ATTEMPTS_PER_ITEM):
            index = room.random_wall_index(rng)
            wall = walls[index]
            low, high = -wall.length / 2.0 + WALL_ITEM_GAP_M - x0, wall.length / 2.0 - WALL_ITEM_GAP_M - x1
            if low > high:
                continue
            along = float(rng.uniform(low, high))
            start, end = along + x0, along + x1
            if any(start < right + WALL_ITEM_GAP_M and left < end + WALL_ITEM_GAP_M for left, right in occupied[index]):
                continue
            occupied[index].append((start, end))
            x, y = (float(v) for v in wall.midpoint + along * wall.along)
            placed.append(model.posed(x, y, wall.facing_yaw))
            keep_clear.append(_Footprint.of((x0, x1, 0.0, model.keep_clear_m), x, y, wall.facing_yaw))
            break
    return placed, keep_clear


def generate_objects(
    config: SynthConfig, room: Room, loop_outline: np.ndarray, rng: np.random.Generator
) -> list[SceneObject]:
    """Floor, walls, floor items and wall items of one room, in the room frame; `loop_outline (M, 2)` is the
    camera's walk on the floor, which every floor item keeps `PATH_CLEARANCE_M` away from.

    About half of the floor items are appearance-pair members (box/crate, trash can/recycling bin); the rest
    is furniture, placed first because large items are the hardest to fit. A furniture slot that fits nowhere
    becomes one more pair member, so a crowded room still reaches its item count (the rare item that fits
    nowhere at all is left out)."""
    low, high = config.objects_per_room
    if not 0 <= low <= high:
        raise ValueError(f"synth.objects_per_room: expected 0 <= min <= max, got {list(config.objects_per_room)}")
    objects = room_shell(room, rng)
    wall_items, footprints = _place_wall_items(room, rng)
    count = int(rng.integers(low, high + 1))
    pair_count = (count + 1) // 2
    for _ in range(count - pair_count):
        for _ in range(KINDS_PER_FURNITURE_SLOT):
            model = furniture.FURNITURE[int(rng.integers(len(furniture.FURNITURE)))](rng)
            placed = _place_on_floor(model, room, loop_outline, footprints, rng)
            if placed is not None:
                objects.append(placed)
                break
        else:
            pair_count += 1
    labels = [_alternating(pair, pair_count, rng) for pair in furniture.FLOOR_PAIRS]
    for k in range(pair_count):
        model = furniture.floor_pair_item(labels[k % 2][k // 2], rng)
        placed = _place_on_floor(model, room, loop_outline, footprints, rng)
        if placed is not None:
            objects.append(placed)
    return objects + wall_items


def _place_on_floor(
    model: ObjectModel, room: Room, loop_outline: np.ndarray, footprints: list[_Footprint], rng: np.random.Generator
) -> SceneObject | None:
    """Rejection-sample a pose for `model`; on success append its footprint to `footprints`."""
    extent = model.extent()
    walls = room.walls()
    for _ in range(ATTEMPTS_PER_ITEM):
        if model.placement == "wall_backed" or rng.random() < FREE_ITEM_AGAINST_WALL_PROBABILITY:
            wall = walls[room.random_wall_index(rng)]
            yaw = wall.facing_yaw
            gap = rng.uniform(*WALL_GAP_M)
            origin = wall.midpoint + rng.uniform(-0.5, 0.5) * wall.length * wall.along + (gap - extent[2]) * wall.normal
        else:
            yaw = float(rng.uniform(-math.pi, math.pi))
            origin = rng.uniform(-0.5, 0.5, 2) * np.array(room.size)
        footprint = _Footprint.of(extent, float(origin[0]), float(origin[1]), yaw)
        if not footprint.inside_room(room, WALL_GAP_M[0]):
            continue
        if not all(footprint.separated_from(other, ITEM_GAP_M) for other in footprints):
            continue
        if footprint.distance_to(loop_outline).min() < PATH_CLEARANCE_M:
            continue
        footprints.append(footprint)
        return model.posed(float(origin[0]), float(origin[1]), yaw)
    return None
