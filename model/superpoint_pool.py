"""Geometry-aware pooling of per-point features to superpoints (ESAM `GeoAwarePooling`).

Superpoint ids index rows of the pooled tensors: `superpoint_ids (N,)` holds values in `[0, S)`. Several frames
can be pooled in one call by offsetting each frame's ids by the number of superpoints of the frames before it
(`ESAMSingleViewHead` does this); nothing here knows about frames. A superpoint id without points gets zero
features and a zero centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def superpoint_sum(values: Tensor, superpoint_ids: Tensor, num_superpoints: int) -> Tensor:
    """Sum of `values (N, ...)` over the points of each superpoint -> `(S, ...)`."""
    out = values.new_zeros((num_superpoints, *values.shape[1:]))
    return out.index_add_(0, superpoint_ids, values)


def superpoint_mean(values: Tensor, superpoint_ids: Tensor, num_superpoints: int) -> Tensor:
    """Mean of `values (N, ...)` over the points of each superpoint -> `(S, ...)`; 0 for empty superpoints."""
    counts = torch.bincount(superpoint_ids, minlength=num_superpoints).clamp_min(1)
    counts = counts.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
    return superpoint_sum(values, superpoint_ids, num_superpoints) / counts


def _superpoint_extreme(values: Tensor, superpoint_ids: Tensor, num_superpoints: int, reduce: str) -> Tensor:
    index = superpoint_ids.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    out = values.new_zeros((num_superpoints, *values.shape[1:]))
    return out.scatter_reduce(0, index, values, reduce=reduce, include_self=False)


def superpoint_max(values: Tensor, superpoint_ids: Tensor, num_superpoints: int) -> Tensor:
    """Element-wise max of `values (N, ...)` over each superpoint -> `(S, ...)`; 0 for empty superpoints."""
    return _superpoint_extreme(values, superpoint_ids, num_superpoints, "amax")


def superpoint_min(values: Tensor, superpoint_ids: Tensor, num_superpoints: int) -> Tensor:
    """Element-wise min of `values (N, ...)` over each superpoint -> `(S, ...)`; 0 for empty superpoints."""
    return _superpoint_extreme(values, superpoint_ids, num_superpoints, "amin")


def normalize_xyz_within_superpoints(
    xyz: Tensor, superpoint_ids: Tensor, num_superpoints: int
) -> tuple[Tensor, Tensor]:
    """Express each point relative to its superpoint.

    xyz (N, 3) in any metric frame. Returns `normalized (N, 3)` = (xyz - superpoint mean) / (largest axis extent
    of the superpoint + 0.01), so a superpoint fits in a unit box whatever its size (ESAM, after SPT's
    `scatter_norm`), and `centers (S, 3)`, the superpoint means in the input frame.
    """
    centers = superpoint_mean(xyz, superpoint_ids, num_superpoints)
    extent = superpoint_max(xyz, superpoint_ids, num_superpoints) - superpoint_min(xyz, superpoint_ids, num_superpoints)
    largest_extent = extent.amax(dim=1)
    normalized = (xyz - centers[superpoint_ids]) / (largest_extent[superpoint_ids, None] + 0.01)
    return normalized, centers


@dataclass
class PooledSuperpoints:
    """Output of `GeometryAwareSuperpointPooling`.

    features (S, C): superpoint features. centers (S, 3): mean xyz of each superpoint, in the input frame.
    point_weights (N,): the learned per-point weight w in (0, 2); the decoder reuses it to turn point-level
    attention masks into superpoint-level ones.
    """

    features: Tensor
    centers: Tensor
    point_weights: Tensor


class GeometryAwareSuperpointPooling(nn.Module):
    """Weighted mean of point features per superpoint plus a learned geometry code (ESAM §1.3.5).

    Per point: normalised xyz -> MLP 3->C->C (LayerNorm, ReLU) = point geometry embedding; its max over the
    superpoint = superpoint geometry code (C); weight w = 2 * sigmoid(MLP([embedding, code]) 2C->C->1).
    Superpoint feature = mean over its points of (feature * w) + geometry code. `channels` must equal the point
    feature width because the code is added to the pooled features (ESAM: 96).
    """

    def __init__(self, channels: int = 96) -> None:
        super().__init__()
        self.point_geometry = nn.Sequential(
            nn.Linear(3, channels),
            nn.LayerNorm(channels),
            nn.ReLU(),
            nn.Linear(channels, channels),
            nn.LayerNorm(channels),
        )
        self.point_weight = nn.Sequential(
            nn.Linear(2 * channels, channels),
            nn.LayerNorm(channels),
            nn.ReLU(),
            nn.Linear(channels, 1, bias=False),
        )

    def forward(
        self, point_features: Tensor, point_xyz: Tensor, superpoint_ids: Tensor, num_superpoints: int
    ) -> PooledSuperpoints:
        """point_features (N, C), point_xyz (N, 3), superpoint_ids (N,) long in [0, num_superpoints)."""
        normalized, centers = normalize_xyz_within_superpoints(point_xyz, superpoint_ids, num_superpoints)
        point_code = self.point_geometry(normalized)
        superpoint_code = superpoint_max(point_code, superpoint_ids, num_superpoints)
        weight_input = torch.cat([point_code, superpoint_code[superpoint_ids]], dim=1)
        weights = 2.0 * torch.sigmoid(self.point_weight(weight_input)).squeeze(1)
        pooled = superpoint_mean(point_features * weights[:, None], superpoint_ids, num_superpoints)
        return PooledSuperpoints(features=pooled + superpoint_code, centers=centers, point_weights=weights)
