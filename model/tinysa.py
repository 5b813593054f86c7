"""TinySA: a small local self-attention neck on one frame's per-point features (pure PyTorch).

ESAM has no TinySA. It comes from the BiFusion fork of ESAM (Xin200203/3D_Reconstruction, `TinySANeck`,
configs `*_3dtsa_*`), where it sits between the 3D backbone and the superpoint pooling, on the backbone's
per-point features (96 channels; 4 heads, 2 layers, ball radius 0.3 m, at most 32 neighbours), attending from
a subsampled set of centres to their ball neighbourhoods and bringing the result back to every point.
Placement here is the same: `TinySANeck(xyz (N, 3), features (N, C))` per frame, after the backbone (and any
2D-3D fusion), before `GeometryAwareSuperpointPooling`. Frames are processed one call each, so neighbourhoods
never mix frames even though multi-view frames share the world frame.

One layer, for the centres c (a subset of the points, or all of them):
  neighbours of c = `ball_query`: the `max_neighbors` points nearest to c with distance < radius, ties
  broken by the lower point index, sorted by (distance, index); the centre itself is one of them;
  q = Wq LN(x_c); k_j = Wk LN(x_j) + p_j; v_j = Wv LN(x_j) + p_j with p_j = pos_embed((xyz_j - xyz_c) / radius)
  (relative positional embedding, Point Transformer style); multi-head softmax attention over the neighbours;
  x_c' = x_c + Wo attention; x_c'' = x_c' + FFN(LN(x_c')) (pre-norm).
  Every point then adds the update (x_c'' - x_c) of its nearest centre (nearest-neighbour upsampling of the
  residual; a centre gets its own update).
Centres: `grid_subsample` with cell `center_cell_size` (one centre per occupied cell), or every point when it
is None (e.g. when the neck runs on superpoint centres). Centres, neighbourhoods and the upsampling map
depend on xyz only and are computed once per call, shared by the layers.

The output projection and the FFN's last layer start at zero, so a new neck is the identity: it can be inserted
into a pretrained model without changing its outputs (as ESAM zero-initialises its memory convolutions).

No weight decay: positional-embedding parameters live in submodules named `pos_embed`; the trainer finds them
with `is_positional_embedding_parameter(name)` on any model's `named_parameters()` (or asks the neck for
`no_weight_decay_parameter_names()`, relative to the neck).

Memory: distances are computed in chunks of at most `chunk_pairs` (centre, point) pairs, so ball query and
upsampling stay bounded for 20,000 centres x 20,000 points; the attention itself is (centres, max_neighbors, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

POSITIONAL_EMBEDDING_NAME = "pos_embed"
DEFAULT_CHUNK_PAIRS = 1 << 22
_FLOAT32_INF_BITS = 0x7F800000


def is_positional_embedding_parameter(name: str) -> bool:
    """True for a parameter name (as from `named_parameters()`) inside a TinySA positional embedding."""
    return POSITIONAL_EMBEDDING_NAME in name.split(".")


@dataclass
class BallNeighborhoods:
    """Result of `ball_query`.

    indices (M, K) long into the points, each row sorted by (distance, index), -1 where a centre has fewer
    than K neighbours.
    """

    indices: Tensor

    @property
    def valid(self) -> Tensor:
        """(M, K) bool: True where `indices` holds a neighbour."""
        return self.indices >= 0

    @property
    def counts(self) -> Tensor:
        """(M,) long: neighbours of each centre (at most K)."""
        return self.valid.sum(dim=1)


def _squared_distances(centers: Tensor, points: Tensor) -> Tensor:
    """(C, 3), (N, 3) -> (C, N) float32 from coordinate differences.

    Not the matmul form that `torch.cdist` switches to on large inputs: that one is inexact (an equal point can
    come out at a small nonzero distance), so ball membership would depend on the device and the input size.
    """
    return (centers.float()[:, None, :] - points.float()[None, :, :]).square().sum(dim=-1)


def _rows_per_chunk(num_columns: int, chunk_pairs: int) -> int:
    return max(1, chunk_pairs // max(num_columns, 1))


def _cell_keys(points: Tensor, cell_size: float) -> Tensor:
    """Integer key (N,) of each point's cubic cell of side `cell_size`; keys order cells by x, then y, then z."""
    cells = torch.floor(points.float() / cell_size).long()
    cells = cells - cells.amin(dim=0)
    extent = cells.amax(dim=0) + 1
    return (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]


