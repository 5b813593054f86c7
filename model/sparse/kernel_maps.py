"""Kernel maps of the pure-PyTorch backend: for each kernel offset, which input row feeds which output row.

Offsets follow MinkowskiEngine's kernel layout `[K, Cin, Cout]`: offset index = iz*k*k + iy*k + ix, x
varying fastest; odd k spans -r..r, k = 2 spans 0, 1 from the coarse voxel's corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, pairwise

import torch

from bifusion.model.sparse.coordinates import CoordinateIndex, GridBox, split_grid, unique_keys


@dataclass(frozen=True)
class PairMap:
    """Input/output row pairs grouped by kernel offset.

    in_rows, out_rows (P,) int32: the pairs of stored group g are `[bounds[g], bounds[g + 1])`.
    Not symmetric: group k is kernel offset k. Symmetric (submanifold maps, odd k): only the offsets before
    the centre are stored; the centre offset is the identity (no pairs) and offset K-1-k has the pairs of
    offset k with input and output swapped, since x + d = y <=> y - d = x.
    num_in / num_out: rows of the input / output.
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    bounds: tuple[int, ...]
    num_in: int
    num_out: int
    symmetric: bool

    @property
    def max_group_size(self) -> int:
        """Most pairs of any kernel offset."""
        return max((end - start for start, end in pairwise(self.bounds)), default=0)

    @property
    def kernel_volume(self) -> int:
        groups = len(self.bounds) - 1
        return 2 * groups + 1 if self.symmetric else groups

    def offset_pairs(self, offset_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(in_rows, out_rows)` of one kernel offset (empty for a submanifold map's centre)."""
        groups = len(self.bounds) - 1
        if not self.symmetric or offset_index < groups:
            start, end = self.bounds[offset_index], self.bounds[offset_index + 1]
            return self.in_rows[start:end], self.out_rows[start:end]
        if offset_index == groups:
            return self.in_rows[:0], self.out_rows[:0]
        mirrored = self.kernel_volume - 1 - offset_index
        start, end = self.bounds[mirrored], self.bounds[mirrored + 1]
        return self.out_rows[start:end], self.in_rows[start:end]

    def transposed(self) -> PairMap:
        """The same pairs read from output to input (the map of the transposed convolution)."""
        return PairMap(self.out_rows, self.in_rows, self.bounds, self.num_out, self.num_in, self.symmetric)


def kernel_offsets(kernel_size: int) -> list[tuple[int, int, int]]:
    """Grid offsets `(dx, dy, dz)` in MinkowskiEngine's kernel order (x fastest)."""
    if kernel_size % 2:
        radius = kernel_size // 2
        span = range(-radius, radius + 1)
    else:
        span = range(kernel_size)
    return [(dx, dy, dz) for dz in span for dy in span for dx in span]


def submanifold_map(coordinates: torch.Tensor, tensor_stride: int, kernel_size: int) -> PairMap:
    """Map of a stride-1 conv with odd `kernel_size` on `coordinates (N, 4)` at `tensor_stride`.

    Output row i gathers input row j at offset d when coordinate_j = coordinate_i + d * tensor_stride. Only
    the offsets before the centre are searched and stored (see `PairMap.symmetric`).
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"submanifold convolutions need an odd kernel size, got {kernel_size}")
    num_rows = coordinates.shape[0]
    index = CoordinateIndex(coordinates, tensor_stride, margin=kernel_size // 2)
    offsets = kernel_offsets(kernel_size)[: kernel_size**3 // 2]
    deltas = torch.tensor([index.box.offset_key(o) for o in offsets], dtype=torch.int64, device=index.keys.device)
    neighbours = index.rows_of_keys(index.keys[None, :] + deltas[:, None]).reshape(-1)  # (half K * N,)
    found = (neighbours >= 0).nonzero().squeeze(1)  # flat (offset, row) positions, grouped by offset
    counts = torch.bincount(torch.div(found, num_rows, rounding_mode="floor"), minlength=len(offsets)).tolist()
    return PairMap(
        in_rows=neighbours[found],
        out_rows=(found % num_rows).to(torch.int32),
        bounds=tuple(accumulate(counts, initial=0)),
        num_in=num_rows,
        num_out=num_rows,
        symmetric=True,
    )


def downsample_map(
    coordinates: torch.Tensor, tensor_stride: int, coarse_coordinates: torch.Tensor | None
) -> tuple[torch.Tensor, PairMap]:
    """Map of the k=2 s=2 conv from `coordinates (N, 4)` at `tensor_stride` to stride 2 * tensor_stride.

    Each fine voxel feeds its parent (floor of its grid position / 2) at offset (x&1, y&1, z&1). When
    `coarse_coordinates` is None the parents form the coarse level (sorted by (batch, x, y, z)); otherwise
    the map targets those given coarse coordinates and fine voxels whose parent is absent feed nothing.
    Returns `(coarse_coordinates (M, 4) int32, map)`.
    """
    coarse_stride = 2 * tensor_stride
    batch, grid = split_grid(coordinates, tensor_stride)
    parent = torch.div(grid, 2, rounding_mode="floor")
    child_offset = (grid[:, 0] & 1) + 2 * (grid[:, 1] & 1) + 4 * (grid[:, 2] & 1)
    if coarse_coordinates is None:
        box = GridBox(batch, parent)
        distinct, parent_rows = unique_keys(box.keys(batch, parent), box)
        coarse_batch, coarse_grid = box.decode(distinct)
        coarse_coordinates = torch.cat([coarse_batch[:, None], coarse_grid * coarse_stride], dim=1).to(torch.int32)
    else:
        parent_coordinates = torch.cat([batch[:, None], parent * coarse_stride], dim=1)
        parent_rows = CoordinateIndex(coarse_coordinates, coarse_stride).rows_of(parent_coordinates)
        # fine voxels without a parent go to a ninth group that is dropped below
        child_offset = torch.where(parent_rows >= 0, child_offset, torch.full_like(child_offset, 8))
    order = torch.argsort(child_offset, stable=True)
    bounds = tuple(accumulate(torch.bincount(child_offset, minlength=9)[:8].tolist(), initial=0))
    order = order[: bounds[-1]]
    pair_map = PairMap(
        in_rows=order.to(torch.int32),
        out_rows=parent_rows[order].to(torch.int32),
        bounds=bounds,
        num_in=coordinates.shape[0],
        num_out=coarse_coordinates.shape[0],
        symmetric=False,
    )
    return coarse_coordinates, pair_map
