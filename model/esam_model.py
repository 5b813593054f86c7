"""ESAM's single-view network: voxelise -> Res16UNet34C -> slice to points -> superpoint head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.query_decoder import FrameDecoderOutput
from bifusion.model.res16unet import Res16UNet34C
from bifusion.model.sparse import slice_to_points, voxelize
from bifusion.model.tinysa import TinySANeck


def point_features(backbone: Res16UNet34C, xyz: list[Tensor], colors: list[Tensor], voxel_size: float) -> list[Tensor]:
    """Backbone features per point `(N_i, C)` for each frame: average-voxelise all frames as one batch,
    run the U-Net, and give each point its voxel's feature (ESAM's TensorField.sparse() / .slice())."""
    counts = [len(points) for points in xyz]
    batch_index = torch.cat([torch.full((n,), i, device=xyz[0].device) for i, n in enumerate(counts)])
    voxels, point_to_voxel = voxelize(torch.cat(xyz), batch_index, torch.cat(colors), voxel_size)
    return list(slice_to_points(backbone(voxels), point_to_voxel).split(counts))


class ESAMSingleView(nn.Module):
    """Per-frame instance segmentation: `forward` returns one `FrameDecoderOutput` per frame.

    Inputs per frame: xyz (N_i, 3) metres in the frame's coordinates (what the network sees: augmented
    in training), colors (N_i, 3) normalised rgb, superpoints (N_i,) long contiguous from 0.
    neck: optional TinySA neck on each frame's per-point backbone features (stages 3dtsa_*).
    """

    def __init__(
        self, backbone: Res16UNet34C, head: ESAMSingleViewHead, voxel_size: float, neck: TinySANeck | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.voxel_size = voxel_size

    def forward(
        self, xyz: list[Tensor], colors: list[Tensor], superpoints: list[Tensor], query_fraction: float | None = None
    ) -> list[FrameDecoderOutput]:
        features = point_features(self.backbone, xyz, colors, self.voxel_size)
        if self.neck is not None:
            features = [self.neck(points, frame_features) for points, frame_features in zip(xyz, features)]
        return self.head(features, xyz, superpoints, query_fraction)