@torch.no_grad()
def ball_query(
    centers: Tensor, points: Tensor, radius: float, max_neighbors: int, chunk_pairs: int = DEFAULT_CHUNK_PAIRS
) -> BallNeighborhoods:
    """The `max_neighbors` points nearest to each centre among those at distance < radius.

    centers (M, 3), points (N, 3) in the same metric frame. Ties in distance go to the lower point index, so
    the selection is deterministic and the same on CPU and CUDA. Distances are computed for at most
    `chunk_pairs` (centre, point) pairs at a time.
    """
    indices = torch.full((centers.shape[0], max_neighbors), -1, dtype=torch.long, device=centers.device)
    if centers.shape[0] == 0 or points.shape[0] == 0 or max_neighbors == 0:
        return BallNeighborhoods(indices)
    # Chunks of spatially close centres (sorted by a coarse cell of side 2 x radius) only measure distances to
    # the points inside the chunk's bounding box grown by the radius: a small part of a room-sized frame.
    center_order = _cell_keys(centers, 2.0 * radius).sort(stable=True).indices
    point_xyz = points.float()
    reach = radius * (1.0 + 1e-5)  # a little wider than the ball, so float32 rounding cannot cut it
    rows = _rows_per_chunk(points.shape[0], chunk_pairs)
    for start in range(0, centers.shape[0], rows):
        chunk = center_order[start : start + rows]
        chunk_xyz = centers[chunk].float()
        inside_box = (point_xyz >= chunk_xyz.amin(dim=0) - reach) & (point_xyz <= chunk_xyz.amax(dim=0) + reach)
        candidates = torch.nonzero(inside_box.all(dim=1)).squeeze(1)
        k = min(max_neighbors, candidates.shape[0])
        if k == 0:
            continue
        distances = _squared_distances(centers[chunk], points[candidates])
        distances = distances.masked_fill(distances >= radius * radius, float("inf"))
        # Non-negative float32 values order like their int32 bit patterns: one int64 key (bits, point index)
        # makes topk order by distance, then index, exactly (torch.topk leaves the order of ties unspecified).
        keys = (distances.view(torch.int32).long() << 32) | candidates
        nearest = keys.topk(k, dim=1, largest=False, sorted=True).values
        inside = (nearest >> 32) != _FLOAT32_INF_BITS
        indices[chunk, :k] = torch.where(inside, nearest & 0xFFFFFFFF, -1)
    return BallNeighborhoods(indices)


@torch.no_grad()
def grid_subsample(points: Tensor, cell_size: float) -> Tensor:
    """One point per occupied cubic cell of side `cell_size`: the point nearest to the cell's geometric centre,
    the lowest index on a tie. points (N, 3) -> indices (M,) long, ascending.

    Deterministic and independent of the point order (except for exact ties), unlike random sampling; and
    vectorised, unlike farthest point sampling, which needs one sequential step per centre.
    """
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device)
    _, cell_of_point = torch.unique(_cell_keys(points, cell_size), return_inverse=True)
    num_cells = int(cell_of_point.max()) + 1
    offsets = (points.float() / cell_size - torch.floor(points.float() / cell_size) - 0.5).square().sum(dim=1)
    best_offset = offsets.new_full((num_cells,), float("inf")).scatter_reduce(0, cell_of_point, offsets, "amin")
    point_index = torch.arange(points.shape[0], device=points.device)
    candidates = torch.where(offsets == best_offset[cell_of_point], point_index, points.shape[0])
    chosen = candidates.new_full((num_cells,), points.shape[0]).scatter_reduce(0, cell_of_point, candidates, "amin")
    return chosen.sort().values


