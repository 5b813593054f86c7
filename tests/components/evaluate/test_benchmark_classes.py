"""Label-space conventions: ESAM's ScanNet200 order, void handling, nyu40 mapping, head/common/tail."""

from __future__ import annotations

import numpy as np
import pytest

from bifusion.components.evaluate.benchmark_classes import (
    VOID,
    class_agnostic_instance_benchmark,
    instance_benchmark,
    raw_to_nyu40_table,
    scannet20_instance_benchmark,
    scannet20_semantic_space,
    scannet200_index_to_raw,
    scannet200_instance_benchmark,
    scannet200_raw_to_index,
    scannet200_semantic_space,
)
from bifusion.components.labels import label_table


def test_scannet200_esam_order_swaps_chair_and_floor():
    space = scannet200_semantic_space()
    assert space.class_ids[:4] == (1, 3, 2, 4)
    assert space.class_names[:4] == ("wall", "floor", "chair", "table")
    assert space.class_ids[3:] == label_table().scannet200_ids[3:]
    np.testing.assert_array_equal(scannet200_raw_to_index(np.array([1, 3, 2, 4, 0, 12, 1191])), [0, 1, 2, 3, 200, 200, 199])
    indices = np.arange(201)
    np.testing.assert_array_equal(scannet200_raw_to_index(scannet200_index_to_raw(indices)), indices)
    assert scannet200_index_to_raw(np.array([200]))[0] == 0


def test_scannet200_instance_classes_are_the_198_things():
    benchmark = scannet200_instance_benchmark()
    assert benchmark.num_classes == 198 and not benchmark.class_agnostic
    assert benchmark.class_ids == scannet200_semantic_space().class_ids[2:]  # ESAM's inst_mapping = sem_mapping[2:]
    np.testing.assert_array_equal(benchmark.gt_class_index(np.array([1, 3, 0, 12, 2, 4])), [VOID, VOID, VOID, VOID, 0, 1])
    assert [benchmark.class_splits.count(s) for s in ("head", "common", "tail")] == [64, 68, 66]
    np.testing.assert_array_equal(benchmark.class_id_of_index(np.array([0, 1, 197])), [2, 4, 1191])
    np.testing.assert_array_equal(benchmark.index_of_class_id(np.array([2, 1, 3, 99999])), [0, VOID, VOID, VOID])


def test_semantic_splits_follow_scannet200():
    splits = scannet200_semantic_space().class_splits
    assert [splits.count(s) for s in ("head", "common", "tail")] == [66, 68, 66]


def test_scannet20_goes_through_nyu40():
    nyu40 = raw_to_nyu40_table()
    # Ambiguous raw ids resolved by the canonical tsv row: pipe -> 40, shower door -> 8, cabinet door -> 8.
    np.testing.assert_array_equal(nyu40[[1, 2, 3, 107, 188, 385]], [1, 5, 2, 40, 8, 8])
    instance = scannet20_instance_benchmark()
    assert instance.num_classes == 18 and instance.class_ids[:3] == (3, 4, 5)
    # wall, floor: void; chair (raw 2) and office chair (raw 10) are nyu40 chair; pipe (nyu40 40) void.
    np.testing.assert_array_equal(
        instance.gt_class_index(np.array([1, 3, 2, 10, 107, 0])), [VOID, VOID, 2, 2, VOID, VOID]
    )
    semantic = scannet20_semantic_space()
    np.testing.assert_array_equal(semantic.index_of_raw(np.array([1, 3, 2, 107, 0])), [0, 1, 4, 20, 20])
    assert semantic.class_splits is None and semantic.ignore_index == 20


def test_class_agnostic_has_one_object_class_over_things():
    benchmark = class_agnostic_instance_benchmark()
    assert benchmark.class_agnostic and benchmark.class_names == ("object",) and benchmark.class_ids == (1,)
    np.testing.assert_array_equal(benchmark.gt_class_index(np.array([1, 3, 0, 12, 2, 1191])), [VOID, VOID, VOID, VOID, 0, 0])
    np.testing.assert_array_equal(benchmark.pred_class_index(None, 3), [0, 0, 0])


def test_lookup_errors_name_the_problem():
    with pytest.raises(ValueError, match="raw ScanNet ids"):
        scannet200_raw_to_index(np.array([5000]))
    with pytest.raises(TypeError, match="integers"):
        scannet200_raw_to_index(np.array([1.0]))
    with pytest.raises(ValueError, match="unknown instance benchmark"):
        instance_benchmark("scannet")
    assert instance_benchmark("scannet200_class_agnostic") is class_agnostic_instance_benchmark()
