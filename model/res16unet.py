"""Res16UNet34C, the sparse 3D U-Net backbone of ESAM (adapted there from Mask3D), on any sparse backend.

Structure, parameter names and shapes follow ESAM's MinkowskiEngine model (`oneformer3d/mink_unet.py`,
`Res16UNet34C(in_channels=3, out_channels=96, conv1_kernel_size=5, bn_momentum=0.02)`), so the Mask3D
ScanNet200 / ESAM checkpoints load unchanged (37,854,112 parameters):

    stem      conv0p1s1 (k=5) + bn0 + ReLU                                    -> stride 1, 32 ch
    encoder   conv{1..4}p{1,2,4,8}s2 (k=2 s=2) + bn{1..4} + ReLU + block{1..4}  -> strides 2/4/8/16, 32/64/128/256 ch
    decoder   convtr{4..7}p{16,8,4,2}s2 (k=2 s=2 transposed) + bntr{4..7} + ReLU,
              concat [upsampled | encoder skip], block{5..8}                  -> strides 8/4/2/1, 256/128/96/96 ch

BasicBlocks (2, 3, 4, 6, 2, 2, 2, 2 per stage) are two 3x3x3 submanifold convs with BN; a k=1 conv + BN
projects the residual when the channel count changes. No convolution has a bias and the final 1x1 conv
is absent (ESAM comments it out): the output is 96 channels per voxel at stride 1.

Two BN momentums, as in ESAM's code: `bn_momentum` (0.02) for the stem, strided and transposed convs and
the residual projections; the BasicBlocks' own norm1/norm2 get MinkowskiEngine's default 0.1 because
`_make_layer` does not pass `bn_momentum` to the blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from bifusion.model.sparse.backend import SparseBackend
from bifusion.model.sparse.layers import (
    DownsampleConv3d,
    PointwiseConv3d,
    SparseBatchNorm,
    SparseReLU,
    SubmanifoldConv3d,
    UpsampleConv3d,
)
from bifusion.model.sparse.tensor import SparseTensor, cat_features

ESAM_PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
ESAM_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Residual block: conv3 -> BN -> ReLU -> conv3 -> BN, + residual (projected if given), ReLU."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        bn_momentum: float,
        backend: SparseBackend | str,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.conv1 = SubmanifoldConv3d(in_channels, channels, 3, backend)
        self.norm1 = SparseBatchNorm(channels, momentum=bn_momentum)
        self.conv2 = SubmanifoldConv3d(channels, channels, 3, backend)
        self.norm2 = SparseBatchNorm(channels, momentum=bn_momentum)
        self.relu = SparseReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out.replace_features(out.features + residual.features))


class EncoderFeatures(NamedTuple):
    """Encoder outputs of one input, all in the input's cache.

    stem: stride 1, `stem_channels`; level2/4/8/16: strides 2, 4, 8, 16 with planes[0..3] channels
    (32, 64, 128, 256 in ESAM). A multi-view memory replaces level2..level16 (same coordinates) before
    `decode`, as ESAM's memory does between its encoder and decoder.
    """

    stem: SparseTensor
    level2: SparseTensor
    level4: SparseTensor
    level8: SparseTensor
    level16: SparseTensor


class Res16UNet34C(nn.Module):
    """Sparse residual U-Net; input features (N, in_channels) at stride 1, output (N, planes[7]) at stride 1.

    in_channels: input feature channels (3: normalised rgb in ESAM); planes: 8 stage widths (encoder
    1-4, decoder 5-8); layers: BasicBlocks per stage; stem_channels: width of the stem conv;
    conv1_kernel_size: odd kernel of the stem conv; bn_momentum / block_bn_momentum: see the module
    docstring; backend: which sparse-conv implementation runs the convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        planes: Sequence[int],
        layers: Sequence[int],
        stem_channels: int,
        conv1_kernel_size: int,
        bn_momentum: float,
        block_bn_momentum: float,
        backend: SparseBackend | str,
    ) -> None:
        super().__init__()
        if len(planes) != 8 or len(layers) != 8:
            raise ValueError(f"planes and layers need 8 entries each, got {len(planes)} and {len(layers)}")
        self.out_channels = planes[7]
        momentum = bn_momentum

        def stage(in_ch: int, ch: int, blocks: int) -> nn.Sequential:
            return _residual_stage(in_ch, ch, blocks, momentum, block_bn_momentum, backend)

        self.conv0p1s1 = SubmanifoldConv3d(in_channels, stem_channels, conv1_kernel_size, backend)
        self.bn0 = SparseBatchNorm(stem_channels, momentum)
        self.conv1p1s2 = DownsampleConv3d(stem_channels, stem_channels, backend)
        self.bn1 = SparseBatchNorm(stem_channels, momentum)
        self.block1 = stage(stem_channels, planes[0], layers[0])
        self.conv2p2s2 = DownsampleConv3d(planes[0], planes[0], backend)
        self.bn2 = SparseBatchNorm(planes[0], momentum)
        self.block2 = stage(planes[0], planes[1], layers[1])
        self.conv3p4s2 = DownsampleConv3d(planes[1], planes[1], backend)
        self.bn3 = SparseBatchNorm(planes[1], momentum)
        self.block3 = stage(planes[1], planes[2], layers[2])
        self.conv4p8s2 = DownsampleConv3d(planes[2], planes[2], backend)
        self.bn4 = SparseBatchNorm(planes[2], momentum)
        self.block4 = stage(planes[2], planes[3], layers[3])

        self.convtr4p16s2 = UpsampleConv3d(planes[3], planes[4], backend)
        self.bntr4 = SparseBatchNorm(planes[4], momentum)
        self.block5 = stage(planes[4] + planes[2], planes[4], layers[4])
        self.convtr5p8s2 = UpsampleConv3d(planes[4], planes[5], backend)
        self.bntr5 = SparseBatchNorm(planes[5], momentum)
        self.block6 = stage(planes[5] + planes[1], planes[5], layers[5])
        self.convtr6p4s2 = UpsampleConv3d(planes[5], planes[6], backend)
        self.bntr6 = SparseBatchNorm(planes[6], momentum)
        self.block7 = stage(planes[6] + planes[0], planes[6], layers[6])
        self.convtr7p2s2 = UpsampleConv3d(planes[6], planes[7], backend)
        self.bntr7 = SparseBatchNorm(planes[7], momentum)
        self.block8 = stage(planes[7] + stem_channels, planes[7], layers[7])
        self.relu = SparseReLU(inplace=True)

    def encode(self, x: SparseTensor) -> EncoderFeatures:
        """Stem and the four encoder levels of the stride-1 input `x (N, in_channels)`."""
        stem = self.relu(self.bn0(self.conv0p1s1(x)))
        level2 = self.block1(self.relu(self.bn1(self.conv1p1s2(stem))))
        level4 = self.block2(self.relu(self.bn2(self.conv2p2s2(level2))))
        level8 = self.block3(self.relu(self.bn3(self.conv3p4s2(level4))))
        level16 = self.block4(self.relu(self.bn4(self.conv4p8s2(level8))))
        return EncoderFeatures(stem, level2, level4, level8, level16)

    def decode(self, encoded: EncoderFeatures) -> SparseTensor:
        """Stride-1 output `(N, planes[7])` on the input's coordinates."""
        out = self.relu(self.bntr4(self.convtr4p16s2(encoded.level16)))
        out = self.block5(cat_features(out, encoded.level8))
        out = self.relu(self.bntr5(self.convtr5p8s2(out)))
        out = self.block6(cat_features(out, encoded.level4))
        out = self.relu(self.bntr6(self.convtr6p4s2(out)))
        out = self.block7(cat_features(out, encoded.level2))
        out = self.relu(self.bntr7(self.convtr7p2s2(out)))
        return self.block8(cat_features(out, encoded.stem))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.decode(self.encode(x))


