"""Training recipe of the BiFusion stages: the 3D recipe plus CLIP features, the fusion encoder and its loss.

A batch carries, beside the points, each frame's stored CLIP feature map (from `clip_precompute`, computed
online for any that are missing), its camera and the points' source pixels. The loss adds the
CLIP-consistency term on the schedule of `train.fusion.consistency`; the gate can be held at a fixed α
for the first steps, and its statistics go to MLflow every `gate_statistics_every` iterations.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from bifusion.components.clip_features.features import ClipFeatureSource
from bifusion.components.clip_features.weights import load_clip_tower
from bifusion.components.config_schema import Config
from bifusion.components.datasets.batching import FrameCollator, PointBatch
from bifusion.components.datasets.point_frames import PointFrame
from bifusion.components.evaluate.frame_evaluation import EvaluationReport, evaluate_single_view
from bifusion.components.storage import Storage
from bifusion.components.datasets.clip_batching import ClipBatch, ClipCollator
from bifusion.components.train.model_factory import build_bifusion_model, build_online_model
from bifusion.components.train.online_recipe import MultiViewRecipe, evaluate_clip_frames
from bifusion.components.train.recipes import TrainingRecipe
from bifusion.model.bifusion_encoder import BiFusionOutput, FrameCamera, FrameImageInputs, gate_statistics
from bifusion.model.clip_consistency import ClipConsistencyConfig, ClipConsistencyLoss
from bifusion.model.query_decoder import FrameDecoderOutput


@dataclass
class FusionBatch:
    """A `PointBatch` plus the image side: clip_features (B, 512, h, w); per frame the camera, the points in
    the camera pose's frame (un-augmented) and their source pixels (N_i, 2) or None."""

    points: PointBatch
    clip_features: Tensor
    cameras: list[FrameCamera]
    points_camera_frame: list[Tensor]
    source_pixels: list[Tensor | None]

    @property
    def frames(self) -> list[PointFrame]:
        return self.points.frames

    @property
    def superpoints(self) -> list[Tensor]:
        return self.points.superpoints

    def to(self, device: torch.device) -> "FusionBatch":
        return FusionBatch(
            self.points.to(device), self.clip_features.to(device), [camera_to(c, device) for c in self.cameras],
            [p.to(device) for p in self.points_camera_frame],
            [None if p is None else p.to(device) for p in self.source_pixels],
        )


def camera_to(camera: FrameCamera, device: torch.device) -> FrameCamera:
    depth = None if camera.depth_m is None else camera.depth_m.to(device)
    return FrameCamera(camera.intrinsics.to(device), camera.cam_to_world.to(device), camera.image_size, depth)


def frame_camera(frame: PointFrame) -> FrameCamera:
    """The camera of a frame's info record: intrinsics of the depth grid, pose camera -> stored frame."""
    camera = frame.camera
    missing = [key for key in ("cam2img", "pose", "image_size") if key not in camera]
    if missing:
        raise ValueError(f"frame {frame.name}: the info record lacks {missing}; re-run prep (BiFusion needs cameras)")
    intrinsics = torch.tensor(np.asarray(camera["cam2img"], dtype=np.float32)[:3, :3])
    pose = torch.tensor(np.asarray(camera["pose"], dtype=np.float32))
    width, height = camera["image_size"]
    return FrameCamera(intrinsics, pose, (int(width), int(height)))


class FusionCollator:
    """Collates frames and attaches their CLIP maps from a feature source (`features_for(img_path)`)."""

    def __init__(self, points: FrameCollator, features: Any) -> None:
        self.points = points
        self.features = features

    def __call__(self, frames: list[PointFrame]) -> FusionBatch:
        maps = [torch.from_numpy(np.asarray(self.features.features_for(frame.camera["img_path"]))) for frame in frames]
        return FusionBatch(
            self.points(frames),
            torch.stack(maps),
            [frame_camera(frame) for frame in frames],
            [torch.from_numpy(frame.xyz_stored) for frame in frames],
            [None if frame.source_pixels is None else torch.from_numpy(frame.source_pixels.astype(np.float32)) for frame in frames],
        )


def feature_source_for(config: Config, clip_features_uri: str | None) -> ClipFeatureSource:
    """The stored features of `clip_precompute` with the frozen tower as the fallback for missing ones."""
    if not clip_features_uri:
        raise ValueError("BiFusion stages need the CLIP feature store: pass clip_features_uri (the output of `bifusion clip-precompute`)")
    storage = Storage(config.storage, config.workdir)
    return ClipFeatureSource(
        storage, clip_features_uri, Path(config.workdir) / "cache" / "clip_features",
        online_encoder_factory=functools.partial(_cpu_tower, config.clip, storage),
    )


