"""The object catalogue: how each ScanNet raw category is built from upright boxes, with sizes and looks.

Every model is built in its own frame: x = width, y = depth with the front facing +y, z up, floor at z = 0.
Floor items are centred on their footprint; wall items have their back on the wall plane y = 0 and their
origin on the wall's foot below their centre. Labels are ScanNet raw categories with a ScanNet200 id.

The appearance pairs (picture/whiteboard, box/crate, trash can/recycling bin) draw their geometry from one
shared function before their texture, so only the texture tells the members apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from bifusion.components.synth import textures
from bifusion.components.synth.geometry import Box, SceneObject
from bifusion.components.synth.textures import Texture

Placement = Literal["free", "wall_backed", "on_wall"]

APPEARANCE_PAIRS = (("picture", "whiteboard"), ("box", "crate"), ("trash can", "recycling bin"))
BOARD_LABELS = APPEARANCE_PAIRS[0]
FLOOR_PAIRS = APPEARANCE_PAIRS[1:]


@dataclass(frozen=True)
class ObjectModel:
    """One object in its own frame, before it is placed in a room.

    `placement`: "free" (anywhere on the floor at any yaw, or backed against a wall), "wall_backed" (its back,
    -y, against a wall) or "on_wall" (hung on or set into a wall). `keep_clear_m`: depth in front of a wall
    item that floor furniture must leave free (door swing, a clear view of boards and windows)."""

    label: str
    boxes: tuple[Box, ...]
    placement: Placement
    vertex_spacing_m: float
    keep_clear_m: float = 0.0

    def extent(self) -> tuple[float, float, float, float]:
        """Footprint rectangle (x_min, x_max, y_min, y_max) in the object's frame."""
        corners = np.concatenate([box.corners() for box in self.boxes])
        low, high = corners[:, :2].min(axis=0), corners[:, :2].max(axis=0)
        return float(low[0]), float(high[0]), float(low[1]), float(high[1])

    def posed(self, x: float, y: float, yaw: float) -> SceneObject:
        """The object in the room frame after turning it by `yaw` and moving its origin to (x, y) on the floor."""
        return SceneObject(self.label, tuple(box.posed(x, y, yaw) for box in self.boxes), self.vertex_spacing_m)


def _block(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float], texture: Texture) -> Box:
    """An unrotated box spanning the (min, max) ranges `x`, `y`, `z`."""
    center = ((x[0] + x[1]) / 2.0, (y[0] + y[1]) / 2.0, (z[0] + z[1]) / 2.0)
    return Box(center, (x[1] - x[0], y[1] - y[0], z[1] - z[0]), 0.0, texture)


def _legs(width: float, depth: float, height: float, leg: float, inset: float, texture: Texture) -> list[Box]:
    """Four square legs of side `leg`, `inset` from the corners of a `width` x `depth` top, floor to `height`."""
    x = width / 2.0 - inset - leg / 2.0
    y = depth / 2.0 - inset - leg / 2.0
    size = (leg, leg, height)
    return [Box((sx * x, sy * y, height / 2.0), size, 0.0, texture) for sx in (-1.0, 1.0) for sy in (-1.0, 1.0)]


def table(rng: np.random.Generator) -> ObjectModel:
    width, depth, height = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.70, 0.78)
    wood = textures.wood(rng)
    top = _block((-width / 2, width / 2), (-depth / 2, depth / 2), (height - 0.04, height), wood)
    boxes = (top, *_legs(width, depth, height - 0.04, 0.05, 0.04, wood))
    return ObjectModel("table", boxes, "free", textures.PLAIN_VERTEX_SPACING_M)


