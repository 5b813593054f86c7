"""ESAM's mixed query decoder (`ScanNetMixQueryDecoder`): superpoints are the queries, masks go coarse to fine.

One call decodes one frame: frames differ in point, superpoint and query counts, and attention is per frame
anyway, so `ESAMSingleViewHead` loops over frames (as ESAM does) instead of padding.

Per frame: queries = a subset of the superpoints (all of them at test time); keys/values = all superpoints.
Predictions are made on the initial queries and after each of the `num_layers` layers; prediction i has the
mask level `mask_levels[i]` (ESAM: superpoint, superpoint, point, point). Layer i attends only to the
superpoints that prediction i-1 (the previous prediction) marks as inside the query's object.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bifusion.model.superpoint_pool import superpoint_mean


class MaskLevel(enum.Enum):
    """Whether a mask prediction scores superpoints `(Q, S)` or points `(Q, N)`."""

    SUPERPOINT = "superpoint"
    POINT = "point"


ESAM_MASK_LEVELS = (MaskLevel.SUPERPOINT, MaskLevel.SUPERPOINT, MaskLevel.POINT, MaskLevel.POINT)


@dataclass
class MaskPrediction:
    """One prediction level of one frame.

    class_logits (Q, C+1): the last column is "no object". mask_logits (Q, S) for `MaskLevel.SUPERPOINT`,
    (Q, N) for `MaskLevel.POINT`.
    """

    class_logits: Tensor
    mask_logits: Tensor
    level: MaskLevel


@dataclass
class FrameDecoderOutput:
    """Decoder output of one frame.

    levels: one `MaskPrediction` per prediction (initial queries, then after each layer), coarse to fine;
    the last one is point level and is what post-processing uses.
    semantic_logits (Q, num_semantic_classes + 1): last layer only; the last column is the ignore class.
    queries (Q, d_model): final queries after the output LayerNorm (what the heads saw; a box or merge head
    for the multi-view model would read these).
    query_superpoints (Q,) long: the superpoint each query was initialised from.
    """

    levels: list[MaskPrediction]
    semantic_logits: Tensor
    queries: Tensor
    query_superpoints: Tensor

    @property
    def final(self) -> MaskPrediction:
        return self.levels[-1]


def two_layer_mlp(in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear, ESAM's query init, mask feature and class head shape."""
    return nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.ReLU(), nn.Linear(hidden_channels, out_channels))


def blocked_from_mask_logits(mask_logits: Tensor) -> Tensor:
    """Attention blocking from a mask prediction `(Q, K)`: True where sigmoid < 0.5.

    A row that would be fully blocked is fully unblocked instead: a query that predicts an empty mask attends
    everywhere rather than nowhere (ESAM, after Mask2Former).
    """
    blocked = mask_logits.detach().sigmoid() < 0.5
    blocked[blocked.all(dim=1)] = False
    return blocked


def superpoint_blocked_from_point_mask(
    mask_logits: Tensor, superpoint_ids: Tensor, point_weights: Tensor, num_superpoints: int
) -> Tensor:
    """Superpoint-level attention blocking `(Q, S)` from a point-level mask prediction `(Q, N)`.

    As ESAM: the point-level blocking of `blocked_from_mask_logits` is averaged per superpoint with the pooling
    weights as score = mean over the superpoint's points of (w * blocked); note this is ESAM's plain mean of
    w-scaled indicators, not a normalised weighted mean, so with w in (0, 2) it lies in [0, 2). A superpoint is
    blocked when its score > 0.5, except that the superpoints with the row's lowest score are always open, so
    no row is ever fully blocked.
    """
    blocked_points = blocked_from_mask_logits(mask_logits)
    scaled = blocked_points.to(point_weights.dtype) * point_weights.detach()[None, :]
    score = superpoint_mean(scaled.T, superpoint_ids, num_superpoints).T
    if num_superpoints == 0:  # a frame without points: nothing to attend to, and no row minimum
        return score > 0.5
    least_blocked = score == score.amin(dim=1, keepdim=True)
    return (score > 0.5) & ~least_blocked


