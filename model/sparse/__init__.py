"""Sparse voxel tensors and sparse 3D convolutions behind one interface, with interchangeable backends.

See `shared/reference/sparse_backend.md` for the decision: weights in MinkowskiEngine's layout, a
pure-PyTorch default backend, spconv as an optional fast backend, MinkowskiEngine for parity checks.

Modules: `tensor` (SparseTensor, KernelMapCache, cat_features), `voxelize` (points <-> voxels),
`coordinates` (coordinate-based row lookup), `layers` (nn.Modules with ME parameter names), `backend`
(SparseBackend and selection), `kernel_maps` + `torch_backend` (pure PyTorch), `spconv_backend` +
`spconv_cpu_fixes` (spconv), `minkowski_backend` (MinkowskiEngine).
"""

from bifusion.model.sparse.backend import SparseBackend, as_backend, available_backends, is_available
from bifusion.model.sparse.coordinates import features_at_coordinates, lookup_rows
from bifusion.model.sparse.layers import (
    DownsampleConv3d,
    PointwiseConv3d,
    SparseBatchNorm,
    SparseReLU,
    SubmanifoldConv3d,
    UpsampleConv3d,
)
from bifusion.model.sparse.tensor import KernelMapCache, SparseTensor, cat_features
from bifusion.model.sparse.voxelize import slice_to_points, voxelize

__all__ = [
    "DownsampleConv3d",
    "KernelMapCache",
    "PointwiseConv3d",
    "SparseBackend",
    "SparseBatchNorm",
    "SparseReLU",
    "SparseTensor",
    "SubmanifoldConv3d",
    "UpsampleConv3d",
    "as_backend",
    "available_backends",
    "cat_features",
    "features_at_coordinates",
    "is_available",
    "lookup_rows",
    "slice_to_points",
    "voxelize",
]
