"""MinkowskiEngine 0.5.x adapter: the same three convolutions as `torch_backend`, run by ME (parity checks).

Importing this module imports MinkowskiEngine (ImportError when it is missing; it is not a project
dependency). ME already uses the canonical kernel layout `(K, Cin, Cout)`, so kernels pass through
unchanged. One `ME.CoordinateManager` per cache holds the coordinate maps: the stride-1 level is
inserted from our coordinates, coarser levels are created by ME's strided convs (their row order becomes
ours), and the transposed conv writes onto the finer level's existing map (non-generative, as in ESAM).
ME orders the inserted stride-1 rows its own way, so features cross that level through ME's
unique/inverse maps.

Open issue (ME 0.5.4 CPU build, torch 2.13, 2026-11-21): single layers always match the pure-PyTorch
backend in outputs and both gradients, and the whole Res16UNet34C always matches in outputs, but in about
1 of 20 fresh processes its gradients through this adapter were wrong from block8's input gradient
upwards; ESAM's own ME model on the same scene and weights never was (0 of 70). Cause not found; treat
network-level gradient parity through this adapter as unverified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import MinkowskiEngine as ME
import torch
from MinkowskiEngineBackend._C import ConvolutionMode, CoordinateMapKey

from bifusion.model.sparse.backend import SparseBackend
from bifusion.model.sparse.tensor import SparseTensor


def submanifold_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """Stride-1 conv with an odd kernel on x's coordinates. kernel (k^3, Cin, Cout), ME layout."""
    kernel_size = round(kernel.shape[0] ** (1 / 3))
    if kernel_size**3 != kernel.shape[0] or kernel_size % 2 == 0:
        raise ValueError(f"submanifold kernel must be (k^3, Cin, Cout) with odd k, got {tuple(kernel.shape)}")
    context = _context(x)
    level = context.levels[x.tensor_stride]
    features = ME.MinkowskiConvolutionFunction.apply(
        level.to_minkowski(x.features),
        kernel.to(x.features.dtype),
        ME.KernelGenerator(kernel_size=kernel_size, stride=1, dilation=1, dimension=3),
        ConvolutionMode.DEFAULT,
        level.key,
        level.key,
        context.manager,
    )
    return x.replace_features(level.from_minkowski(features))


def downsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 conv from stride s to 2s. kernel (8, Cin, Cout), ME layout."""
    context = _context(x)
    level = context.levels[x.tensor_stride]
    coarse_key = CoordinateMapKey(4)  # empty key: ME creates (or finds) the stride-2s map and sets it
    features = ME.MinkowskiConvolutionFunction.apply(
        level.to_minkowski(x.features),
        kernel.to(x.features.dtype),
        ME.KernelGenerator(kernel_size=2, stride=2, dilation=1, dimension=3),
        ConvolutionMode.DEFAULT,
        level.key,
        coarse_key,
        context.manager,
    )
    coarse_stride = 2 * x.tensor_stride
    if coarse_stride in context.levels:
        coordinates = x.cache.coordinates_at(coarse_stride)
    elif x.cache.coordinates_at(coarse_stride) is not None:
        raise ValueError(f"stride {coarse_stride} exists in this cache but was not made by MinkowskiEngine")
    else:
        context.levels[coarse_stride] = _Level(coarse_key)
        coordinates = context.manager.get_coordinates(coarse_key).to(torch.int32)
    return SparseTensor(coordinates, context.levels[coarse_stride].from_minkowski(features), coarse_stride, x.cache)


def upsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 transposed conv from stride s onto the existing stride-s/2 level (non-generative)."""
    context = _context(x)
    fine_stride = x.tensor_stride // 2
    if fine_stride not in context.levels:
        raise ValueError(f"upsample_conv from stride {x.tensor_stride}: no stride-{fine_stride} level in this cache")
    level, fine = context.levels[x.tensor_stride], context.levels[fine_stride]
    features = ME.MinkowskiConvolutionTransposeFunction.apply(
        level.to_minkowski(x.features),
        kernel.to(x.features.dtype),
        ME.KernelGenerator(kernel_size=2, stride=2, dilation=1, dimension=3),
        ConvolutionMode.DEFAULT,
        level.key,
        fine.key,
        context.manager,
    )
    return SparseTensor(x.cache.coordinates_at(fine_stride), fine.from_minkowski(features), fine_stride, x.cache)


@dataclass
class _Level:
    """One coordinate map; `ours_to_minkowski (N,)`: our row of ME's row r (None when the orders agree)."""

    key: CoordinateMapKey
    ours_to_minkowski: torch.Tensor | None = None
    minkowski_to_ours: torch.Tensor | None = None

    def to_minkowski(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.ours_to_minkowski is None else features.index_select(0, self.ours_to_minkowski)

    def from_minkowski(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.minkowski_to_ours is None else features.index_select(0, self.minkowski_to_ours)


@dataclass
class _MinkowskiContext:
    manager: ME.CoordinateManager
    levels: dict[int, _Level] = field(default_factory=dict)


def _context(x: SparseTensor) -> _MinkowskiContext:
    x.cache.claim(SparseBackend.MINKOWSKI)
    return x.cache.backend_context(lambda: _make_context(x))


def _make_context(x: SparseTensor) -> _MinkowskiContext:
    coordinates = x.cache.coordinates_at(1)
    if coordinates is None:
        raise ValueError("the MinkowskiEngine backend starts from the stride-1 level; this cache has none")
    map_type = ME.CoordinateMapType.GPU if coordinates.is_cuda else ME.CoordinateMapType.CPU
    # ME sets the OpenMP thread count of the process (shared with torch) to its num_threads, by default
    # min(cpu_count, 20); passing torch's current count leaves torch's setting as it was.
    manager = ME.CoordinateManager(D=3, num_threads=torch.get_num_threads(), coordinate_map_type=map_type)
    key, (unique_rows, inverse_rows) = manager.insert_and_map(coordinates, [1, 1, 1], "")
    if unique_rows.shape[0] != coordinates.shape[0]:
        raise ValueError("the stride-1 coordinates contain duplicates; build them with voxelize")
    level = _Level(key)
    identity = torch.arange(coordinates.shape[0], device=coordinates.device)
    if not torch.equal(unique_rows.long(), identity):
        level = _Level(key, unique_rows.long(), inverse_rows.long())
    return _MinkowskiContext(manager=manager, levels={1: level})