def desk(rng: np.random.Generator) -> ObjectModel:
    """A top on two side panels with a modesty panel at the back."""
    width, depth, height = rng.uniform(1.0, 1.6), rng.uniform(0.5, 0.8), rng.uniform(0.72, 0.76)
    x, y, board = width / 2, depth / 2, 0.03
    panel = textures.painted(rng)
    top = _block((-x, x), (-y, y), (height - board, height), textures.wood(rng))
    left = _block((-x, -x + board), (-y, y - 0.02), (0.0, height - board), panel)
    right = _block((x - board, x), (-y, y - 0.02), (0.0, height - board), panel)
    back = _block((-x + board, x - board), (-y, -y + 0.02), (0.3, height - board), panel)
    return ObjectModel("desk", (top, left, right, back), "wall_backed", textures.PLAIN_VERTEX_SPACING_M)


def chair(rng: np.random.Generator) -> ObjectModel:
    """Seat, back and four legs; the back is at -y, so a chair faces +y."""
    width, depth = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.5)
    seat_height, back_height = rng.uniform(0.42, 0.48), rng.uniform(0.35, 0.5)
    x, y = width / 2, depth / 2
    cushion, frame = textures.fabric(rng), textures.wood(rng)
    seat = _block((-x, x), (-y, y), (seat_height - 0.05, seat_height), cushion)
    back = _block((-x, x), (-y, -y + 0.04), (seat_height, seat_height + back_height), cushion)
    boxes = (seat, back, *_legs(width, depth, seat_height - 0.05, 0.035, 0.01, frame))
    return ObjectModel("chair", boxes, "free", textures.PLAIN_VERTEX_SPACING_M)


def cabinet(rng: np.random.Generator) -> ObjectModel:
    """A body with one or two door panels on its front."""
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.7, 1.2)
    x, y = width / 2, depth / 2
    body_texture = textures.painted(rng)
    door_texture = textures.plain(rng, body_texture.rgb, spread=10.0)
    body = _block((-x, x), (-y, y - 0.02), (0.0, height), body_texture)
    doors = 2 if width > 0.8 else 1
    door_width = (width - 0.02 - 0.01 * (doors - 1)) / doors
    panels = [
        _block((left, left + door_width), (y - 0.02, y), (0.03, height - 0.03), door_texture)
        for left in (-x + 0.01 + k * (door_width + 0.01) for k in range(doors))
    ]
    return ObjectModel("cabinet", (body, *panels), "wall_backed", textures.PLAIN_VERTEX_SPACING_M)


def bookshelf(rng: np.random.Generator) -> ObjectModel:
    """Two sides, top, plinth, back panel and two to four shelves, open at the front."""
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.2, 2.0)
    x, y, board, plinth = width / 2, depth / 2, 0.02, 0.06
    wood = textures.wood(rng)
    inner = (-x + board, x - board)
    boxes = [
        _block((-x, -x + board), (-y, y), (0.0, height), wood),
        _block((x - board, x), (-y, y), (0.0, height), wood),
        _block(inner, (-y, y), (height - board, height), wood),
        _block(inner, (-y, y), (0.0, plinth), wood),
        _block(inner, (-y, -y + 0.01), (plinth, height - board), wood),
    ]
    shelves = int(rng.integers(2, 5))
    for level in np.linspace(plinth, height - board, shelves + 2)[1:-1]:
        boxes.append(_block(inner, (-y + 0.01, y), (level - board / 2, level + board / 2), wood))
    return ObjectModel("bookshelf", tuple(boxes), "wall_backed", textures.PLAIN_VERTEX_SPACING_M)


def couch(rng: np.random.Generator) -> ObjectModel:
    """Seat block, back rest at -y and two arm rests."""
    width, depth = rng.uniform(1.6, 2.2), rng.uniform(0.8, 1.0)
    back_height, arm = rng.uniform(0.75, 0.85), rng.uniform(0.15, 0.2)
    x, y, back_depth = width / 2, depth / 2, 0.2
    cover = textures.fabric(rng)
    back = _block((-x, x), (-y, -y + back_depth), (0.0, back_height), cover)
    seat = _block((-x + arm, x - arm), (-y + back_depth, y), (0.0, 0.42), cover)
    left = _block((-x, -x + arm), (-y + back_depth, y), (0.0, 0.6), cover)
    right = _block((x - arm, x), (-y + back_depth, y), (0.0, 0.6), cover)
    return ObjectModel("couch", (back, seat, left, right), "free", textures.PLAIN_VERTEX_SPACING_M)


