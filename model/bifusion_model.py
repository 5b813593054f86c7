"""BiFusion's per-frame network: ESAM's single-view model with the BiFusion encoder between backbone and head.

    voxelise -> Res16UNet34C -> slice to points (N, 96) -> BiFusionEncoder(+ CLIP map) -> fused (N, 256)
    -> superpoint head (the same `ESAMSingleViewHead`, with 256 input channels)

Module names match `ESAMSingleView` (`backbone`, `head`), so a 3D checkpoint initialises everything except
the encoder and the head's input projection (a width mismatch, reported by the partial loader).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bifusion.model.bifusion_encoder import BiFusionEncoder, BiFusionOutput, FrameCamera
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.esam_model import point_features
from bifusion.model.query_decoder import FrameDecoderOutput
from bifusion.model.res16unet import Res16UNet34C


class BiFusionSingleView(nn.Module):
    """`forward` returns the decoder output and the fusion output of every frame."""

    def __init__(self, backbone: Res16UNet34C, encoder: BiFusionEncoder, head: ESAMSingleViewHead, voxel_size: float):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.head = head
        self.voxel_size = voxel_size

    def forward(
        self,
        xyz: list[Tensor],
        colors: list[Tensor],
        superpoints: list[Tensor],
        points_camera_frame: Sequence[Tensor],
        clip_features: Tensor,
        cameras: Sequence[FrameCamera],
        source_pixels: Sequence[Tensor | None] | None = None,
        query_fraction: float | None = None,
    ) -> tuple[list[FrameDecoderOutput], list[BiFusionOutput]]:
        """xyz/colors/superpoints as `ESAMSingleView` (xyz: what the network sees, augmented in training);
        points_camera_frame (N_i, 3): the same points un-augmented, in the frame `cameras[i].cam_to_world` maps
        into; clip_features (B, 512, h, w) stored or online CLIP maps; source_pixels per frame (N_i, 2) or None."""
        features = point_features(self.backbone, xyz, colors, self.voxel_size)
        fusion = self.encoder(features, points_camera_frame, clip_features, cameras, source_pixels)
        return self.head([f.fused for f in fusion], xyz, superpoints, query_fraction), fusion
