"""Points -> voxels (average quantisation) and voxel features -> points.

ESAM feeds the backbone through MinkowskiEngine's `TensorField(...).sparse()` (default quantisation: the
unweighted average of the points in a voxel) and maps the backbone output back to every point with
`.slice(field)`; `voxelize` and `slice_to_points` are those two steps.
"""

from __future__ import annotations

import torch

from bifusion.model.sparse.coordinates import GridBox, unique_keys
from bifusion.model.sparse.tensor import SparseTensor


def voxelize(
    points_xyz: torch.Tensor,
    batch_index: torch.Tensor,
    features: torch.Tensor,
    voxel_size: float,
) -> tuple[SparseTensor, torch.Tensor]:
    """Quantise points to voxels of edge `voxel_size`, averaging the features of the points in a voxel.

    points_xyz (N, 3) float, any metric frame (voxel (i, j, k) covers [i, i+1) * voxel_size along each axis,
    so negative coordinates are fine); batch_index (N,) int >= 0; features (N, C) float.
    Returns the stride-1 `SparseTensor` (voxels ordered by (batch, x, y, z)) and `point_to_voxel (N,)` int64,
    the row of each point's voxel, for `slice_to_points`. Gradients flow from voxel to point features.
    """
    if points_xyz.dim() != 2 or points_xyz.shape[1] != 3:
        raise ValueError(f"points_xyz must be (N, 3), got {tuple(points_xyz.shape)}")
    num_points = points_xyz.shape[0]
    if batch_index.shape != (num_points,) or features.dim() != 2 or features.shape[0] != num_points:
        raise ValueError(
            f"batch_index must be ({num_points},) and features ({num_points}, C), "
            f"got {tuple(batch_index.shape)} and {tuple(features.shape)}"
        )
    if num_points and int(batch_index.min()) < 0:
        raise ValueError("batch_index must be >= 0")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    grid = torch.floor(points_xyz / voxel_size).long()
    batch = batch_index.long()
    box = GridBox(batch, grid)
    distinct, point_to_voxel = unique_keys(box.keys(batch, grid), box)
    voxel_batch, voxel_grid = box.decode(distinct)
    coordinates = torch.cat([voxel_batch[:, None], voxel_grid], dim=1)
    num_voxels = coordinates.shape[0]
    sums = features.new_zeros(num_voxels, features.shape[1]).index_add(0, point_to_voxel, features)
    counts = torch.bincount(point_to_voxel, minlength=num_voxels).to(features.dtype)
    voxel_features = sums / counts[:, None]
    return SparseTensor(coordinates.to(torch.int32), voxel_features, tensor_stride=1), point_to_voxel


def slice_to_points(voxels: SparseTensor, point_to_voxel: torch.Tensor) -> torch.Tensor:
    """Features `(N_points, C)` of each point's voxel: `voxels` must be on the stride-1 coordinates that
    `voxelize` produced `point_to_voxel (N_points,)` for (any tensor of that cache at stride 1 is)."""
    if voxels.tensor_stride != 1:
        raise ValueError(f"slice_to_points needs the stride-1 level, got tensor stride {voxels.tensor_stride}")
    # int32 rows: the backward's index_add_ is an order of magnitude faster with them than with int64 on CPU
    return voxels.features.index_select(0, point_to_voxel.to(torch.int32))