def _residual_stage(
    in_channels: int,
    channels: int,
    blocks: int,
    projection_bn_momentum: float,
    block_bn_momentum: float,
    backend: SparseBackend | str,
) -> nn.Sequential:
    """`blocks` BasicBlocks; the first projects the residual (k=1 conv + BN) when the width changes."""
    projection = None
    if in_channels != channels:
        projection = nn.Sequential(
            PointwiseConv3d(in_channels, channels), SparseBatchNorm(channels, projection_bn_momentum)
        )
    stage = [BasicBlock(in_channels, channels, block_bn_momentum, backend, projection)]
    stage += [BasicBlock(channels, channels, block_bn_momentum, backend, None) for _ in range(1, blocks)]
    return nn.Sequential(*stage)


def res16unet34c(backend: SparseBackend | str = SparseBackend.TORCH) -> Res16UNet34C:
    """ESAM's backbone: 3 input channels (normalised rgb), k=5 stem, BN momentum 0.02, 96 output channels."""
    return Res16UNet34C(
        in_channels=3,
        planes=ESAM_PLANES,
        layers=ESAM_LAYERS,
        stem_channels=32,
        conv1_kernel_size=5,
        bn_momentum=0.02,
        block_bn_momentum=0.1,
        backend=backend,
    )


# Where the backbone sits in the checkpoints the project starts from: OneFormer3D's redistributed Mask3D
# ScanNet200 weights and ESAM's own (mmdet3d models with `backbone.`).
DEFAULT_PREFIX_MAP: tuple[tuple[str, str], ...] = (("model.backbone.", ""), ("backbone.", ""), ("unet.", ""))


