"""SparseTensor, its cache, voxelisation and coordinate lookup."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.sparse import (
    KernelMapCache,
    SparseBackend,
    SparseTensor,
    as_backend,
    cat_features,
    features_at_coordinates,
    lookup_rows,
    slice_to_points,
    voxelize,
)
from bifusion.model.sparse import coordinates as coordinates_module
from bifusion.model.sparse.backend import backend_module
from bifusion.model.sparse.torch_backend import downsample_conv


def test_voxelize_averages_features_per_voxel_and_slices_back():
    points = torch.tensor(
        [[0.001, 0.001, 0.001], [0.019, 0.010, 0.005], [-0.001, 0.0, 0.0], [0.05, 0.05, 0.05], [0.001, 0.001, 0.001]]
    )
    batch = torch.tensor([0, 0, 0, 0, 1])
    features = torch.tensor([[1.0], [3.0], [10.0], [7.0], [5.0]])
    voxels, point_to_voxel = voxelize(points, batch, features, voxel_size=0.02)

    expected = {(0, 0, 0, 0): 2.0, (0, -1, 0, 0): 10.0, (0, 2, 2, 2): 7.0, (1, 0, 0, 0): 5.0}
    got = {tuple(c.tolist()): f.item() for c, f in zip(voxels.coordinates, voxels.features, strict=True)}
    assert got == expected
    assert voxels.coordinates.dtype == torch.int32 and voxels.tensor_stride == 1
    sliced = slice_to_points(voxels, point_to_voxel)
    assert sliced[:, 0].tolist() == [2.0, 2.0, 10.0, 7.0, 5.0]


def test_voxelize_passes_gradients_to_point_features():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.5, 0.0, 0.0]])
    features = torch.ones(3, 2, requires_grad=True)
    voxels, _ = voxelize(points, torch.zeros(3, dtype=torch.long), features, 0.02)
    voxels.features.sum().backward()
    assert features.grad[:, 0].tolist() == [0.5, 0.5, 1.0]


def test_slice_to_points_refuses_coarse_levels():
    voxels, point_to_voxel = voxelize(torch.rand(50, 3), torch.zeros(50, dtype=torch.long), torch.rand(50, 4), 0.1)
    coarse = downsample_conv(voxels, torch.rand(8, 4, 4))
    with pytest.raises(ValueError, match="stride-1"):
        slice_to_points(coarse, point_to_voxel)


def test_cache_holds_one_coordinate_set_per_stride():
    coordinates = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(coordinates, torch.rand(2, 3))
    assert x.replace_features(torch.rand(2, 5)).cache is x.cache
    with pytest.raises(ValueError, match="already has a coordinate set"):
        SparseTensor(coordinates.clone(), torch.rand(2, 3), cache=x.cache)
    with pytest.raises(ValueError, match="int32"):
        SparseTensor(coordinates.long(), torch.rand(2, 3))
    with pytest.raises(ValueError, match="rows"):
        SparseTensor(coordinates, torch.rand(3, 3))


def test_cache_is_claimed_by_one_backend():
    cache = KernelMapCache()
    cache.claim(SparseBackend.TORCH)
    cache.claim(SparseBackend.TORCH)
    with pytest.raises(ValueError, match="backend"):
        cache.claim(SparseBackend.SPCONV)


def test_cat_features_needs_the_same_coordinate_set():
    coordinates = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 0]], dtype=torch.int32)
    x = SparseTensor(coordinates, torch.tensor([[1.0], [2.0]]))
    joined = cat_features(x, x.replace_features(torch.tensor([[3.0], [4.0]])))
    assert joined.features.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    other = SparseTensor(coordinates.clone(), torch.rand(2, 1))
    with pytest.raises(ValueError, match="same coordinate set"):
        cat_features(x, other)


@pytest.mark.parametrize("dense_table", [True, False])
def test_lookup_matches_rows_through_coordinates(monkeypatch, dense_table):
    if not dense_table:  # force the binary-search path
        monkeypatch.setattr(coordinates_module, "DENSE_TABLE_MAX_CELLS", 0)
    generator = torch.Generator().manual_seed(0)
    grid = torch.unique(torch.randint(-6, 6, (200, 4), generator=generator), dim=0)
    grid[:, 0] = grid[:, 0].abs() % 2
    grid = torch.unique(grid, dim=0)
    coordinates = torch.cat([grid[:, :1], grid[:, 1:] * 4], dim=1).to(torch.int32)  # a stride-4 level
    x = SparseTensor(coordinates, torch.arange(len(coordinates), dtype=torch.float32)[:, None], tensor_stride=4)
    shuffled = coordinates[torch.randperm(len(coordinates), generator=generator)]
    rows = lookup_rows(x, shuffled)
    assert torch.equal(coordinates[rows], shuffled)
    # a full-resolution query inside a stride-4 voxel finds it; absent voxels give -1
    inside = shuffled[:3] + torch.tensor([0, 3, 1, 2], dtype=torch.int32)
    assert torch.equal(lookup_rows(x, inside), rows[:3])
    absent = torch.tensor([[0, 1000, 0, 0], [5, 0, 0, 0], [0, -1000, 4, 4]], dtype=torch.int32)
    assert lookup_rows(x, absent).tolist() == [-1, -1, -1]
    moved = features_at_coordinates(x, torch.cat([shuffled[:2], absent[:1]]))
    assert moved[:, 0].tolist() == [float(rows[0]), float(rows[1]), 0.0]


def test_backend_selection_is_explicit():
    assert as_backend("torch") is SparseBackend.TORCH
    with pytest.raises(ValueError, match="unknown sparse backend 'torh'"):
        as_backend("torh")
    try:
        import MinkowskiEngine  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="MinkowskiEngine"):
            backend_module(SparseBackend.MINKOWSKI)
