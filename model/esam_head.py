"""ESAM's single-view head: superpoint pooling + mixed query decoder, behind a per-point backbone.

Inputs are lists with one tensor per frame (frames have different point and superpoint counts). Pooling runs
once on the packed points of all frames (superpoint ids offset per frame); the decoder runs frame by frame.
Outputs go to `ESAMCriterion` (training) or `postprocess.predict_instances` / `predict_point_semantics`
(inference, on `output.final` and `output.semantic_logits`).

A multi-view box head would read `FrameDecoderOutput.queries` and the query superpoints' centres
(`PooledSuperpoints.centers[query_superpoints]`, available in `forward`); a merge head only the queries.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from bifusion.model.query_decoder import ESAM_MASK_LEVELS, FrameDecoderOutput, MaskLevel, MixedQueryDecoder
from bifusion.model.superpoint_pool import GeometryAwareSuperpointPooling


def sample_query_superpoints(
    num_superpoints: int, fraction: float, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """ceil(fraction * S) distinct superpoint ids drawn uniformly, sorted ascending -> (Q,) long."""
    num_queries = math.ceil(fraction * num_superpoints)
    chosen = torch.randperm(num_superpoints, generator=generator)[:num_queries]
    return chosen.sort().values.to(device)


class ESAMSingleViewHead(nn.Module):
    """Geometry-aware superpoint pooling followed by the mixed query decoder (esam.md §1.3, items 5-7).

    Queries: every superpoint in eval mode; in training mode a random subset whose fraction is drawn uniformly
    in [min_query_fraction, 1] per frame (ESAM's `query_thr` 0.5). See `MixedQueryDecoder` for the other
    arguments.
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
        min_query_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < min_query_fraction <= 1.0:
            raise ValueError(f"min_query_fraction: expected a value in (0, 1], got {min_query_fraction}")
        self.min_query_fraction = min_query_fraction
        self.pooling = GeometryAwareSuperpointPooling(in_channels)
        self.decoder = MixedQueryDecoder(
            in_channels=in_channels,
            d_model=d_model,
            num_heads=num_heads,
            ffn_channels=ffn_channels,
            num_layers=num_layers,
            num_classes=num_classes,
            num_semantic_classes=num_semantic_classes,
            mask_levels=mask_levels,
            dropout=dropout,
        )

    def forward(
        self,
        point_features: list[Tensor],
        point_xyz: list[Tensor],
        superpoint_ids: list[Tensor],
        query_fraction: float | None = None,
    ) -> list[FrameDecoderOutput]:
        """One entry per frame: point_features (N_i, C) from the backbone, point_xyz (N_i, 3) as the backbone
        saw them, superpoint_ids (N_i,) long, contiguous from 0.

        query_fraction: share of superpoints used as queries in every frame; None = all in eval mode and
        uniform in [min_query_fraction, 1] per frame in training mode.
        """
        num_superpoints = [int(ids.max()) + 1 if ids.numel() else 0 for ids in superpoint_ids]
        offsets = [0, *itertools.accumulate(num_superpoints[:-1])]
        packed_ids = torch.cat([ids + offset for ids, offset in zip(superpoint_ids, offsets)])
        pooled = self.pooling(torch.cat(point_features), torch.cat(point_xyz), packed_ids, sum(num_superpoints))
        superpoint_features = pooled.features.split(num_superpoints)
        point_weights = pooled.point_weights.split([len(ids) for ids in superpoint_ids])

        outputs = []
        for frame, count in enumerate(num_superpoints):
            queries = sample_query_superpoints(count, self._draw_fraction(query_fraction), packed_ids.device)
            outputs.append(
                self.decoder(
                    superpoint_features[frame],
                    point_features[frame],
                    point_xyz[frame],
                    superpoint_ids[frame],
                    point_weights[frame],
                    queries,
                )
            )
        return outputs

    def _draw_fraction(self, query_fraction: float | None) -> float:
        if query_fraction is not None:
            return query_fraction
        if not self.training:
            return 1.0
        return self.min_query_fraction + (1.0 - self.min_query_fraction) * torch.rand(()).item()
