"""Pure-PyTorch sparse convolutions (the default backend): gather -> matmul -> scatter per kernel offset.

Every function takes a `SparseTensor` and an ME-layout kernel `(K, Cin, Cout)` and returns a `SparseTensor`
in the same cache. Kernel maps come from `kernel_maps` and are cached per (stride, kernel size, kind).
The convolutions are one autograd Function with a hand-written backward that keeps only the input
features, the kernel and the map (autograd would keep every offset's gathered input rows).
Only torch tensor ops are used, so the same code runs on CUDA tensors.

Speed on CPU comes mostly from the maps' layout: int32 row indices, and pair lists that are sorted by
both input and output row within each offset (rows are kept in (batch, x, y, z) order at every level),
which makes `index_select` / `index_add_` cache-friendly; `index_add_` with int64 indices or unsorted rows
is several times slower on CPU.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from bifusion.model.sparse.backend import SparseBackend
from bifusion.model.sparse.kernel_maps import PairMap, downsample_map, submanifold_map
from bifusion.model.sparse.tensor import KernelMapCache, MapKind, SparseTensor


def submanifold_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """Stride-1 conv with an odd kernel, output on x's coordinates. kernel (k^3, Cin, Cout), ME offset order."""
    kernel_size = _kernel_size(kernel)
    x.cache.claim(SparseBackend.TORCH)
    pair_map = x.cache.get_or_build(
        (x.tensor_stride, kernel_size, MapKind.SUBMANIFOLD),
        lambda: submanifold_map(x.coordinates, x.tensor_stride, kernel_size),
    )
    return x.replace_features(_PairConvolution.apply(x.features, kernel, pair_map, True))


def downsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 conv from stride s to 2s. kernel (8, Cin, Cout), offsets (0|1)^3 from the coarse corner."""
    if kernel.shape[0] != 8:
        raise ValueError(f"downsample_conv needs a k=2 kernel (8, Cin, Cout), got {tuple(kernel.shape)}")
    x.cache.claim(SparseBackend.TORCH)
    coarse_coordinates, pair_map = _stride_two_map(x.cache, x.tensor_stride)
    features = _PairConvolution.apply(x.features, kernel, pair_map, False)
    return SparseTensor(coarse_coordinates, features, 2 * x.tensor_stride, x.cache)


def upsample_conv(x: SparseTensor, kernel: torch.Tensor) -> SparseTensor:
    """k=2 s=2 transposed conv from stride s onto the existing stride-s/2 coordinates (ME's non-generative
    MinkowskiConvolutionTranspose). kernel (8, Cin, Cout): the coarse voxel feeds its child at its offset."""
    if kernel.shape[0] != 8:
        raise ValueError(f"upsample_conv needs a k=2 kernel (8, Cin, Cout), got {tuple(kernel.shape)}")
    fine_stride = x.tensor_stride // 2
    fine_coordinates = x.cache.coordinates_at(fine_stride) if fine_stride >= 1 else None
    if fine_coordinates is None:
        raise ValueError(f"upsample_conv from stride {x.tensor_stride}: the cache has no stride-{fine_stride} level")
    x.cache.claim(SparseBackend.TORCH)
    _, pair_map = _stride_two_map(x.cache, fine_stride)
    features = _PairConvolution.apply(x.features, kernel, pair_map.transposed(), False)
    return SparseTensor(fine_coordinates, features, fine_stride, x.cache)


def _stride_two_map(cache: KernelMapCache, fine_stride: int) -> tuple[torch.Tensor, PairMap]:
    """(coarse coordinates, map) of the k=2 s=2 conv from `fine_stride`, creating the coarse level if needed."""

    def build() -> tuple[torch.Tensor, PairMap]:
        return downsample_map(cache.coordinates_at(fine_stride), fine_stride, cache.coordinates_at(2 * fine_stride))

    return cache.get_or_build((fine_stride, 2, MapKind.DOWNSAMPLE), build)


def _kernel_size(kernel: torch.Tensor) -> int:
    kernel_size = round(kernel.shape[0] ** (1 / 3))
    if kernel.dim() != 3 or kernel_size**3 != kernel.shape[0] or kernel_size % 2 == 0:
        raise ValueError(f"submanifold kernel must be (k^3, Cin, Cout) with odd k, got {tuple(kernel.shape)}")
    return kernel_size


class _PairConvolution(torch.autograd.Function):
    """out[o] = sum over pairs (i, o) of offset k of features[i] @ kernel[k] (+ features[o] @ kernel[centre]).

    Computed in the features' dtype with autocast off (the kernel is cast to it; its gradient is cast back).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, kernel: torch.Tensor, pair_map: PairMap, with_centre: bool):
        ctx.save_for_backward(features, kernel)
        ctx.pair_map = pair_map
        ctx.with_centre = with_centre
        with torch.autocast(features.device.type, enabled=False):
            weights = kernel.to(features.dtype)
            if with_centre:
                out = features @ weights[pair_map.kernel_volume // 2]
            else:
                out = features.new_zeros(pair_map.num_out, weights.shape[2])
            # one gather and one product buffer for all offsets, as spconv does: a fresh large tensor per
            # offset costs an mmap and page faults on CPU
            gathered = features.new_empty(pair_map.max_group_size, features.shape[1])
            product = features.new_empty(pair_map.max_group_size, weights.shape[2])
            for offset_index in range(pair_map.kernel_volume):
                in_rows, out_rows = pair_map.offset_pairs(offset_index)
                count = in_rows.shape[0]
                if count:
                    torch.index_select(features, 0, in_rows, out=gathered[:count])
                    torch.mm(gathered[:count], weights[offset_index], out=product[:count])
                    out.index_add_(0, out_rows, product[:count])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        features, kernel = ctx.saved_tensors
        pair_map: PairMap = ctx.pair_map
        need_features, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_features = grad_kernel = None
        with torch.autocast(features.device.type, enabled=False):
            grad_out = grad_out.to(features.dtype).contiguous()
            weights = kernel.to(features.dtype)
            centre = pair_map.kernel_volume // 2
            if need_features:
                if ctx.with_centre:
                    grad_features = grad_out @ weights[centre].T
                else:
                    grad_features = features.new_zeros(features.shape)
            if need_kernel:
                grad_kernel = torch.zeros_like(weights)
                if ctx.with_centre:
                    torch.mm(features.T, grad_out, out=grad_kernel[centre])
            gathered_grad = grad_out.new_empty(pair_map.max_group_size, grad_out.shape[1])
            gathered_input = features.new_empty(pair_map.max_group_size, features.shape[1])
            for offset_index in range(pair_map.kernel_volume):
                in_rows, out_rows = pair_map.offset_pairs(offset_index)
                count = in_rows.shape[0]
                if not count:
                    continue
                torch.index_select(grad_out, 0, out_rows, out=gathered_grad[:count])
                if need_kernel:
                    torch.index_select(features, 0, in_rows, out=gathered_input[:count])
                    torch.mm(gathered_input[:count].T, gathered_grad[:count], out=grad_kernel[offset_index])
                if need_features:
                    torch.mm(gathered_grad[:count], weights[offset_index].T, out=gathered_input[:count])
                    grad_features.index_add_(0, in_rows, gathered_input[:count])
            if grad_kernel is not None:
                grad_kernel = grad_kernel.to(kernel.dtype)
        return grad_features, grad_kernel, None, None