class MaskedCrossAttention(nn.Module):
    """Queries attend to superpoint keys/values, with a blocking mask; residual + post-LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        for parameter in self.attention.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, queries: Tensor, keys: Tensor, blocked: Tensor) -> Tensor:
        """queries (Q, D), keys (S, D) (also the values), blocked (Q, S) bool, True = may not attend."""
        attended, _ = self.attention(queries, keys, keys, attn_mask=blocked, need_weights=False)
        return self.norm(queries + self.dropout(attended))


class SelfAttention(nn.Module):
    """Queries attend to each other; residual + post-LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, queries: Tensor) -> Tensor:
        """queries (Q, D) -> (Q, D)."""
        attended, _ = self.attention(queries, queries, queries, need_weights=False)
        return self.norm(queries + self.dropout(attended))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with residual + post-LayerNorm."""

    def __init__(self, d_model: int, hidden_channels: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden_channels),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_channels, d_model),
            nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, queries: Tensor) -> Tensor:
        """queries (Q, D) -> (Q, D)."""
        return self.norm(queries + self.net(queries))


class QueryDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ffn_channels: int, dropout: float) -> None:
        super().__init__()
        self.cross_attention = MaskedCrossAttention(d_model, num_heads, dropout)
        self.self_attention = SelfAttention(d_model, num_heads, dropout)
        self.feed_forward = FeedForward(d_model, ffn_channels, dropout)

    def forward(self, queries: Tensor, keys: Tensor, blocked: Tensor) -> Tensor:
        """queries (Q, D), keys (S, D), blocked (Q, S) bool -> (Q, D)."""
        return self.feed_forward(self.self_attention(self.cross_attention(queries, keys, blocked)))


class MixedQueryDecoder(nn.Module):
    """ESAM's `ScanNetMixQueryDecoder` for one frame (see the module docstring).

    in_channels: point/superpoint feature width (ESAM 96). num_classes: instance classes C, the class head
    predicts C + 1 logits (1 = class-agnostic, 198 = ScanNet200 thing classes, 18 = ScanNet).
    num_semantic_classes: semantic classes without the ignore class (ScanNet200: 200); the semantic head
    predicts num_semantic_classes + 1 logits. mask_levels: one per prediction, so num_layers + 1 entries,
    the last one `MaskLevel.POINT`.
    """

    def __init__(
        self,
        in_channels: int = 96,
        d_model: int = 256,
        num_heads: int = 8,
        ffn_channels: int = 1024,
        num_layers: int = 3,
        num_classes: int = 1,
        num_semantic_classes: int = 200,
        mask_levels: tuple[MaskLevel, ...] = ESAM_MASK_LEVELS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(mask_levels) != num_layers + 1:
            raise ValueError(f"mask_levels: expected {num_layers + 1} entries (num_layers + 1), got {len(mask_levels)}")
        if mask_levels[-1] is not MaskLevel.POINT:
            raise ValueError(f"mask_levels: the last level must be MaskLevel.POINT, got {mask_levels[-1]}")
        self.mask_levels = tuple(mask_levels)
        self.query_init = two_layer_mlp(in_channels, d_model, d_model)
        self.key_proj = nn.Sequential(nn.Linear(in_channels, d_model), nn.LayerNorm(d_model), nn.ReLU())
        if MaskLevel.SUPERPOINT in mask_levels:
            self.superpoint_mask_features = two_layer_mlp(in_channels, d_model, d_model)
        self.point_mask_features = two_layer_mlp(3 + in_channels, d_model, d_model)
        self.layers = nn.ModuleList(
            QueryDecoderLayer(d_model, num_heads, ffn_channels, dropout) for _ in range(num_layers)
        )
        self.out_norm = nn.LayerNorm(d_model)
        self.class_head = two_layer_mlp(d_model, d_model, num_classes + 1)
        self.semantic_head = nn.Linear(d_model, num_semantic_classes + 1)

    def forward(
        self,
        superpoint_features: Tensor,
        point_features: Tensor,
        point_xyz: Tensor,
        superpoint_ids: Tensor,
        point_weights: Tensor,
        query_superpoints: Tensor,
    ) -> FrameDecoderOutput:
        """Decode one frame.

        superpoint_features (S, C) and point_weights (N,) from the pooling; point_features (N, C);
        point_xyz (N, 3), the coordinates the backbone saw; superpoint_ids (N,) long in [0, S);
        query_superpoints (Q,) long: the superpoints used as queries.
        """
        num_superpoints = superpoint_features.shape[0]
        keys = self.key_proj(superpoint_features)
        mask_features = {MaskLevel.POINT: self.point_mask_features(torch.cat([point_xyz, point_features], dim=1))}
        if MaskLevel.SUPERPOINT in self.mask_levels:
            mask_features[MaskLevel.SUPERPOINT] = self.superpoint_mask_features(superpoint_features)

        queries = self.query_init(superpoint_features[query_superpoints])
        prediction, normed_queries = self._predict(queries, mask_features, self.mask_levels[0])
        levels = [prediction]
        for layer, level in zip(self.layers, self.mask_levels[1:]):
            if prediction.level is MaskLevel.SUPERPOINT:
                blocked = blocked_from_mask_logits(prediction.mask_logits)
            else:
                blocked = superpoint_blocked_from_point_mask(
                    prediction.mask_logits, superpoint_ids, point_weights, num_superpoints
                )
            queries = layer(queries, keys, blocked)
            prediction, normed_queries = self._predict(queries, mask_features, level)
            levels.append(prediction)
        return FrameDecoderOutput(
            levels=levels,
            semantic_logits=self.semantic_head(normed_queries),
            queries=normed_queries,
            query_superpoints=query_superpoints,
        )

    def _predict(
        self, queries: Tensor, mask_features: dict[MaskLevel, Tensor], level: MaskLevel
    ) -> tuple[MaskPrediction, Tensor]:
        normed = self.out_norm(queries)
        mask_logits = normed @ mask_features[level].T
        return MaskPrediction(self.class_head(normed), mask_logits, level), normed