def _cpu_tower(clip: Any, storage: Storage) -> Any:
    return load_clip_tower(clip, storage, torch.device("cpu")).visual


def forward_fusion(model: nn.Module, batch: FusionBatch) -> list[FrameDecoderOutput]:
    """Decoder outputs of a BiFusion model on a fusion batch (for evaluation)."""
    return model(batch.points.xyz, batch.points.colors, batch.points.superpoints, batch.points_camera_frame,
                 batch.clip_features.float(), batch.cameras, batch.source_pixels)[0]


class FusionTraining:
    """What both BiFusion recipes add to their 3D recipe: CLIP features in the batch, the consistency loss on
    its schedule, the fixed-α warm-up and gate statistics (mixed in before the 3D recipe class)."""

    config: Config
    stage: str

    def __init__(self, config: Config, stage: str, feature_source: Any) -> None:
        super().__init__(config, stage)  # type: ignore[call-arg]
        self.feature_source = feature_source
        self.clip_features_uri = feature_source.feature_uri
        c = config.train.fusion.consistency
        self.consistency = ClipConsistencyLoss(ClipConsistencyConfig(
            weight=c.weight, start_step=c.start_step, ramp_steps=c.ramp_steps, temperature=c.temperature,
            temperature_floor=c.temperature_floor, learnable_temperature=c.learnable_temperature,
            clip_grad_ratio=c.clip_grad_ratio, max_points_per_frame=c.max_points_per_frame,
        ))
        self.iteration = 0
        self.pending_metrics: dict[str, float] = {}
        self.alpha_history: list[np.ndarray] = []

    def begin_iteration(self, model: nn.Module, iteration: int) -> None:
        fusion = self.config.train.fusion
        self.iteration = iteration
        held = fusion.fixed_alpha is not None and iteration < fusion.fixed_alpha_steps
        model.encoder.gate.fixed_alpha = fusion.fixed_alpha if held else None

    def add_consistency(self, losses: dict[str, Tensor], fusion: list[BiFusionOutput]) -> dict[str, Tensor]:
        """The CLIP-consistency term added to the 3D losses, and gate statistics on their schedule."""
        consistency = self.consistency([f.fused for f in fusion], [f.f2d_sampled for f in fusion],
                                       [f.valid for f in fusion], self.iteration)
        losses["clip_consistency"] = consistency.unweighted.detach()
        losses["clip_consistency_weight"] = torch.tensor(consistency.weight)
        losses["total"] = losses["total"] + consistency.loss
        every = self.config.train.fusion.gate_statistics_every
        if every and (self.iteration + 1) % every == 0:
            stats = gate_statistics(fusion)
            self.pending_metrics.update({f"gate/{k}": v for k, v in stats.items() if math.isfinite(v)})
            valid = torch.cat([f.valid for f in fusion])
            self.alpha_history.append(torch.cat([f.alpha[:, 0] for f in fusion])[valid].detach().float().cpu().numpy())
        return losses

    def pop_metrics(self) -> dict[str, float]:
        metrics, self.pending_metrics = self.pending_metrics, {}
        return metrics

    def initialise(self, model: nn.Module, checkpoint: Mapping[str, Any]):
        report = super().initialise(model, checkpoint)  # type: ignore[misc]
        if not any(name.startswith("backbone.") for name in report.loaded):
            raise ValueError(f"{self.stage}: the init checkpoint gave no backbone weights:\n{report.summary()}")
        return report


class FusionRecipe(FusionTraining, TrainingRecipe):
    """bifusion_sv: initialised from a 3D SV checkpoint (backbone and most of the head carry over)."""

    def collate(self) -> Callable[[list[Any]], Any]:
        return FusionCollator(FrameCollator(self.config.model.class_agnostic), self.feature_source)

    def build_model(self) -> nn.Module:
        return build_bifusion_model(self.config.model)

    def losses(self, model: nn.Module, criterion: nn.Module, batch: FusionBatch) -> dict[str, Tensor]:
        outputs, fusion = model(
            batch.points.xyz, batch.points.colors, batch.points.superpoints, batch.points_camera_frame,
            batch.clip_features.float(), batch.cameras, batch.source_pixels,
        )
        return self.add_consistency(criterion(outputs, batch.points.targets), fusion)

    def validate(self, model: nn.Module, batches: Any, device: torch.device) -> EvaluationReport:
        return evaluate_single_view(model, batches, self.config.evaluate, self.config.model.class_agnostic, device,
                                    forward=forward_fusion)