@dataclass
class WeightLoadReport:
    """What `load_backbone_weights` did; shape mismatches are never loaded."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model parameter and buffer came from the checkpoint."""
        return not self.missing and not self.shape_mismatches

    def summary(self, max_names: int = 5) -> str:
        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_names])
            return shown + (f", ... ({len(keys) - max_names} more)" if len(keys) > max_names else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing in checkpoint (left as initialised): {len(self.missing)}: {names(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint (ignored): {len(self.unexpected)}: {names(self.unexpected)}")
        for key, checkpoint_shape, model_shape in self.shape_mismatches:
            lines.append(f"shape mismatch (not loaded): {key}: checkpoint {checkpoint_shape}, model {model_shape}")
        return "\n".join(lines)


def load_backbone_weights(
    model: nn.Module,
    checkpoint: Mapping[str, object],
    prefix_map: Sequence[tuple[str, str]] = DEFAULT_PREFIX_MAP,
) -> WeightLoadReport:
    """Copy matching tensors of a checkpoint into `model` (ME layout, e.g. `Res16UNet34C`), non-strictly.

    checkpoint: what `torch.load(path, map_location="cpu", weights_only=True)` returns (the calling
    component reads the file): a state_dict, or a dict holding one under "state_dict" or "model".
    prefix_map: `(old, new)` rules; the first rule whose `old` starts a key rewrites that prefix; keys that
    match no rule are used unchanged. Returns the report; nothing is raised for missing, unexpected or
    mis-shaped keys, so the caller decides (e.g. `if not report.complete: raise ...`).
    """
    state_dict = _unwrap_state_dict(checkpoint)
    model_state = model.state_dict()
    report = WeightLoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _apply_prefix_map(key, prefix_map)
        if name not in model_state:
            report.unexpected.append(key)
        elif not isinstance(value, torch.Tensor) or value.shape != model_state[name].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            report.shape_mismatches.append((name, shape, tuple(model_state[name].shape)))
        else:
            to_load[name] = value
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    mismatched = {name for name, _, _ in report.shape_mismatches}
    report.missing = [name for name in model_state if name not in to_load and name not in mismatched]
    return report


def _unwrap_state_dict(checkpoint: Mapping[str, object]) -> Mapping[str, object]:
    for wrapper_key in ("state_dict", "model"):
        inner = checkpoint.get(wrapper_key)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def _apply_prefix_map(key: str, prefix_map: Sequence[tuple[str, str]]) -> str:
    for old, new in prefix_map:
        if key.startswith(old):
            return new + key[len(old) :]
    return key
