"""ESAM's multilevel memory between the encoder and decoder of the 3D U-Net (esam.md §1.3 item 4,
`oneformer3d/multilevel_memory.py`).

Per encoder level (strides 2, 4, 8, 16; ESAM 32/64/128/256 channels) the memory keeps the features of every
voxel seen since the last `reset()`, keyed by voxel coordinate `(batch, x, y, z)` in the shared world frame
(batch = clip index when several clips run side by side). For each new frame, per level:

  1. merge: the frame's voxels join the memory; a voxel present in both keeps the element-wise MAX
     (ME's `SparseTensorQuantizationMode.MAX_POOL`);
  2. read back: the memory voxels inside the frame's bounding box (per batch index) enlarged `box_scale` (2.5)
     times about its centre;
  3. context: on those voxels, [3x3x3 conv | 3x3x3 conv with dilation 3 | global average] (3C) -> 1x1 conv ->
     BN (C);
  4. output at the frame's voxels: ReLU(frame features + context sampled at the frame's voxels).

Identity at initialisation: the BN of step 3 starts with scale and shift 0 (ESAM zero-initialises its
`conv_convert` BN), so the context is exactly 0 and, the encoder outputs being post-ReLU, the output equals
the input. Zeroing the conv kernels instead would also give 0 but freeze every memory gradient at 0.
Departure from ESAM, on purpose: the context is added to the frame's OWN features, not to the accumulated
max-pooled ones, so a single-view checkpoint gives exactly its single-view outputs on every frame of a clip
(ESAM's version differs from the first frame on as soon as a voxel was seen brighter before).

Everything pairs rows through coordinates (`coordinates.CoordinateIndex`), never row positions, so it is the
same on every sparse backend (they order coarse rows differently). The context convs run on a tensor of their
own (own `KernelMapCache`, stride-1 grid of the level); the dilated conv runs as a plain 3x3x3 conv after
splitting the voxels by their grid coordinate modulo 3 into 27 sub-lattices (put in the batch index), where
neighbours 3 cells apart become adjacent: exactly a dilation-3 conv, with any backend.

Gradients flow through the stored features within a clip (max pooling passes them to the frame that holds
the maximum); `reset()` drops them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bifusion.model.sparse.backend import SparseBackend
from bifusion.model.sparse.coordinates import CoordinateIndex, GridBox, split_grid, unique_keys
from bifusion.model.sparse.layers import PointwiseConv3d, SparseBatchNorm, SparseReLU, SubmanifoldConv3d
from bifusion.model.sparse.tensor import SparseTensor

ESAM_MEMORY_BOX_SCALE = 2.5
DILATION = 3


@dataclass
class MemoryLevelState:
    """Accumulated voxels of one level: coordinates (M, 4) int32 `(batch, x, y, z)`, multiples of
    `tensor_stride`, and their features (M, C)."""

    coordinates: Tensor
    features: Tensor
    tensor_stride: int


def max_pool_union(state: MemoryLevelState | None, frame: SparseTensor) -> MemoryLevelState:
    """Union of the stored voxels and the frame's, features max-pooled where both have the voxel."""
    if state is None:
        return MemoryLevelState(frame.coordinates, frame.features, frame.tensor_stride)
    if state.tensor_stride != frame.tensor_stride or state.features.shape[1] != frame.num_channels:
        raise ValueError(
            f"memory level: stored stride {state.tensor_stride} with {state.features.shape[1]} channels, frame "
            f"stride {frame.tensor_stride} with {frame.num_channels} channels; call reset() between scenes"
        )
    coordinates = torch.cat([state.coordinates, frame.coordinates])
    batch, grid = split_grid(coordinates, frame.tensor_stride)
    box = GridBox(batch, grid)
    distinct, inverse = unique_keys(box.keys(batch, grid), box)
    features = torch.cat([state.features, frame.features])
    pooled = features.new_zeros(distinct.shape[0], features.shape[1]).scatter_reduce(
        0, inverse[:, None].expand_as(features), features, reduce="amax", include_self=False
    )
    out_batch, out_grid = box.decode(distinct)
    out_coordinates = torch.cat([out_batch[:, None], out_grid * frame.tensor_stride], dim=1).to(torch.int32)
    return MemoryLevelState(out_coordinates, pooled, frame.tensor_stride)


def inside_enlarged_boxes(stored: Tensor, frame: Tensor, scale: float) -> Tensor:
    """Which stored coordinates `(M, 4)` lie in the bounding box of the frame's coordinates `(K, 4)` of the same
    batch index, enlarged `scale` times about its centre -> (M,) bool (False for batches the frame lacks)."""
    num_batches = int(torch.cat([stored[:, 0], frame[:, 0]]).max()) + 1 if stored.numel() + frame.numel() else 1
    xyz, batch = frame[:, 1:].float(), frame[:, 0].long()
    index = batch[:, None].expand_as(xyz)
    low = xyz.new_full((num_batches, 3), float("inf")).scatter_reduce(0, index, xyz, "amin")
    high = xyz.new_full((num_batches, 3), float("-inf")).scatter_reduce(0, index, xyz, "amax")
    centre, half = 0.5 * (low + high), 0.5 * scale * (high - low)
    stored_batch = stored[:, 0].long()
    point = stored[:, 1:].float()
    inside = (point >= centre[stored_batch] - half[stored_batch]) & (point <= centre[stored_batch] + half[stored_batch])
    return inside.all(dim=1)