@dataclass
class FusionClipBatch:
    """A `ClipBatch` plus `images[clip][frame]`: each frame's CLIP inputs."""

    clips: ClipBatch
    images: list[list[FrameImageInputs]]

    def __getattr__(self, name: str) -> Any:  # xyz, colors, superpoints, frames, targets of the clips
        if name in ("clips", "images"):
            raise AttributeError(name)
        return getattr(self.clips, name)

    def to(self, device: torch.device) -> "FusionClipBatch":
        return FusionClipBatch(self.clips.to(device), [[image_to(i, device) for i in clip] for clip in self.images])


def image_to(image: FrameImageInputs, device: torch.device) -> FrameImageInputs:
    pixels = None if image.source_pixels is None else image.source_pixels.to(device)
    return FrameImageInputs(image.clip_features.to(device), camera_to(image.camera, device), image.points_camera_frame.to(device), pixels)


class FusionClipCollator:
    """`ClipCollator` plus every frame's CLIP map, camera and source pixels (MV points are in the world frame)."""

    def __init__(self, clips: ClipCollator, features: Any) -> None:
        self.clips = clips
        self.features = features

    def __call__(self, clips: list[Any]) -> FusionClipBatch:
        images = [[FrameImageInputs(
            torch.from_numpy(np.asarray(self.features.features_for(frame.camera["img_path"]))),
            frame_camera(frame),
            torch.from_numpy(frame.xyz_stored),
            None if frame.source_pixels is None else torch.from_numpy(frame.source_pixels.astype(np.float32)),
        ) for frame in clip.frames] for clip in clips]
        return FusionClipBatch(self.clips(clips), images)


def forward_fusion_clips(model: nn.Module, batch: FusionClipBatch) -> list[list[Any]]:
    return model.forward_clip(batch.clips.xyz, batch.clips.colors, batch.clips.superpoints, images=batch.images)


class FusionMultiViewRecipe(FusionTraining, MultiViewRecipe):
    """bifusion_mv: the online model with the fusion encoder, from bifusion_sv's checkpoint (memory, box and
    merge heads start new)."""

    def collate(self) -> Callable[[list[Any]], Any]:
        return FusionClipCollator(ClipCollator(self.config.model.class_agnostic), self.feature_source)

    def build_model(self) -> nn.Module:
        return build_online_model(self.config.model, self.config.evaluate, with_fusion=True)

    def losses(self, model: nn.Module, criterion: nn.Module, batch: FusionClipBatch) -> dict[str, Tensor]:
        outputs = forward_fusion_clips(model, batch)
        fusion = [frame.fusion for clip in outputs for frame in clip]
        return self.add_consistency(criterion(outputs, batch.clips.targets), fusion)

    def validate(self, model: nn.Module, batches: Any, device: torch.device) -> EvaluationReport:
        return evaluate_clip_frames(model, batches, self.config, device, forward=forward_fusion_clips)


class ImageFedOnlineModel:
    """A fusion `ESAMOnline` as the streaming API's frame model: `queue(frame)` hands over the next frame's
    image inputs (its CLIP map from the feature store, camera and source pixels) before the frame is streamed."""

    def __init__(self, model: nn.Module, features: Any) -> None:
        self.model = model
        self.features = features
        self._pending: FrameImageInputs | None = None

    def queue(self, frame: PointFrame) -> None:
        pixels = None if frame.source_pixels is None else torch.from_numpy(frame.source_pixels.astype(np.float32))
        self._pending = FrameImageInputs(
            torch.from_numpy(np.asarray(self.features.features_for(frame.camera["img_path"]))),
            frame_camera(frame), torch.from_numpy(frame.xyz_stored), pixels,
        )

    def reset_memory(self) -> None:
        self.model.reset_memory()

    def predict_frame(self, xyz: Tensor, colors: Tensor, superpoints: Tensor) -> Any:
        if self._pending is None:
            raise RuntimeError("ImageFedOnlineModel: queue(frame) before streaming each frame")
        image, self._pending = image_to(self._pending, xyz.device), None
        return self.model.predict_frame(xyz, colors, superpoints, image=image)
