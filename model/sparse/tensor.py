"""The sparse voxel tensor every backend consumes and produces, and its per-scene cache.

Conventions (MinkowskiEngine's):
* `coordinates (N, 4)` int32 rows `(batch, x, y, z)` in full-resolution voxel units. A tensor at tensor stride
  `s` keeps coordinates that are multiples of `s` (the voxel's corner at full resolution, floor rule), so the
  same physical place has comparable coordinates at every level. Coordinates may be negative; batch
  indices are >= 0.
* `features (N, C)` float, row i belongs to coordinate row i.
* One `KernelMapCache` per batch of scenes plays the role of ME's CoordinateManager: it holds exactly one
  coordinate set (one tensor object, one row order) per tensor stride and the kernel maps built on them,
  so every conv at a level reuses one map. Row orders differ between backends at coarse levels, so
  tensors from different caches are matched only through coordinates (see `coordinates.lookup_rows`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

MapT = TypeVar("MapT")


class MapKind(enum.Enum):
    """Which neighbourhood a kernel map describes."""

    SUBMANIFOLD = "submanifold"  # stride-1 conv with an odd kernel: output on the input coordinates
    DOWNSAMPLE = "downsample"  # k=2 s=2 conv from stride s to 2s; read transposed by the k=2 s=2 up conv


class KernelMapCache:
    """Coordinate sets per tensor stride and kernel maps per (stride, kernel size, kind) for one batch.

    The first backend that runs a convolution claims the cache: coarse levels are created in that
    backend's row order and its maps are backend-specific, so a second backend needs its own cache (build
    the input again, e.g. with `voxelize`).
    """

    def __init__(self) -> None:
        self._coordinates: dict[int, torch.Tensor] = {}
        self._maps: dict[Hashable, object] = {}
        self._backend: object | None = None
        self._backend_context: object | None = None

    def coordinates_at(self, tensor_stride: int) -> torch.Tensor | None:
        """The registered coordinate set `(N, 4)` at `tensor_stride`, or None if that level does not exist yet."""
        return self._coordinates.get(tensor_stride)

    def register_coordinates(self, tensor_stride: int, coordinates: torch.Tensor) -> None:
        """Make `coordinates` the coordinate set of level `tensor_stride`; a level is registered once."""
        existing = self._coordinates.get(tensor_stride)
        if existing is None:
            self._coordinates[tensor_stride] = coordinates
        elif existing is not coordinates:
            raise ValueError(
                f"tensor stride {tensor_stride} already has a coordinate set in this cache; a tensor on other "
                "coordinates (or on a copy of them) needs its own KernelMapCache, or derive it with "
                "SparseTensor.replace_features, or move features across with coordinates.features_at_coordinates"
            )

    def get_or_build(self, key: Hashable, build: Callable[[], MapT]) -> MapT:
        """The map stored under `key` (e.g. `(stride, kernel_size, MapKind)`), built by `build()` on first use."""
        if key not in self._maps:
            self._maps[key] = build()
        return self._maps[key]  # type: ignore[return-value]

    def claim(self, backend: object) -> None:
        """Record that `backend` runs the convolutions on this cache; a different one is an error."""
        if self._backend is None:
            self._backend = backend
        elif self._backend is not backend:
            raise ValueError(
                f"this KernelMapCache is used by backend {self._backend}, not {backend}: coarse levels and "
                "kernel maps are backend-specific; build the input again for the second backend"
            )

    def backend_context(self, build: Callable[[], MapT]) -> MapT:
        """Backend-wide state of the claiming backend (e.g. spconv's index shift), built on first use."""
        if self._backend_context is None:
            self._backend_context = build()
        return self._backend_context  # type: ignore[return-value]


class SparseTensor:
    """Features on sparse voxel coordinates at one tensor stride.

    coordinates (N, 4) int32 `(batch, x, y, z)`, full-resolution voxel units, multiples of `tensor_stride`;
    features (N, C) float; cache: shared by every tensor derived from the same input (a new one if None).
    """

    __slots__ = ("coordinates", "features", "tensor_stride", "cache")

    def __init__(
        self,
        coordinates: torch.Tensor,
        features: torch.Tensor,
        tensor_stride: int = 1,
        cache: KernelMapCache | None = None,
    ) -> None:
        if coordinates.dim() != 2 or coordinates.shape[1] != 4 or coordinates.dtype != torch.int32:
            raise ValueError(
                f"coordinates must be an int32 (N, 4) tensor of (batch, x, y, z), got {tuple(coordinates.shape)} "
                f"{coordinates.dtype}"
            )
        if features.dim() != 2 or features.shape[0] != coordinates.shape[0] or not features.is_floating_point():
            raise ValueError(
                f"features must be a float (N, C) tensor with N = {coordinates.shape[0]} rows, "
                f"got {tuple(features.shape)} {features.dtype}"
            )
        if features.device != coordinates.device:
            raise ValueError(f"features on {features.device} but coordinates on {coordinates.device}")
        if tensor_stride < 1 or tensor_stride & (tensor_stride - 1):
            raise ValueError(f"tensor_stride must be a power of two >= 1, got {tensor_stride}")
        self.coordinates = coordinates
        self.features = features
        self.tensor_stride = tensor_stride
        self.cache = cache if cache is not None else KernelMapCache()
        self.cache.register_coordinates(tensor_stride, coordinates)

    def replace_features(self, features: torch.Tensor) -> SparseTensor:
        """The same coordinates (same rows, same cache) with new `features (N, C')`."""
        return SparseTensor(self.coordinates, features, self.tensor_stride, self.cache)

    @property
    def num_voxels(self) -> int:
        return self.coordinates.shape[0]

    @property
    def num_channels(self) -> int:
        return self.features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.features.device

    def __repr__(self) -> str:
        return (
            f"SparseTensor(voxels={self.num_voxels}, channels={self.num_channels}, "
            f"tensor_stride={self.tensor_stride}, dtype={self.features.dtype}, device={self.device})"
        )


def cat_features(first: SparseTensor, second: SparseTensor) -> SparseTensor:
    """Channel concatenation `[first | second]` of two tensors on the same coordinate set (decoder skips).

    Both must share the coordinates object (same level of the same cache); rows of different coordinate
    sets are never paired by position.
    """
    if first.coordinates is not second.coordinates:
        raise ValueError(
            f"cat_features needs both tensors on the same coordinate set (same cache and tensor stride), got "
            f"strides {first.tensor_stride} and {second.tensor_stride}; align them first with "
            "coordinates.features_at_coordinates"
        )
    return first.replace_features(torch.cat([first.features, second.features], dim=1))