class NeighborhoodAttentionLayer(nn.Module):
    """One TinySA layer: centres attend to their ball neighbourhoods (module docstring), then a feed-forward.

    channels C must be divisible by num_heads. radius: the ball radius, used to scale the offsets fed to the
    positional embedding to about [-1, 1].
    """

    def __init__(self, channels: int, num_heads: int, ffn_channels: int, radius: float) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels: expected a multiple of num_heads={num_heads}, got {channels}")
        self.num_heads = num_heads
        self.radius = radius
        self.attention_norm = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.pos_embed = nn.Sequential(nn.Linear(3, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.attention_out = nn.Linear(channels, channels)
        self.ffn_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.GELU(), nn.Linear(ffn_channels, channels))
        for last_linear in (self.attention_out, self.ffn[-1]):
            nn.init.zeros_(last_linear.weight)
            nn.init.zeros_(last_linear.bias)

    def forward(self, features: Tensor, xyz: Tensor, center_indices: Tensor, neighbors: Tensor) -> Tensor:
        """features (N, C), xyz (N, 3), center_indices (M,) long, neighbors (M, K) long, -1 = none.

        Returns the centres' updates (M, C): new centre features minus old ones.
        """
        num_centers, channels = center_indices.shape[0], features.shape[1]
        head_shape = (num_centers, -1, self.num_heads, channels // self.num_heads)
        valid = neighbors >= 0
        neighbor_indices = neighbors.clamp_min(0)
        offsets = (xyz[neighbor_indices] - xyz[center_indices, None, :]) / self.radius
        position = self.pos_embed(offsets.to(features.dtype))

        normed = self.attention_norm(features)
        queries = self.query(normed[center_indices]).view(head_shape)
        keys = (self.key(normed)[neighbor_indices] + position).view(head_shape)
        values = (self.value(normed)[neighbor_indices] + position).view(head_shape)
        scores = torch.einsum("mqhd,mkhd->mhk", queries, keys) / (channels // self.num_heads) ** 0.5
        scores = scores.masked_fill(~valid[:, None, :], torch.finfo(scores.dtype).min)
        attended = torch.einsum("mhk,mkhd->mhd", scores.softmax(dim=-1), values).reshape(num_centers, channels)
        # A centre without neighbours (only possible when centres are not among the points) gets no attention.
        attention_update = self.attention_out(attended) * valid.any(dim=1, keepdim=True)

        centers = features[center_indices] + attention_update
        return attention_update + self.ffn(self.ffn_norm(centers))


class TinySANeck(nn.Module):
    """Stack of `NeighborhoodAttentionLayer`s on one frame's points (module docstring).

    Defaults are the BiFusion fork's `TinySANeck` config on ESAM's 96-channel backbone output.
    center_cell_size: grid cell (m) of the centre subsampling; None = every point is a centre. The fork keeps a
    fixed quarter of the points (`sample_ratio=0.25`, random in training, FPS at test); a 0.05 m cell keeps
    roughly 10-50 % of a 20,000-point frame depending on the visible surface area (estimated on synthetic
    frames of 5-30 m2, not measured on ScanNet).
    """

    def __init__(
        self,
        channels: int = 96,
        num_heads: int = 4,
        num_layers: int = 2,
        radius: float = 0.3,
        max_neighbors: int = 32,
        ffn_channels: int = 384,
        center_cell_size: float | None = 0.05,
    ) -> None:
        super().__init__()
        self.radius = radius
        self.max_neighbors = max_neighbors
        self.center_cell_size = center_cell_size
        self.layers = nn.ModuleList(
            NeighborhoodAttentionLayer(channels, num_heads, ffn_channels, radius) for _ in range(num_layers)
        )

    def forward(self, xyz: Tensor, features: Tensor) -> Tensor:
        """xyz (N, 3) in metres (the frame's points), features (N, C) -> (N, C)."""
        if xyz.shape[0] == 0:
            return features
        if self.center_cell_size is None:
            center_indices = torch.arange(xyz.shape[0], device=xyz.device)
            nearest_center = center_indices
        else:
            center_indices = grid_subsample(xyz, self.center_cell_size)
            # Every point has a centre in its own cell, closer than the cell diagonal: a one-neighbour ball
            # query of that radius finds each point's nearest centre exactly (ties: lower centre index).
            cell_diagonal = 1.01 * math.sqrt(3.0) * self.center_cell_size
            nearest_center = ball_query(xyz, xyz[center_indices], cell_diagonal, 1).indices[:, 0]
        neighbors = ball_query(xyz[center_indices], xyz, self.radius, self.max_neighbors).indices
        for layer in self.layers:
            features = features + layer(features, xyz, center_indices, neighbors)[nearest_center]
        return features

    def no_weight_decay_parameter_names(self) -> set[str]:
        """Names (relative to this module) of the positional-embedding parameters."""
        return {name for name, _ in self.named_parameters() if is_positional_embedding_parameter(name)}
