"""Benchmark files: exact format, and export -> read back -> the same AP as the arrays."""

from __future__ import annotations

import numpy as np
import pytest

from bifusion.components.evaluate.benchmark_classes import (
    class_agnostic_instance_benchmark,
    raw_to_nyu40_table,
    scannet20_instance_benchmark,
    scannet200_instance_benchmark,
)
from bifusion.components.evaluate.benchmark_export import (
    encode_ground_truth,
    read_ground_truth,
    read_instance_predictions,
    write_ground_truth,
    write_instance_predictions,
)
from bifusion.components.evaluate.instance_ap import InstanceEvaluator


def test_prediction_and_ground_truth_files_have_the_official_layout(tmp_path):
    masks = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=bool)
    scene_file = write_instance_predictions(tmp_path / "pred", "scene0011_00", masks, np.array([0.9, 0.25]), np.array([2, 4]))
    assert scene_file.read_text() == (
        "predicted_masks/scene0011_00_0.txt 2 0.9\n"
        "predicted_masks/scene0011_00_1.txt 4 0.25\n"
    )
    assert (tmp_path / "pred/predicted_masks/scene0011_00_1.txt").read_text() == "0\n0\n1\n1\n1\n"
    # instance 7 is a chair (raw 2), instance 3 a wall (void in ScanNet200 instance), the rest unannotated.
    gt_file = write_ground_truth(
        tmp_path / "gt", "scene0011_00", np.array([7, 7, 3, 0, 0]), np.array([2, 2, 1, 0, 0]), scannet200_instance_benchmark()
    )
    assert gt_file.read_text() == "2007\n2007\n0\n0\n0\n"
    assert sorted(p.name for p in (tmp_path / "pred").rglob("*")) == [
        "predicted_masks", "scene0011_00.txt", "scene0011_00_0.txt", "scene0011_00_1.txt"
    ]  # fmt: skip


def test_ground_truth_encoding_uses_benchmark_label_ids():
    instance, raw = np.array([1, 2, 3, 4]), np.array([2, 10, 1, 2])  # chair, office chair, wall, chair
    np.testing.assert_array_equal(encode_ground_truth(instance, raw, scannet200_instance_benchmark()), [2001, 10002, 0, 2004])
    np.testing.assert_array_equal(encode_ground_truth(instance, raw, scannet20_instance_benchmark()), [5001, 5002, 0, 5004])
    np.testing.assert_array_equal(encode_ground_truth(instance, raw, class_agnostic_instance_benchmark()), [1001, 1002, 0, 1004])
    with pytest.raises(ValueError, match="1, 999"):
        encode_ground_truth(np.array([1000]), np.array([2]), scannet200_instance_benchmark())


def _random_scene(rng, num_points):
    instance = np.repeat(np.arange(1, 9), num_points // 8)
    raw = rng.choice([1, 2, 3, 4, 5, 10, 0], size=8).repeat(num_points // 8)
    masks = np.zeros((10, num_points), dtype=bool)
    for k in range(10):
        start = int(rng.integers(0, num_points - 300))
        masks[k, start : start + int(rng.integers(60, 300))] = True
    scores = rng.random(10).astype(np.float32)  # float32 scores survive the text file exactly
    labels = rng.choice([2, 4, 5, 10, 1], size=10)
    return instance, raw, masks, scores, labels


BENCHMARKS = [scannet200_instance_benchmark(), scannet20_instance_benchmark(), class_agnostic_instance_benchmark()]


@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda b: b.name)
def test_export_round_trip_gives_the_same_ap(tmp_path, benchmark):
    rng = np.random.default_rng(3)
    direct, from_files = InstanceEvaluator(benchmark), InstanceEvaluator(benchmark)
    for number in range(4):
        scene = f"scene{number:04d}_00"
        instance, raw, masks, scores, raw_labels = _random_scene(rng, 1600)
        # Benchmark label ids: ScanNet200 raw ids, nyu40 ids, anything for class-agnostic.
        labels = {"scannet200": raw_labels, "scannet20": raw_to_nyu40_table()[raw_labels]}.get(benchmark.name, raw_labels)
        direct.add_scene(scene, instance, raw, masks, scores, labels)
        write_instance_predictions(tmp_path / "pred", scene, masks, scores, labels)
        write_ground_truth(tmp_path / "gt", scene, instance, raw, benchmark)

        gt = read_ground_truth(tmp_path / "gt", scene)
        predictions = read_instance_predictions(tmp_path / "pred", scene, num_points=len(gt))
        np.testing.assert_array_equal(predictions.masks, masks)
        np.testing.assert_array_equal(predictions.scores, scores)
        np.testing.assert_array_equal(predictions.label_ids, labels)
        from_files.add_scene_encoded(scene, gt, predictions.masks, predictions.scores, predictions.label_ids)
    expected, actual = direct.compute(), from_files.compute()
    np.testing.assert_array_equal(actual.ap_per_overlap, expected.ap_per_overlap)
    assert not np.isnan(expected.mean_ap) and expected.mean_ap > 0
    assert not list((tmp_path).rglob("*.tmp"))


def test_rewriting_a_scene_replaces_its_files(tmp_path):
    masks = np.ones((1, 4), dtype=bool)
    write_instance_predictions(tmp_path, "scene0000_00", masks, np.array([0.5]), np.array([2]))
    write_instance_predictions(tmp_path, "scene0000_00", ~masks, np.array([0.7]), np.array([4]))
    read = read_instance_predictions(tmp_path, "scene0000_00", num_points=4)
    assert not read.masks.any() and read.scores.tolist() == [0.7] and read.label_ids.tolist() == [4]


def test_reader_checks_paths_and_lengths(tmp_path):
    write_instance_predictions(tmp_path, "scene0000_00", np.ones((1, 4), dtype=bool), np.array([0.5]), np.array([2]))
    with pytest.raises(ValueError, match="expected 5"):
        read_instance_predictions(tmp_path, "scene0000_00", num_points=5)
    (tmp_path / "scene0001_00.txt").write_text("../outside.txt 2 0.5\n")
    with pytest.raises(ValueError, match="inside"):
        read_instance_predictions(tmp_path, "scene0001_00", num_points=4)
    (tmp_path / "scene0002_00.txt").write_text("predicted_masks/scene0000_00_0.txt 2\n")
    with pytest.raises(ValueError, match="expected `<relative mask path>"):
        read_instance_predictions(tmp_path, "scene0002_00", num_points=4)
    assert read_instance_predictions(tmp_path, "scene0000_00", num_points=4).masks.shape == (1, 4)
    with pytest.raises(ValueError, match="scene name"):
        write_instance_predictions(tmp_path, "scene 0", np.ones((1, 4), dtype=bool), np.array([0.5]), np.array([2]))
