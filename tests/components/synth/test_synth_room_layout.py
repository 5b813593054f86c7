"""Room layouts: objects inside the room and apart, the camera walk clear of them, ScanNet labels, and the
appearance pairs sharing one geometry distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bifusion.components.config_schema import load_config
from bifusion.components.labels import label_table
from bifusion.components.synth import SyntheticScene, furniture, generate_scene
from bifusion.components.synth.geometry import Box

WALL_ITEMS = {"door", "window", "picture", "whiteboard"}
SHELL = {"floor", "wall"}
PAIRS = (("picture", "whiteboard"), ("box", "crate"), ("trash can", "recycling bin"))


@pytest.fixture(scope="module")
def scenes() -> list[SyntheticScene]:
    config = load_config(["base"]).synth
    return [generate_scene(config, index) for index in range(16)]


def _footprint(box: Box) -> np.ndarray:
    return box.corners()[[0, 2, 6, 4], :2]  # the bottom rectangle, in order around it


def _separated(a: Box, b: Box, touching: float = 1e-9) -> bool:
    """Whether two upright boxes are disjoint (touching allowed): apart in z, or split by a footprint edge."""
    za, zb = a.corners()[:, 2], b.corners()[:, 2]
    if za.min() >= zb.max() - touching or zb.min() >= za.max() - touching:
        return True
    fa, fb = _footprint(a), _footprint(b)
    for corners in (fa, fb):
        edges = np.diff(np.vstack([corners, corners[:1]]), axis=0)
        for normal in edges[:, ::-1] * np.array([1.0, -1.0]):
            normal = normal / np.linalg.norm(normal)
            pa, pb = fa @ normal, fb @ normal
            if pa.min() >= pb.max() - touching or pb.min() >= pa.max() - touching:
                return True
    return False


def test_objects_are_inside_the_room_and_do_not_intersect(scenes: list[SyntheticScene]) -> None:
    for scene in scenes:
        half = np.array(scene.room.size) / 2.0
        items = [o for o in scene.objects if o.label not in SHELL]
        for item in items:
            for box in item.boxes:
                corners = box.corners()
                assert (np.abs(corners[:, :2]) <= half + 1e-9).all(), (scene.name, item.label)
                assert corners[:, 2].min() >= -1e-9 and corners[:, 2].max() <= scene.room.wall_height
        for i, first in enumerate(items):
            for second in items[i + 1 :]:
                apart = all(_separated(a, b) for a in first.boxes for b in second.boxes)
                assert apart, (scene.name, first.label, second.label)


def test_floor_item_count_follows_objects_per_room(scenes: list[SyntheticScene]) -> None:
    low, high = load_config(["base"]).synth.objects_per_room
    counts = [sum(o.label not in SHELL | WALL_ITEMS for o in scene.objects) for scene in scenes]
    assert all(low <= count <= high for count in counts), counts
    assert len(set(counts)) > 2
    assert all(sum(o.label == "wall" for o in s.objects) == 4 and s.objects[0].label == "floor" for s in scenes)


def test_camera_walk_stays_in_the_room_clear_of_furniture_looking_in_and_down(scenes: list[SyntheticScene]) -> None:
    config = load_config(["base"]).synth
    for scene in scenes:
        poses = scene.camera.poses(config.frames_per_scene)
        positions, forward = poses[:, :3, 3], poses[:, :3, 2]
        half = np.array(scene.room.size) / 2.0
        assert (np.abs(positions[:, :2]) < half - 0.8).all()
        low, high = config.camera_height_m
        assert (positions[:, 2] >= low).all() and (positions[:, 2] <= high).all()
        # Consecutive frames are close: a walk, not jumps (at most ~1 m apart for a 60-frame loop).
        assert np.linalg.norm(np.diff(positions, axis=0), axis=1).max() < 1.0
        for item in scene.objects:
            if item.label in SHELL | WALL_ITEMS:
                continue
            for box in item.boxes:
                assert _rectangle_distance(positions[:, :2], _footprint(box)).min() > 0.4, (scene.name, item.label)
        pitch_down = -forward[:, 2]
        assert (pitch_down > math.sin(math.radians(3))).all() and (pitch_down < math.sin(math.radians(30))).all()
        assert ((forward[:, :2] * -positions[:, :2]).sum(axis=1) > 0).all()  # towards the room centre


def _rectangle_distance(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Distance (N,) from `points (N, 2)` to the rectangle with `corners (4, 2)` in order around it."""
    origin, u, v = corners[0], corners[1] - corners[0], corners[3] - corners[0]
    lengths = np.array([np.linalg.norm(u), np.linalg.norm(v)])
    local = np.stack([(points - origin) @ u, (points - origin) @ v], axis=1) / lengths
    return np.linalg.norm(np.maximum(np.maximum(-local, local - lengths), 0.0), axis=1)


def test_labels_are_scannet200_categories(scenes: list[SyntheticScene]) -> None:
    table = label_table()
    labels = {o.label for scene in scenes for o in scene.objects}
    assert {"table", "chair", "cabinet", "bookshelf", "desk", "door", "window"} <= labels
    assert all(table.scannet200_id(label) != 0 for label in labels)


@pytest.mark.parametrize("pair", PAIRS)
def test_appearance_pairs_share_one_geometry_distribution(scenes: list[SyntheticScene], pair: tuple[str, str]) -> None:
    sizes: dict[str, list[tuple[float, ...]]] = {label: [] for label in pair}
    textures: dict[str, set[type]] = {label: set() for label in pair}
    spacing: set[float] = set()
    for scene in scenes:
        for item in scene.objects:
            if item.label in pair:
                (box,) = item.boxes
                sizes[item.label].append(box.size)
                textures[item.label].add(type(box.texture))
                spacing.add(item.vertex_spacing_m)
    for label in pair:
        assert sum(label in {o.label for o in s.objects} for s in scenes) >= len(scenes) / 3, label
        assert len(sizes[label]) >= 8, label
    first, second = (np.array(sizes[label]) for label in pair)
    # Same distribution: means agree within 4 standard errors, ranges overlap, one mesh density.
    standard_error = np.sqrt(first.var(axis=0) / len(first) + second.var(axis=0) / len(second))
    assert (np.abs(first.mean(axis=0) - second.mean(axis=0)) < 4 * standard_error).all()
    assert (np.maximum(first.min(axis=0), second.min(axis=0)) < np.minimum(first.max(axis=0), second.max(axis=0))).all()
    assert len(spacing) == 1
    # ... and a different look.
    assert textures[pair[0]].isdisjoint(textures[pair[1]])


@pytest.mark.parametrize("pair", PAIRS)
def test_appearance_pair_members_differ_only_in_texture(pair: tuple[str, str]) -> None:
    build = furniture.board if pair[0] == "picture" else furniture.floor_pair_item
    first, second = (build(label, np.random.default_rng(7)) for label in pair)
    assert [(b.center, b.size, b.yaw) for b in first.boxes] == [(b.center, b.size, b.yaw) for b in second.boxes]
    settings = [(model.placement, model.vertex_spacing_m, model.keep_clear_m) for model in (first, second)]
    assert settings[0] == settings[1]
    points = np.random.default_rng(0).uniform(0.0, 0.2, (500, 3))
    faces = np.ones(500, dtype=np.int64)  # the front of a board, the sides of a cuboid
    colors = [model.boxes[0].texture.colors(points, faces) for model in (first, second)]
    assert np.abs(colors[0] - colors[1]).mean() > 20
