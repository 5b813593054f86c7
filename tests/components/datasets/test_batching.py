"""Training targets from per-point labels: things only, contiguous ids, ScanNet200 classes or one class."""

from __future__ import annotations

import numpy as np

from bifusion.components.datasets.augment import apply_transform, elastic_distortion, normalize_colors, random_rigid_transform
from bifusion.components.datasets.batching import instance_targets
from bifusion.components.config_schema import load_config

WALL, FLOOR, CHAIR, TABLE, PICTURE = 1, 3, 2, 4, 15  # raw ScanNet ids


def test_instance_targets_keep_things_and_map_classes() -> None:
    from bifusion.components.evaluate.benchmark_classes import scannet200_raw_to_index

    instance = np.array([1, 1, 2, 2, 7, 7, 9, 0])
    semantic_raw = np.array([WALL, WALL, CHAIR, CHAIR, PICTURE, PICTURE, TABLE, 0])
    ids, labels = instance_targets(instance, scannet200_raw_to_index(semantic_raw), class_agnostic=False)
    assert ids.tolist() == [-1, -1, 0, 0, 1, 1, 2, -1]  # the wall is stuff, unlabeled is nothing
    chair, picture, table = (scannet200_raw_to_index(np.array([r]))[0] - 2 for r in (CHAIR, PICTURE, TABLE))
    assert labels.tolist() == [chair, picture, table]
    assert chair == 0  # ESAM order: wall, floor, chair, ...
    _, agnostic = instance_targets(instance, scannet200_raw_to_index(semantic_raw), class_agnostic=True)
    assert agnostic.tolist() == [0, 0, 0]


def test_rigid_augmentation_is_a_similarity_and_invertible() -> None:
    config = load_config(["base"]).train.augment
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3))
    matrix = random_rigid_transform(config, rng)
    moved = apply_transform(matrix, points)
    scale = np.linalg.norm(moved[1] - moved[0]) / np.linalg.norm(points[1] - points[0])
    assert 0.8 <= scale <= 1.2
    np.testing.assert_allclose(np.linalg.norm(moved[:, None] - moved[None], axis=-1), scale * np.linalg.norm(points[:, None] - points[None], axis=-1), atol=1e-9)
    np.testing.assert_allclose(apply_transform(np.linalg.inv(matrix), moved), points, atol=1e-9)


def test_elastic_distortion_is_smooth_and_bounded() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 2, size=(2000, 3))
    moved = elastic_distortion(points, 6, 40, 0.02, rng)
    shift = np.linalg.norm(moved - points, axis=1)
    assert 0 < shift.mean() < 0.5
    near = np.linalg.norm(points[:, None] - points[None, :5], axis=-1) < 0.02
    for column in range(5):  # points within 2 cm move almost alike
        group = np.nonzero(near[:, column])[0]
        assert np.ptp(moved[group] - points[group], axis=0).max() < 0.05


def test_colour_normalisation_uses_esam_statistics() -> None:
    out = normalize_colors(np.array([[0.4779 * 255, 0.4303 * 255, 0.3750 * 255]]))
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
