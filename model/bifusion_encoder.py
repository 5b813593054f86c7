"""BiFusion encoder: per-point 3D backbone features fused with CLIP features sampled from the frame's image.

Per frame (lists of per-frame tensors, as `ESAMSingleViewHead` takes them):

    3D: point features (N, 96) -> Proj3D (Linear + LayerNorm) -> Head3D                          -> f3d (N, 256)
    2D: CLIP features (D, h, w) -> ClipFeatureReducer (1x1 conv) -> bilinear upsample to 30x40
        -> sampled at each point's pixel (grid_sample, bilinear, align_corners=False)         -> f2d_sampled
        -> Head2D, zero on invalid points                                                      -> f2d (N, 256)
    LiteFusionGate(f2d, f3d, valid) -> fused (N, 256), unit rows

Where a point falls in the image (docs/bifusion.md has the full rules):
* a stored source pixel (u, v) (single view: the pixel the point was unprojected from) is used as is:
  exact and occlusion-free; valid = inside the image;
* otherwise the point is projected with world->camera = inv(cam_to_world) and K; valid = z > 0, inside the
  image and consistent with the frame's depth map (`visible_in_depth`), since a point projected into an
  image it did not come from may be hidden behind a nearer surface.
Pixels go to grid_sample coordinates with x = (2u + 1) / W - 1 (see `pixel_to_grid_coordinates`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bifusion.model.clip_branch import ClipFeatureReducer
from bifusion.model.geometry import inside_image, pixel_to_grid_coordinates, project_points_to_image, visible_in_depth


@dataclass
class FrameCamera:
    """The image one frame's points are sampled from.

    intrinsics (3, 3) and image_size (W, H) of the image the CLIP features were computed from (ScanNet: the
    640x480 depth grid, colour resampled onto it); cam_to_world (4, 4) maps camera coordinates into the frame
    the points are given in (for ESAM's centred SV points: the pose with the centring offset folded in).
    depth_m (H, W) metres, 0 = no measurement: needed when points are projected (no source pixels).
    """

    intrinsics: Tensor
    cam_to_world: Tensor
    image_size: tuple[int, int]
    depth_m: Tensor | None = None


@dataclass
class FrameImageInputs:
    """What the encoder needs of one frame's image: clip_features (D, h, w) (stored float16 or online),
    the camera, the frame's points (N, 3) un-augmented in the frame camera.cam_to_world maps into, and their
    source pixels (N, 2) or None (then they are projected, with the depth test)."""

    clip_features: Tensor
    camera: FrameCamera
    points_camera_frame: Tensor
    source_pixels: Tensor | None


@dataclass
class BiFusionOutput:
    """Encoder output of one frame; N = the frame's point count.

    fused (N, C): the decoder's input, unit rows. alpha (N, 1): weight of the 2D feature, 0 on invalid points.
    valid (N,) bool: the point has an image feature. f3d (N, C): Head3D output. f2d (N, C): Head2D output
    (zero on invalid points). f2d_sampled (N, C): the reduced CLIP map sampled at the point, before Head2D
    (zero on invalid points): the CLIP side of `ClipConsistencyLoss`.
    """

    fused: Tensor
    alpha: Tensor
    valid: Tensor
    f3d: Tensor
    f2d: Tensor
    f2d_sampled: Tensor


class PointFeatureHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> LayerNorm on per-point features (N, C) (Head2D and Head3D)."""

    def __init__(self, channels: int, hidden_channels: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(channels, hidden_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_channels, channels),
            nn.LayerNorm(channels),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class LiteFusionGate(nn.Module):
    """Point-level gate between 2D and 3D features, masked squeeze-excitation, then the one L2 normalisation.

    alpha = sigmoid(MLP([f2d, f3d])) per point, forced to 0 on invalid points; f = alpha f2d + (1 - alpha) f3d;
    SE: squeeze = mean of f over the frame's valid points (zeros if none), channel weights =
    sigmoid(MLP(squeeze)), applied to every point; then rows are L2-normalised.

    `fixed_alpha`: when set (a float in [0, 1]), valid points use it instead of the MLP, e.g. 0 for the first
    K training steps to start from the 3D baseline; the trainer sets it and resets it to None.
    """

    def __init__(self, channels: int = 256, hidden_channels: int = 64, se_reduction: int = 4) -> None:
        super().__init__()
        self.alpha_mlp = nn.Sequential(nn.Linear(2 * channels, hidden_channels), nn.ReLU(), nn.Linear(hidden_channels, 1))
        self.excitation = nn.Sequential(
            nn.Linear(channels, channels // se_reduction), nn.ReLU(), nn.Linear(channels // se_reduction, channels)
        )
        self._fixed_alpha: float | None = None

    @property
    def fixed_alpha(self) -> float | None:
        return self._fixed_alpha

    @fixed_alpha.setter
    def fixed_alpha(self, value: float | None) -> None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"fixed_alpha: expected None or a value in [0, 1], got {value}")
        self._fixed_alpha = value

    def forward(self, f2d: Tensor, f3d: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """f2d, f3d (N, C), valid (N,) bool of one frame -> fused (N, C) unit rows, alpha (N, 1)."""
        if self._fixed_alpha is None:
            alpha = torch.sigmoid(self.alpha_mlp(torch.cat([f2d, f3d], dim=1)))
        else:
            alpha = f3d.new_full((len(f3d), 1), self._fixed_alpha)
        alpha = torch.where(valid[:, None], alpha, torch.zeros_like(alpha))
        mixed = alpha * f2d + (1.0 - alpha) * f3d
        squeeze = torch.where(valid[:, None], mixed, 0.0).sum(dim=0) / valid.sum().clamp(min=1)
        channel_weights = torch.sigmoid(self.excitation(squeeze))
        return F.normalize(mixed * channel_weights, dim=1), alpha


class BiFusionEncoder(nn.Module):
    """3D backbone features + CLIP image features -> fused per-point features for the query decoder.

    point_channels: backbone output (Res16UNet34C: 96). clip_channels: CLIP feature channels (ViT-B/16 after
    `proj`: 512). channels: fused width, the decoder's `in_channels`. feature_map_size (H', W'): the reduced
    CLIP map is upsampled to it before sampling. depth_tolerance_m, depth_tolerance_relative: occlusion test
    |z - d| <= tolerance_m + tolerance_relative * d for projected points (docs/bifusion.md).
    """

    def __init__(
        self,
        point_channels: int = 96,
        clip_channels: int = 512,
        channels: int = 256,
        feature_map_size: tuple[int, int] = (30, 40),
        head_hidden_channels: int = 256,
        dropout: float = 0.1,
        gate_hidden_channels: int = 64,
        se_reduction: int = 4,
        depth_tolerance_m: float = 0.05,
        depth_tolerance_relative: float = 0.02,
    ) -> None:
        super().__init__()
        if depth_tolerance_m < 0 or depth_tolerance_relative < 0:
            raise ValueError(
                f"depth tolerances must be >= 0, got depth_tolerance_m={depth_tolerance_m}, "
                f"depth_tolerance_relative={depth_tolerance_relative}"
            )
        self.feature_map_size = tuple(feature_map_size)
        self.depth_tolerance_m = depth_tolerance_m
        self.depth_tolerance_relative = depth_tolerance_relative
        self.proj3d = nn.Sequential(nn.Linear(point_channels, channels), nn.LayerNorm(channels))
        self.head3d = PointFeatureHead(channels, head_hidden_channels, dropout)
        self.clip_reducer = ClipFeatureReducer(clip_channels, channels)
        self.head2d = PointFeatureHead(channels, head_hidden_channels, dropout)
        self.gate = LiteFusionGate(channels, gate_hidden_channels, se_reduction)

    def forward(
        self,
        point_features: Sequence[Tensor],
        points_world: Sequence[Tensor],
        clip_features: Tensor,
        cameras: Sequence[FrameCamera],
        source_pixels: Sequence[Tensor | None] | None = None,
    ) -> list[BiFusionOutput]:
        """One entry per frame: point_features (N_i, point_channels), points_world (N_i, 3) in the frame
        `cameras[i].cam_to_world` maps into (un-augmented coordinates), cameras[i] for image i.

        clip_features (B, clip_channels, h, w): stored `clip_image_features` (float16) or `ClipImageEncoder`
        output. source_pixels: per frame (N_i, 2) pixel (u, v) on the camera's image grid, or None to project.
        """
        num_frames = len(point_features)
        if source_pixels is None:
            source_pixels = [None] * num_frames
        lengths = {len(points_world), len(cameras), len(source_pixels), clip_features.shape[0]}
        if lengths != {num_frames}:
            raise ValueError(
                f"expected one entry per frame: point_features {num_frames}, points_world {len(points_world)}, "
                f"cameras {len(cameras)}, source_pixels {len(source_pixels)}, clip_features {clip_features.shape[0]}"
            )
        feature_maps = self.feature_maps(clip_features)
        outputs = []
        frames = zip(point_features, points_world, cameras, source_pixels, feature_maps)
        for features, points, camera, pixels, feature_map in frames:
            uv, valid = self.image_correspondence(points, camera, pixels)
            keep = valid[:, None]
            f2d_sampled = torch.where(keep, sample_feature_map(feature_map, uv, camera.image_size), 0.0)
            f3d = self.head3d(self.proj3d(features))
            f2d = torch.where(keep, self.head2d(f2d_sampled), 0.0)
            fused, alpha = self.gate(f2d, f3d, valid)
            outputs.append(BiFusionOutput(fused=fused, alpha=alpha, valid=valid, f3d=f3d, f2d=f2d, f2d_sampled=f2d_sampled))
        return outputs

    def feature_maps(self, clip_features: Tensor) -> Tensor:
        """(B, clip_channels, h, w) -> reduced and upsampled (B, channels, H', W') float32."""
        reduced = self.clip_reducer(clip_features)
        return F.interpolate(reduced, size=self.feature_map_size, mode="bilinear", align_corners=False)

    def image_correspondence(
        self, points_world: Tensor, camera: FrameCamera, source_pixels: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Pixel uv (N, 2) of each point in the camera's image and valid (N,) bool (see the module docstring)."""
        if source_pixels is not None:
            if source_pixels.shape != (len(points_world), 2):
                raise ValueError(f"source_pixels: expected ({len(points_world)}, 2), got {tuple(source_pixels.shape)}")
            uv = source_pixels.to(points_world.dtype)
            return uv, inside_image(uv, camera.image_size)
        if camera.depth_m is None:
            raise ValueError(
                "camera.depth_m: points without source pixels are projected, and the occlusion test needs the frame's depth map"
            )
        width, height = camera.image_size
        if tuple(camera.depth_m.shape) != (height, width):
            raise ValueError(
                f"camera.depth_m: expected (H, W) = ({height}, {width}) to match image_size, got {tuple(camera.depth_m.shape)}"
            )
        uv, z = project_points_to_image(points_world, camera.intrinsics, camera.cam_to_world)
        visible = visible_in_depth(uv, z, camera.depth_m, self.depth_tolerance_m, self.depth_tolerance_relative)
        return uv, (z > 0) & visible


def sample_feature_map(feature_map: Tensor, uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bilinear samples (N, C) of a map (C, H', W') covering an image of size (W, H), at that image's pixels uv (N, 2).

    The map may have any resolution: pixel u maps to x = (2u + 1) / W - 1 with align_corners=False, the same
    point as the map's own pixel u' = (u + 0.5) W'/W - 0.5 (`resize_pixel_coordinates`). Border padding:
    a pixel within half a map cell of the image edge takes the edge cell's feature instead of fading to zero.
    """
    grid = pixel_to_grid_coordinates(uv, image_size).to(feature_map.dtype)
    sampled = F.grid_sample(
        feature_map[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[0, :, 0].T


def gate_statistics(outputs: Sequence[BiFusionOutput]) -> dict[str, float]:
    """Fusion health over a batch, as floats for logging (statistics over valid points are NaN when there are none).

    alpha_mean, alpha_std: gate weight of the 2D feature on valid points; valid_ratio: share of points with an
    image feature; norm_ratio_2d_3d: mean |f2d| / mean |f3d| on valid points; cosine_2d_3d: mean cosine(f2d, f3d)
    on valid points.
    """
    with torch.no_grad():
        valid = torch.cat([o.valid for o in outputs])
        alpha = torch.cat([o.alpha[:, 0] for o in outputs])[valid]
        f2d = torch.cat([o.f2d for o in outputs])[valid]
        f3d = torch.cat([o.f3d for o in outputs])[valid]
        if not len(alpha):
            undefined = {"alpha_mean": math.nan, "alpha_std": math.nan, "norm_ratio_2d_3d": math.nan, "cosine_2d_3d": math.nan}
            return {**undefined, "valid_ratio": 0.0}
        return {
            "alpha_mean": alpha.mean().item(),
            "alpha_std": alpha.std(correction=0).item(),
            "valid_ratio": valid.float().mean().item(),
            "norm_ratio_2d_3d": (f2d.norm(dim=1).mean() / f3d.norm(dim=1).mean().clamp(min=1e-12)).item(),
            "cosine_2d_3d": F.cosine_similarity(f2d, f3d, dim=1).mean().item(),
        }
