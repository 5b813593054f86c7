"""spconv 2.x adapter: the same three convolutions as `torch_backend`, run by spconv.

Importing this module imports spconv (ImportError when it is missing; `backend.backend_module` turns that
into an install hint). Kernels stay in MinkowskiEngine's layout `(K, Cin, Cout)` as parameters and in
state_dicts; each call converts them to spconv's `(Cout, kx, ky, kz, Cin)` with a differentiable permute
(`me_kernel_to_spconv`), so one set of parameters and optimizer state serves every backend.

Coordinates: spconv wants non-negative indices inside `spatial_shape`, and its coarse grid is
`index // 2`. Each batch item is shifted by a corner that is a multiple of `MAX_TENSOR_STRIDE` (so
`floor` commutes with the shift at every level), indices at tensor stride s are `(xyz - shift) / s`, and
the level-0 spatial shape is a multiple of `MAX_TENSOR_STRIDE` (so every level halves exactly). spconv's
rulebooks live in the cache, keyed per level, so each level builds its maps once; a down conv's rulebook
is reused transposed by the up conv, which puts its output on the finer level's rows (spconv's
`SparseInverseConv3d`, equivalent to ME's non-generative transposed conv).

On CPU the two spconv bugs documented in `spconv_cpu_fixes` are patched on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from spconv.core import ConvAlgo
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import SparseConvTensor
from spconv.pytorch.conv import SparseConvolutionBase

from bifusion.model.sparse import spconv_cpu_fixes
from bifusion.model.sparse.backend import SparseBackend
from bifusion.model.sparse.coordinates import split_grid
from bifusion.model.sparse.tensor import KernelMapCache, SparseTensor

# Coarsest tensor stride supported; the per-batch shift and the spatial shape are multiples of it.
MAX_TENSOR_STRIDE = 64


def me_kernel_to_spconv(kernel: torch.Tensor) -> torch.Tensor:
    """ME kernel `(k^3, Cin, Cout)`, offset index iz*k*k + iy*k + ix -> spconv `(Cout, kx, ky, kz, Cin)` for
    indices `(b, x, y, z)`."""
    volume, in_channels, out_channels = kernel.shape
    k = round(volume ** (1 / 3))
    return kernel.reshape(k, k, k, in_channels, out_channels).permute(4, 2, 1, 0, 3).contiguous()


def spconv_kernel_to_me(weight: torch.Tensor) -> torch.Tensor:
    """spconv `(Cout, kx, ky, kz, Cin)` -> ME `(k^3, Cin, Cout)` (inverse of `me_kernel_to_spconv`)."""
    out_channels, k = weight.shape[0], weight.shape[1]
    return weight.permute(3, 2, 1, 4, 0).reshape(k**3, weight.shape[4], out_channels).contiguous()


def submanifold_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """Stride-1 conv with an odd kernel on x's coordinates. kernel (k^3, Cin, Cout), ME layout."""
    kernel_size = round(kernel.shape[0] ** (1 / 3))
    if kernel_size**3 != kernel.shape[0] or kernel_size % 2 == 0:
        raise ValueError(f"submanifold kernel must be (k^3, Cin, Cout) with odd k, got {tuple(kernel.shape)}")
    indice_key = f"subm{kernel_size}_s{x.tensor_stride}"
    out = _run(_context(x), x, kernel, kernel_size, subm=True, inverse=False, indice_key=indice_key)
    return x.replace_features(out.features)


def downsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 conv from stride s to 2s. kernel (8, Cin, Cout), ME layout."""
    coarse_stride = 2 * x.tensor_stride
    if coarse_stride > MAX_TENSOR_STRIDE:
        raise ValueError(f"spconv backend supports tensor strides up to {MAX_TENSOR_STRIDE}, got {coarse_stride}")
    context = _context(x)
    indice_key = f"down_s{x.tensor_stride}"
    if indice_key in context.indice_dict or x.cache.coordinates_at(coarse_stride) is not None:
        # spconv reuses rulebooks of submanifold convs only; a second strided conv would build new rows
        raise ValueError(
            f"spconv backend: stride {coarse_stride} already exists in this cache; it supports one "
            "downsample_conv per level and cache"
        )
    out = _run(context, x, kernel, 2, subm=False, inverse=False, indice_key=indice_key)
    context.indices[coarse_stride] = out.indices
    coordinates = _indices_to_coordinates(out.indices, coarse_stride, context.shift)
    return SparseTensor(coordinates, out.features, coarse_stride, x.cache)


def upsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 transposed conv from stride s onto the stride-s/2 level that `downsample_conv` came from."""
    fine_stride = x.tensor_stride // 2
    context = _context(x)
    indice_key = f"down_s{fine_stride}"
    if indice_key not in context.indice_dict:
        raise ValueError(
            f"spconv upsample_conv from stride {x.tensor_stride} reuses the rulebook of the downsample_conv from "
            f"stride {fine_stride}, which has not run on this cache"
        )
    out = _run(context, x, kernel, 2, subm=False, inverse=True, indice_key=indice_key)
    return SparseTensor(x.cache.coordinates_at(fine_stride), out.features, fine_stride, x.cache)


