"""CLIP-consistency loss: keep BiFusion's fused point features organised like the CLIP features they saw.

Point level, on valid points only (points with an image feature). The CLIP side is the 256-d reduced CLIP
map sampled at the point, before Head2D (`BiFusionOutput.f2d_sampled`): the fused feature is 256-d and CLIP's
embedding is 512-d, and this is the closest 256-d view of CLIP (one linear map of the CLIP embedding).

Per frame, on up to `max_points_per_frame` valid points (a random subset when there are more), with cosine
similarities scaled by a temperature tau:

    target_i = softmax_j(cos(c_i, c_j) / tau)        (CLIP side vs CLIP side, no gradient)
    pred_i   = softmax_j(cos(f_i, c_j) / tau)        (fused vs CLIP side)
    loss     = mean_i KL(target_i || pred_i)

so f_i must relate to all sampled CLIP features the way c_i does: a contrastive loss whose targets are
soft. Hard one-hot targets (InfoNCE) would treat neighbouring points as negatives although bilinear
sampling of a 16 px patch grid gives them almost the same CLIP feature. The loss is 0 when f_i and c_i point
the same way, is averaged over frames with at least two valid points, and is 0 (never NaN) without them.

tau: fixed by default; learnable as tau = floor + softplus(offset), never below `temperature_floor`
(sharpening the softmaxes lowers the loss, so a free temperature would run to 0). A learnable temperature is
a parameter of this module: the trainer must optimise it.

Gradient into the CLIP side: c = ratio * c + (1 - ratio) * c.detach() in `pred` (0: fully detached, the loss
only moves the fused features; 1: full gradient into Head2D's input, the reducer and unfrozen CLIP blocks).

Weight: 0 for the first `start_step` steps, a linear ramp over `ramp_steps`, then `weight`, so training starts
as the 3D baseline does. Presets: "simple" (0.02) and "full" (0.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ClipConsistencyConfig:
    """Loss weight schedule, temperature and gradient ratio (see the module docstring)."""

    weight: float
    start_step: int = 1000
    ramp_steps: int = 2000
    temperature: float = 0.1
    temperature_floor: float = 0.05
    learnable_temperature: bool = False
    clip_grad_ratio: float = 0.0
    max_points_per_frame: int = 1024

    def __post_init__(self) -> None:
        if self.weight < 0 or self.start_step < 0 or self.ramp_steps < 0:
            raise ValueError(
                "clip consistency: weight, start_step and ramp_steps must be >= 0, "
                f"got {self.weight}, {self.start_step}, {self.ramp_steps}"
            )
        if not 0 < self.temperature_floor <= self.temperature:
            raise ValueError(
                "clip consistency: expected 0 < temperature_floor <= temperature, "
                f"got {self.temperature_floor}, {self.temperature}"
            )
        if self.learnable_temperature and self.temperature == self.temperature_floor:
            raise ValueError(f"clip consistency: a learnable temperature must start above its floor {self.temperature_floor}")
        if not 0.0 <= self.clip_grad_ratio <= 1.0:
            raise ValueError(f"clip consistency: clip_grad_ratio must be in [0, 1], got {self.clip_grad_ratio}")
        if self.max_points_per_frame < 2:
            raise ValueError(f"clip consistency: max_points_per_frame must be >= 2, got {self.max_points_per_frame}")

    def weight_at(self, step: int) -> float:
        """0 before start_step, linear from 0 at start_step to `weight` at start_step + ramp_steps, then `weight`."""
        if step < self.start_step:
            return 0.0
        if step >= self.start_step + self.ramp_steps:
            return self.weight
        return self.weight * (step - self.start_step) / self.ramp_steps


CLIP_CONSISTENCY_PRESETS = {
    "simple": ClipConsistencyConfig(weight=0.02),
    "full": ClipConsistencyConfig(weight=0.1),
}


@dataclass
class ClipConsistencyResult:
    """loss: weight_at(step) * unweighted (what the trainer adds to the total); the rest is for logging."""

    loss: Tensor
    unweighted: Tensor
    weight: float
    temperature: float
    num_points: int


class ClipConsistencyLoss(nn.Module):
    """Soft-target contrastive loss between fused point features and their CLIP side, on valid points."""

    def __init__(self, config: ClipConsistencyConfig) -> None:
        super().__init__()
        self.config = config
        if config.learnable_temperature:
            offset = math.log(math.expm1(config.temperature - config.temperature_floor))
            self.temperature_offset = nn.Parameter(torch.tensor(offset))
        else:
            self.register_buffer("fixed_temperature", torch.tensor(config.temperature))

    @property
    def temperature(self) -> Tensor:
        if self.config.learnable_temperature:
            return self.config.temperature_floor + F.softplus(self.temperature_offset)
        return self.fixed_temperature

    def forward(
        self,
        fused: Sequence[Tensor],
        clip_side: Sequence[Tensor],
        valid: Sequence[Tensor],
        step: int,
        generator: torch.Generator | None = None,
    ) -> ClipConsistencyResult:
        """Per frame: fused (N_i, C), clip_side (N_i, C) (`BiFusionOutput.f2d_sampled`), valid (N_i,) bool.

        generator: draws the point subset of frames with more than max_points_per_frame valid points.
        """
        temperature = self.temperature
        frame_losses = []
        num_points = 0
        for frame_fused, frame_clip, frame_valid in zip(fused, clip_side, valid, strict=True):
            chosen = frame_valid.nonzero()[:, 0]
            if len(chosen) > self.config.max_points_per_frame:
                draw = torch.randperm(len(chosen), generator=generator)[: self.config.max_points_per_frame]
                chosen = chosen[draw.to(chosen.device)]
            if len(chosen) < 2:
                continue
            frame_losses.append(self._frame_loss(frame_fused[chosen], frame_clip[chosen], temperature))
            num_points += len(chosen)
        weight = self.config.weight_at(step)
        if frame_losses:
            unweighted = torch.stack(frame_losses).mean()
        else:
            unweighted = temperature.new_zeros(())
        return ClipConsistencyResult(
            loss=weight * unweighted,
            unweighted=unweighted,
            weight=weight,
            temperature=float(temperature.detach()),
            num_points=num_points,
        )

    def _frame_loss(self, fused: Tensor, clip: Tensor, temperature: Tensor) -> Tensor:
        ratio = self.config.clip_grad_ratio
        clip_target = F.normalize(clip.detach(), dim=1)
        if ratio == 0.0:
            clip_pred = clip_target
        else:
            clip_pred = F.normalize(ratio * clip + (1.0 - ratio) * clip.detach(), dim=1)
        target = torch.softmax(clip_target @ clip_target.T / temperature.detach(), dim=1)
        log_pred = torch.log_softmax(F.normalize(fused, dim=1) @ clip_pred.T / temperature, dim=1)
        return F.kl_div(log_pred, target, reduction="batchmean")
