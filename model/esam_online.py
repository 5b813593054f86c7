"""ESAM's online multi-view network (`ScanNet200MixFormer3D_Online`, esam.md §1.3-1.6): the single-view model
plus a multilevel memory between encoder and decoder, a box head and a merge head.

Frames of a scene (or training clip) arrive in order, all in one world frame; the memory carries features
from earlier frames into the current one. Module names match `ESAMSingleView` (`backbone`, `neck`, `head`),
so a 3d_sv / 3dtsa_sv checkpoint loads with only `memory`, `box_head` and `merge_head` missing.

Two ways in:
* training: `forward_clip` runs a batch of clips frame step by frame step (clip b is batch index b of every
  sparse tensor, so the clips share one backbone pass per step but never each other's memory);
* online inference: `reset_memory()` at the start of a scene, then `predict_frame(...)` per frame gives the
  post-processed `FrameInstances` that `online_merge.OnlineInstanceMerger.add_frame` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bifusion.model.bifusion_encoder import BiFusionEncoder, BiFusionOutput, FrameImageInputs
from bifusion.model.box_head import BoxHead
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.merge_head import MergeHead
from bifusion.model.multilevel_memory import MultilevelMemory
from bifusion.model.online_merge import FrameInstances
from bifusion.model.postprocess import predict_instances
from bifusion.model.query_decoder import FrameDecoderOutput
from bifusion.model.res16unet import Res16UNet34C
from bifusion.model.sparse import slice_to_points, voxelize
from bifusion.model.superpoint_pool import superpoint_mean
from bifusion.model.tinysa import TinySANeck


@dataclass(frozen=True)
class FramePostprocess:
    """`predict_instances` settings of `predict_frame` (ESAM MV: topk 20, score threshold 0.25)."""

    class_agnostic: bool
    topk: int
    score_threshold: float
    mask_threshold: float
    min_points: int


@dataclass
class OnlineFrameOutput:
    """One frame of the online model: the decoder output plus, per query, boxes (Q, 6) `(centre, size)` in the
    world frame of the input xyz and L2-normalised merge features (Q, D); `fusion` when the model fuses CLIP."""

    decoder: FrameDecoderOutput
    boxes: Tensor
    merge_features: Tensor
    fusion: BiFusionOutput | None = None


class ESAMOnline(nn.Module):
    """Online multi-view instance segmentation (module docstring).

    memory: None runs every frame on its own (the SV network with box and merge heads); neck: optional TinySA.
    Inputs per frame: xyz (N, 3) metres in the scene's world frame (augmented in training), colors (N, 3)
    normalised rgb, superpoints (N,) long contiguous from 0.
    """

    def __init__(
        self,
        backbone: Res16UNet34C,
        head: ESAMSingleViewHead,
        voxel_size: float,
        box_head: BoxHead,
        merge_head: MergeHead,
        postprocess: FramePostprocess,
        memory: MultilevelMemory | None = None,
        neck: TinySANeck | None = None,
        encoder: BiFusionEncoder | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.encoder = encoder  # bifusion_mv: CLIP fused per point before the head (the name bifusion_sv's checkpoint uses)
        self.head = head
        self.memory = memory
        self.box_head = box_head
        self.merge_head = merge_head
        self.voxel_size = voxel_size
        self.postprocess = postprocess

    def reset_memory(self) -> None:
        """Forget the scene so far; call before the first frame of every scene or clip."""
        if self.memory is not None:
            self.memory.reset()

    def forward_step(
        self, xyz: Sequence[Tensor], colors: Sequence[Tensor], superpoints: Sequence[Tensor],
        batch_indices: Sequence[int], query_fraction: float | None = None,
        images: Sequence[FrameImageInputs] | None = None,
    ) -> list[OnlineFrameOutput]:
        """One time step: the current frame of each clip in `batch_indices` (distinct memory slots), through the
        memory (updated) and every head. Lists are aligned; returns one output per frame. `images`: each
        frame's CLIP inputs, required when the model has a fusion encoder."""
        if not len(xyz) == len(colors) == len(superpoints) == len(batch_indices) or not xyz:
            raise ValueError(
                f"ESAMOnline.forward_step: expected aligned non-empty lists, got {len(xyz)} xyz, {len(colors)} "
                f"colors, {len(superpoints)} superpoints, {len(batch_indices)} batch indices"
            )
        if len(set(batch_indices)) != len(batch_indices) or min(batch_indices) < 0:
            raise ValueError(
                f"ESAMOnline.forward_step: batch_indices must be distinct memory slots >= 0, got {list(batch_indices)}"
            )
        counts = [len(points) for points in xyz]
        device = xyz[0].device
        batch = torch.cat([torch.full((n,), b, device=device, dtype=torch.long) for b, n in zip(batch_indices, counts)])
        voxels, point_to_voxel = voxelize(torch.cat(list(xyz)), batch, torch.cat(list(colors)), self.voxel_size)
        encoded = self.backbone.encode(voxels)
        if self.memory is not None:
            levels = self.memory([encoded.level2, encoded.level4, encoded.level8, encoded.level16])
            encoded = encoded._replace(**dict(zip(("level2", "level4", "level8", "level16"), levels)))
        features = list(slice_to_points(self.backbone.decode(encoded), point_to_voxel).split(counts))
        if self.neck is not None:
            features = [self.neck(points, frame_features) for points, frame_features in zip(xyz, features)]
        fused: list[BiFusionOutput | None] = [None] * len(features)
        if self.encoder is not None:
            if images is None or len(images) != len(features):
                raise ValueError("ESAMOnline.forward_step: a fusion model needs one FrameImageInputs per frame (images=...)")
            fused = self.encoder(
                features, [i.points_camera_frame for i in images], torch.stack([i.clip_features for i in images]).float(),
                [i.camera for i in images], [i.source_pixels for i in images],
            )
            features = [f.fused for f in fused]
        decoded = self.head(features, list(xyz), list(superpoints), query_fraction)
        outputs = []
        for points, ids, output, fusion in zip(xyz, superpoints, decoded, fused):
            centers = superpoint_mean(points, ids, int(ids.max()) + 1 if ids.numel() else 0)
            boxes = self.box_head(output.queries, centers[output.query_superpoints])
            outputs.append(OnlineFrameOutput(output, boxes, self.merge_head(output.queries), fusion))
        return outputs

    def forward_clip(
        self, xyz: Sequence[Sequence[Tensor]], colors: Sequence[Sequence[Tensor]],
        superpoints: Sequence[Sequence[Tensor]], query_fraction: float | None = None,
        images: Sequence[Sequence[FrameImageInputs]] | None = None,
    ) -> list[list[OnlineFrameOutput]]:
        """Training: `xyz[clip][frame]` etc., frames of each clip in stream order (clips may differ in length).

        Resets the memory, runs step t on frame t of every clip that has one, resets again (no graph kept).
        Returns `outputs[clip][frame]`.
        """
        if not len(xyz) == len(colors) == len(superpoints) or not xyz:
            raise ValueError(
                f"forward_clip: expected the same number (>= 1) of clips in xyz, colors and superpoints, got "
                f"{len(xyz)}, {len(colors)}, {len(superpoints)}"
            )
        outputs: list[list[OnlineFrameOutput]] = [[] for _ in xyz]
        self.reset_memory()
        for t in range(max(len(clip) for clip in xyz)):
            clips = [b for b, clip in enumerate(xyz) if t < len(clip)]
            step_outputs = self.forward_step(
                [xyz[b][t] for b in clips], [colors[b][t] for b in clips], [superpoints[b][t] for b in clips],
                clips, query_fraction, None if images is None else [images[b][t] for b in clips],
            )
            for b, output in zip(clips, step_outputs):
                outputs[b].append(output)
        self.reset_memory()
        return outputs

    def forward(
        self, xyz: Sequence[Sequence[Tensor]], colors: Sequence[Sequence[Tensor]],
        superpoints: Sequence[Sequence[Tensor]], query_fraction: float | None = None,
        images: Sequence[Sequence[FrameImageInputs]] | None = None,
    ) -> list[list[OnlineFrameOutput]]:
        """`forward_clip` (the call DDP wraps in training)."""
        return self.forward_clip(xyz, colors, superpoints, query_fraction, images)

    @torch.no_grad()
    def predict_frame(
        self, xyz: Tensor, colors: Tensor, superpoints: Tensor, image: FrameImageInputs | None = None
    ) -> FrameInstances:
        """Online inference on the next frame of the current scene (memory updated; every superpoint a query).

        xyz (N, 3) world frame, colors (N, 3) normalised, superpoints (N,) -> instances with masks (K, N),
        scores, labels, merge features, boxes and semantic logits of their queries (`self.postprocess`).
        Call in eval mode (BatchNorm statistics); `reset_memory()` first for a new scene. `image`: the frame's
        CLIP inputs, required when the model has a fusion encoder.
        """
        images = None if image is None else [image]
        output = self.forward_step([xyz], [colors], [superpoints], [0], query_fraction=1.0, images=images)[0]
        final = output.decoder.final
        settings = self.postprocess
        predicted = predict_instances(
            final.class_logits.float(), final.mask_logits.float(), settings.class_agnostic, topk=settings.topk,
            score_threshold=settings.score_threshold, mask_threshold=settings.mask_threshold,
            min_points=settings.min_points,
        )
        queries = predicted.query_indices
        return FrameInstances(
            masks=predicted.masks, scores=predicted.scores, labels=predicted.labels,
            merge_features=output.merge_features[queries], boxes=output.boxes[queries],
            semantic_logits=output.decoder.semantic_logits[queries],
        )