def bed(rng: np.random.Generator) -> ObjectModel:
    """A single bed with its long side against the wall (as in dorm rooms): frame, mattress, headboard at -x."""
    length, width = rng.uniform(1.9, 2.1), rng.uniform(0.9, 1.4)
    head_height = rng.uniform(0.8, 1.0)
    x, y, head = length / 2, width / 2, 0.06
    wood = textures.wood(rng)
    headboard = _block((-x, -x + head), (-y, y), (0.0, head_height), wood)
    frame = _block((-x + head, x), (-y, y), (0.0, 0.3), wood)
    mattress = _block((-x + head, x - 0.03), (-y + 0.03, y - 0.03), (0.3, 0.5), textures.bedding(rng))
    return ObjectModel("bed", (headboard, frame, mattress), "wall_backed", textures.PLAIN_VERTEX_SPACING_M)


# Drawn uniformly; chairs are listed twice because rooms have more chairs than anything else.
FURNITURE: tuple[Callable[[np.random.Generator], ObjectModel], ...] = (
    table, desk, chair, chair, cabinet, bookshelf, couch, bed
)

_PAIR_TEXTURES: dict[str, Callable[[np.random.Generator], Texture]] = {
    "box": textures.cardboard,
    "crate": textures.crate_slats,
    "trash can": textures.trash_can_grey,
    "recycling bin": textures.recycling_bands,
}


def floor_pair_item(label: str, rng: np.random.Generator) -> ObjectModel:
    """A box/crate or trash can/recycling bin: one cuboid whose size distribution depends only on the pair."""
    if label in ("box", "crate"):
        size = (rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.5))
    elif label in ("trash can", "recycling bin"):
        size = (rng.uniform(0.28, 0.42), rng.uniform(0.25, 0.38), rng.uniform(0.45, 0.75))
    else:
        raise ValueError(f"floor_pair_item: unknown label {label!r}, expected one of {sorted(_PAIR_TEXTURES)}")
    x, y, z = (float(v) for v in size)
    body = _block((-x / 2, x / 2), (-y / 2, y / 2), (0.0, z), _PAIR_TEXTURES[label](rng))
    return ObjectModel(label, (body,), "free", textures.BIN_VERTEX_SPACING_M)


def board(label: str, rng: np.random.Generator) -> ObjectModel:
    """A picture or a whiteboard: the same thin board on a wall, told apart only by its front."""
    width, height = float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.4, 0.9))
    thickness, center_height = float(rng.uniform(0.015, 0.025)), float(rng.uniform(1.3, 1.6))
    if label == "picture":
        texture: Texture = textures.picture_gratings(rng)
    elif label == "whiteboard":
        texture = textures.whiteboard_strokes(rng, width, height)
    else:
        raise ValueError(f"board: unknown label {label!r}, expected 'picture' or 'whiteboard'")
    bottom = center_height - height / 2
    body = _block((-width / 2, width / 2), (0.0, thickness), (bottom, bottom + height), texture)
    return ObjectModel(label, (body,), "on_wall", textures.BOARD_VERTEX_SPACING_M, keep_clear_m=0.35)


def door(rng: np.random.Generator) -> ObjectModel:
    width, height = float(rng.uniform(0.8, 1.0)), float(rng.uniform(2.0, 2.1))
    body = _block((-width / 2, width / 2), (0.0, 0.04), (0.0, height), textures.painted(rng))
    return ObjectModel("door", (body,), "on_wall", textures.PLAIN_VERTEX_SPACING_M, keep_clear_m=0.9)


def window(rng: np.random.Generator) -> ObjectModel:
    width, height, sill = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.9, 1.3)), float(rng.uniform(0.8, 1.0))
    body = _block((-width / 2, width / 2), (0.0, 0.03), (sill, sill + height), textures.window_glass(rng))
    return ObjectModel("window", (body,), "on_wall", textures.PLAIN_VERTEX_SPACING_M, keep_clear_m=0.35)
