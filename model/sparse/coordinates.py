"""Coordinate lookup: which row of a sparse tensor holds a given (batch, x, y, z).

All backends put rows in their own order at coarse levels, so anything that pairs rows of two tensors
(a multi-view memory, skip connections across caches, comparisons between backends) goes through these
functions, never through row positions.

Method: each coordinate is linearised into one int64 key inside the bounding box of the indexed set (in
grid units of the tensor stride); lookups are a gather from a dense key -> row table when the box is small
enough, else a binary search (`torch.searchsorted`) in the sorted keys. Both run on any device.
"""

from __future__ import annotations

import torch

from bifusion.model.sparse.tensor import SparseTensor

# Largest bounding-box volume (batch x grid cells) that gets a dense int32 key -> row table (128 MiB); a
# 2 cm grid over a 6 x 5 x 3 m room is ~11 M cells. Larger boxes fall back to binary search.
DENSE_TABLE_MAX_CELLS = 1 << 25


class GridBox:
    """Linearisation of (batch, grid cell) into one int64 key inside a bounding box.

    key = ((b * Ex + x) * Ey + y) * Ez + z with x, y, z relative to the box's low corner, so sorting keys
    sorts by (batch, x, y, z). batch (N,) >= 0 and grid (N, 3) int64 define the box; `margin` cells are
    added on every side so that neighbours up to `margin` cells away stay inside it.
    """

    def __init__(self, batch: torch.Tensor, grid: torch.Tensor, margin: int = 0) -> None:
        if grid.shape[0] == 0:
            low, high, num_batches = [0, 0, 0], [0, 0, 0], 1
        else:
            low = (grid.amin(0) - margin).tolist()
            high = (grid.amax(0) + margin).tolist()
            num_batches = int(batch.max()) + 1
        self.low = low
        self.high = high
        self.num_batches = num_batches
        extent = [h - l_ + 1 for l_, h in zip(low, high, strict=True)]
        self.axis_steps = (extent[1] * extent[2], extent[2], 1)
        self.batch_step = extent[0] * extent[1] * extent[2]
        self.num_cells = num_batches * self.batch_step

    def keys(self, batch: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """int64 keys `(M,)` of cells `grid (M, 3)` in batch `batch (M,)`; cells must lie inside the box."""
        low = torch.tensor(self.low, dtype=torch.int64, device=grid.device)
        steps = torch.tensor(self.axis_steps, dtype=torch.int64, device=grid.device)
        return batch * self.batch_step + ((grid - low) * steps).sum(1)

    def decode(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch (M,), grid (M, 3))` of int64 keys (inverse of `keys`)."""
        batch = torch.div(keys, self.batch_step, rounding_mode="floor")
        rest = keys - batch * self.batch_step
        axes = []
        for step, low in zip(self.axis_steps, self.low, strict=True):
            axis = torch.div(rest, step, rounding_mode="floor")
            rest = rest - axis * step
            axes.append(axis + low)
        return batch, torch.stack(axes, dim=1)

    def offset_key(self, offset: tuple[int, int, int]) -> int:
        """Key difference of a grid offset `(dx, dy, dz)` (valid while both cells lie inside the box)."""
        return sum(o * s for o, s in zip(offset, self.axis_steps, strict=True))

    def contains(self, batch: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(M,) bool: which cells lie inside the box."""
        low = torch.tensor(self.low, dtype=torch.int64, device=grid.device)
        high = torch.tensor(self.high, dtype=torch.int64, device=grid.device)
        return ((grid >= low) & (grid <= high)).all(1) & (batch >= 0) & (batch < self.num_batches)


class CoordinateIndex:
    """Row lookup for one coordinate set.

    coordinates (N, 4) int `(batch, x, y, z)` at `tensor_stride` (multiples of it); `margin`: see `GridBox`.
    """

    def __init__(self, coordinates: torch.Tensor, tensor_stride: int, margin: int = 0) -> None:
        self.tensor_stride = tensor_stride
        self.num_rows = coordinates.shape[0]
        batch, grid = split_grid(coordinates, tensor_stride)
        self.box = GridBox(batch, grid, margin)
        self.keys = self.box.keys(batch, grid)
        rows = torch.arange(self.num_rows, dtype=torch.int32, device=coordinates.device)
        if self.box.num_cells <= DENSE_TABLE_MAX_CELLS:
            self._table = torch.full((self.box.num_cells,), -1, dtype=torch.int32, device=coordinates.device)
            self._table[self.keys] = rows
            self._sorted_keys = self._order = None
        else:
            self._table = None
            self._sorted_keys, order = torch.sort(self.keys)
            self._order = order.to(torch.int32)

    def rows_of_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Row (int32) of each key (any shape), -1 where absent; keys must come from cells inside the box."""
        if self._table is not None:
            return self._table[keys]
        if self.num_rows == 0:
            return torch.full_like(keys, -1, dtype=torch.int32)
        position = torch.searchsorted(self._sorted_keys, keys).clamp_(max=self.num_rows - 1)
        found = self._sorted_keys[position] == keys
        return torch.where(found, self._order[position], torch.full_like(position, -1, dtype=torch.int32))

    def rows_of(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Row (int64) of each query `(M, 4)` coordinate, -1 where absent.

        Queries are floored onto this index's tensor-stride grid (as ME's `features_at_coordinates`), so a
        full-resolution coordinate finds the coarse voxel that contains it.
        """
        batch, grid = split_grid(coordinates, self.tensor_stride)
        inside = self.box.contains(batch, grid)
        low = torch.tensor(self.box.low, dtype=torch.int64, device=grid.device)
        safe_batch = torch.where(inside, batch, torch.zeros_like(batch))
        safe_grid = torch.where(inside[:, None], grid, low.expand_as(grid))
        rows = self.rows_of_keys(self.box.keys(safe_batch, safe_grid)).long()
        return torch.where(inside, rows, torch.full_like(rows, -1))


def unique_keys(keys: torch.Tensor, box: GridBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct keys `(M,)` of `keys (N,)` from `box` and the position of each key among them `(N,)`
    (int64), like `torch.unique(..., return_inverse=True)`; an occupancy table when the box is small."""
    if box.num_cells > DENSE_TABLE_MAX_CELLS:
        return torch.unique(keys, sorted=True, return_inverse=True)
    occupied = torch.zeros(box.num_cells, dtype=torch.bool, device=keys.device)
    occupied[keys] = True
    distinct = occupied.nonzero().squeeze(1)
    rank = torch.empty(box.num_cells, dtype=torch.int64, device=keys.device)  # read only at occupied cells
    rank[distinct] = torch.arange(distinct.shape[0], device=keys.device)
    return distinct, rank[keys]


def split_grid(coordinates: torch.Tensor, tensor_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(batch (N,), grid (N, 3))` int64 of coordinates `(N, 4)`: grid = floor(xyz / tensor_stride)."""
    coordinates = coordinates.long()
    return coordinates[:, 0], torch.div(coordinates[:, 1:], tensor_stride, rounding_mode="floor")


def lookup_rows(reference: SparseTensor, query_coordinates: torch.Tensor) -> torch.Tensor:
    """Row of `reference` holding each query coordinate `(M, 4)` (floored to its stride), -1 where absent.

    Returns (M,) int64. Builds a `CoordinateIndex` on each call; keep one yourself for repeated queries.
    """
    return CoordinateIndex(reference.coordinates, reference.tensor_stride).rows_of(query_coordinates)


def features_at_coordinates(source: SparseTensor, query_coordinates: torch.Tensor) -> torch.Tensor:
    """Features `(M, C)` of `source` at each query coordinate `(M, 4)`; zeros where `source` has no voxel.

    Differentiable w.r.t. `source.features`. To move features onto another tensor's coordinate set:
    `target.replace_features(features_at_coordinates(source, target.coordinates))`.
    """
    rows = lookup_rows(source, query_coordinates)
    found = rows >= 0
    gathered = source.features.index_select(0, rows.clamp(min=0))
    return torch.where(found[:, None], gathered, torch.zeros_like(gathered))