@dataclass
class _SpconvContext:
    """Per-cache spconv state: per-batch shift (B, 3), level-0 spatial shape, indices per stride, rulebooks."""

    shift: torch.Tensor
    spatial_shape: list[int]
    batch_size: int
    indices: dict[int, torch.Tensor] = field(default_factory=dict)
    indice_dict: dict = field(default_factory=dict)


def _context(x: SparseTensor) -> _SpconvContext:
    x.cache.claim(SparseBackend.SPCONV)
    if x.features.is_cuda and CPU_ONLY_BUILD:
        raise RuntimeError(
            "the installed spconv is its CPU build; CUDA tensors need spconv-cu126 (or another CUDA wheel)"
        )
    if not x.features.is_cuda:
        spconv_cpu_fixes.install()
    return x.cache.backend_context(lambda: _make_context(x.cache))


def _make_context(cache: KernelMapCache) -> _SpconvContext:
    coordinates = cache.coordinates_at(1)
    if coordinates is None:
        raise ValueError("the spconv backend starts from the stride-1 level; this cache has none")
    batch, grid = split_grid(coordinates, 1)
    batch_size = int(batch.max()) + 1 if batch.numel() else 1
    index = batch[:, None].expand(-1, 3)
    low = torch.full((batch_size, 3), torch.iinfo(torch.int64).max, dtype=torch.int64, device=grid.device)
    high = torch.full((batch_size, 3), torch.iinfo(torch.int64).min, dtype=torch.int64, device=grid.device)
    low.scatter_reduce_(0, index, grid, reduce="amin")
    high.scatter_reduce_(0, index, grid, reduce="amax")
    present = low[:, 0] <= high[:, 0]
    low = torch.where(present[:, None], low, torch.zeros_like(low))
    high = torch.where(present[:, None], high, torch.zeros_like(high))
    shift = torch.div(low, MAX_TENSOR_STRIDE, rounding_mode="floor") * MAX_TENSOR_STRIDE
    extent = (high - shift + 1).amax(0)
    spatial_shape = (
        torch.div(extent + MAX_TENSOR_STRIDE - 1, MAX_TENSOR_STRIDE, rounding_mode="floor") * MAX_TENSOR_STRIDE
    ).tolist()
    context = _SpconvContext(shift=shift, spatial_shape=spatial_shape, batch_size=batch_size)
    context.indices[1] = torch.cat([batch[:, None], grid - shift[batch]], dim=1).to(torch.int32)
    return context


def _indices_to_coordinates(indices: torch.Tensor, tensor_stride: int, shift: torch.Tensor) -> torch.Tensor:
    batch = indices[:, 0].long()
    xyz = indices[:, 1:].long() * tensor_stride + shift[batch]
    return torch.cat([batch[:, None], xyz], dim=1).to(torch.int32)


def _run(
    context: _SpconvContext,
    x: SparseTensor,
    kernel: torch.Tensor,
    kernel_size: int,
    subm: bool,
    inverse: bool,
    indice_key: str,
) -> SparseConvTensor:
    indices = context.indices.get(x.tensor_stride)
    if indices is None:
        raise ValueError(f"spconv backend: no indices for tensor stride {x.tensor_stride} in this cache")
    spatial_shape = [size // x.tensor_stride for size in context.spatial_shape]
    sparse_input = SparseConvTensor(
        x.features.contiguous(), indices, spatial_shape, context.batch_size, indice_dict=context.indice_dict
    )
    description = _conv_description(
        x.num_channels, kernel.shape[-1], kernel_size, subm, inverse, indice_key, x.features.is_cuda
    )
    weight = me_kernel_to_spconv(kernel.to(x.features.dtype))
    training = torch.is_grad_enabled() and (x.features.requires_grad or kernel.requires_grad)
    out = description._conv_forward(training, sparse_input, weight, None)
    context.indice_dict.update(out.indice_dict)
    return out


@functools.cache
def _conv_description(
    in_channels: int, out_channels: int, kernel_size: int, subm: bool, inverse: bool, indice_key: str, on_gpu: bool
) -> SparseConvolutionBase:
    """spconv's weight-free description of one convolution.

    spconv's own modules own a weight in spconv layout and call `_conv_forward(training, input, weight,
    bias)` with it; calling it with our converted ME-layout kernel lets the parameters stay in ME layout
    without a second copy. spconv is frozen at 2.3.8 (unmaintained), so this internal call is stable.
    On CPU, spconv's only algorithm is the native gather-GEMM-scatter one.
    """
    return SparseConvolutionBase(
        ndim=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=1 if subm else 2,
        bias=False,
        subm=subm,
        inverse=inverse,
        indice_key=indice_key,
        algo=None if on_gpu else ConvAlgo.Native,
    )