def dilated_lattice(tensor: SparseTensor, dilation: int) -> SparseTensor:
    """The stride-1 tensor on which a plain conv equals a `dilation`-dilated conv on `tensor` (stride 1).

    Voxel (b, g) goes to (b * dilation^3 + residue index of g mod dilation, floor(g / dilation)), same row order;
    returns a tensor with its own cache.
    """
    batch, grid = split_grid(tensor.coordinates, 1)
    residue = torch.remainder(grid, dilation)
    residue_index = (residue[:, 0] * dilation + residue[:, 1]) * dilation + residue[:, 2]
    coordinates = torch.cat(
        [(batch * dilation**3 + residue_index)[:, None], torch.div(grid, dilation, rounding_mode="floor")], dim=1
    )
    return SparseTensor(coordinates.to(torch.int32), tensor.features, tensor_stride=1)


class MemoryContext(nn.Module):
    """Step 3 of the module docstring for one level: (M, C) read-back features -> (M, C) context."""

    def __init__(self, channels: int, backend: SparseBackend | str) -> None:
        super().__init__()
        self.local = nn.Sequential(
            SubmanifoldConv3d(channels, channels, 3, backend), SparseBatchNorm(channels, 0.1), SparseReLU(False)
        )
        self.dilated = nn.Sequential(
            SubmanifoldConv3d(channels, channels, 3, backend), SparseBatchNorm(channels, 0.1), SparseReLU(False)
        )
        self.reduce = nn.Sequential(PointwiseConv3d(3 * channels, channels), SparseBatchNorm(channels, 0.1))
        nn.init.zeros_(self.reduce[1].bn.weight)
        nn.init.zeros_(self.reduce[1].bn.bias)

    def forward(self, readback: SparseTensor) -> Tensor:
        """readback: stride-1 tensor (level grid units) with its own cache -> context features (M, C)."""
        local = self.local(readback).features
        dilated = self.dilated(dilated_lattice(readback, DILATION)).features
        batch = readback.coordinates[:, 0].long()
        num_batches = int(batch.max()) + 1 if batch.numel() else 1
        sums = readback.features.new_zeros(num_batches, readback.num_channels).index_add(0, batch, readback.features)
        counts = torch.bincount(batch, minlength=num_batches).clamp_min(1).to(sums.dtype)
        global_mean = (sums / counts[:, None])[batch]
        return self.reduce(readback.replace_features(torch.cat([local, dilated, global_mean], dim=1))).features


class MultilevelMemory(nn.Module):
    """Memory over the encoder levels (module docstring).

    channels: one per encoder level given to `forward` (ESAM: 32, 64, 128, 256); box_scale: read-back box
    enlargement; backend: sparse backend of the context convs.
    """

    def __init__(
        self, channels: Sequence[int], backend: SparseBackend | str, box_scale: float = ESAM_MEMORY_BOX_SCALE
    ) -> None:
        super().__init__()
        if box_scale < 1.0:
            raise ValueError(f"box_scale: expected >= 1 (the frame's own box must be read back), got {box_scale}")
        self.box_scale = box_scale
        self.levels = nn.ModuleList(MemoryContext(c, backend) for c in channels)
        self._states: list[MemoryLevelState | None] = [None] * len(channels)

    def reset(self) -> None:
        """Forget every stored voxel (start of a scene or of a training clip)."""
        self._states = [None] * len(self.levels)

    @property
    def num_stored_voxels(self) -> list[int]:
        """Stored voxels per level (0 after `reset`)."""
        return [0 if state is None else state.coordinates.shape[0] for state in self._states]

    def forward(self, levels: Sequence[SparseTensor]) -> list[SparseTensor]:
        """One frame (or one frame per batch index): encoder level tensors -> same coordinates and rows, new
        features `ReLU(features + context)`; the frame is merged into the memory first."""
        if len(levels) != len(self.levels):
            raise ValueError(f"MultilevelMemory: expected {len(self.levels)} levels, got {len(levels)}")
        outputs = []
        for index, (level, context) in enumerate(zip(levels, self.levels)):
            state = max_pool_union(self._states[index], level)
            self._states[index] = state
            selected = inside_enlarged_boxes(state.coordinates, level.coordinates, self.box_scale)
            batch, grid = split_grid(state.coordinates[selected], state.tensor_stride)
            readback = SparseTensor(
                torch.cat([batch[:, None], grid], dim=1).to(torch.int32), state.features[selected], tensor_stride=1
            )
            context_features = context(readback)
            rows = CoordinateIndex(state.coordinates[selected], state.tensor_stride).rows_of(level.coordinates)
            if bool((rows < 0).any()):
                raise RuntimeError("MultilevelMemory: a frame voxel is missing from its own read-back box")
            context_at_frame = context_features[rows].to(level.features.dtype)
            outputs.append(level.replace_features(torch.relu(level.features + context_at_frame)))
        return outputs
