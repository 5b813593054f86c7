"""Training recipe of the multi-view online stages (3d_mv, 3dtsa_mv): clips of consecutive frames through
`ESAMOnline` (memory, box and merge heads) and `OnlineCriterion`.

`train.batch_size` counts clips (ESAM: 4 clips of 8 frames); `model.online.clip_frames` sets the clip length.
Validation runs each validation clip through the memory in stream order and scores every frame on its own
(per-frame AP, as the single-view stage); whole-scene evaluation with online merging is `bifusion evaluate`'s.
Initialisation from a single-view checkpoint must fit: only the modules the SV model lacks may be missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bifusion.components.config_schema import Config
from bifusion.components.datasets.clip_batching import ClipBatch, ClipCollator
from bifusion.components.datasets.multi_view import MultiViewClipDataset
from bifusion.components.evaluate.scene_evaluation import materialise_scene_sets
from bifusion.components.storage import Storage
from bifusion.components.evaluate.frame_evaluation import EvaluationReport, FrameScorer
from bifusion.components.train.model_factory import build_online_criterion, build_online_model
from bifusion.components.train.recipes import TrainingRecipe
from bifusion.model.esam_online import ESAMOnline
from bifusion.model.postprocess import predict_instances, predict_point_semantics
from bifusion.model.res16unet import WeightLoadReport

# Modules of ESAMOnline that a single-view (3d_sv, 3dtsa_sv) or 3D-only checkpoint does not have.
MODULES_NEW_IN_ONLINE = ("memory.", "box_head.", "merge_head.", "neck.")


class MultiViewRecipe(TrainingRecipe):
    """Stages 3d_mv and 3dtsa_mv (the TinySA neck comes from `model.tinysa.enabled`)."""

    def materialise(self, storage: Storage, data_uri: str, cache: Path) -> Path:
        """The MV set with its scene/ sibling (clips take amodal box targets from the scene meshes)."""
        return materialise_scene_sets(storage, data_uri, cache)

    def datasets(self, set_dir: Path) -> tuple[Dataset, Dataset]:
        train, voxel = self.config.train, self.config.model.backbone.voxel_size_m
        frames = self.config.model.online.clip_frames
        return (MultiViewClipDataset(set_dir, train.train_split, frames, train.augment, voxel, train.seed),
                MultiViewClipDataset(set_dir, train.val_split, frames, None, voxel, train.seed))

    def collate(self) -> Callable[[list[Any]], Any]:
        return ClipCollator(self.config.model.class_agnostic)

    def build_model(self) -> nn.Module:
        return build_online_model(self.config.model, self.config.evaluate)

    def build_criterion(self) -> nn.Module:
        return build_online_criterion(self.config.model, self.config.train.loss)

    def losses(self, model: nn.Module, criterion: nn.Module, batch: ClipBatch) -> dict[str, Tensor]:
        outputs = model(batch.xyz, batch.colors, batch.superpoints)
        return criterion(outputs, batch.targets)

    def validate(self, model: nn.Module, batches: Any, device: torch.device) -> EvaluationReport:
        return evaluate_clip_frames(model, batches, self.config, device)

    def initialise(self, model: nn.Module, checkpoint: Mapping[str, Any]) -> WeightLoadReport:
        """As the single-view recipe, but a checkpoint of ours must fit: no shape mismatch, and only the
        modules new in the online model (`MODULES_NEW_IN_ONLINE`) may be missing."""
        report = super().initialise(model, checkpoint)
        if "stage" not in checkpoint:
            return report
        missing = [name for name in report.missing if not name.startswith(MODULES_NEW_IN_ONLINE)]
        if report.shape_mismatches or missing:
            raise ValueError(
                f"init checkpoint of stage '{checkpoint['stage']}' does not fit the {self.stage} model (same "
                f"model.backbone / model.decoder widths needed; only {', '.join(MODULES_NEW_IN_ONLINE)} may be "
                f"missing, got {len(missing)} other missing tensors):\n{report.summary()}"
            )
        return report


def forward_clips(model: ESAMOnline, batch: ClipBatch) -> list[list[Any]]:
    """The online model over a batch of clips (BiFusion passes its own, with the image inputs)."""
    return model.forward_clip(batch.xyz, batch.colors, batch.superpoints)


@torch.no_grad()
def evaluate_clip_frames(
    model: ESAMOnline, batches: Iterable[Any], config: Config, device: torch.device,
    forward: Callable[[ESAMOnline, Any], list[list[Any]]] = forward_clips,
) -> EvaluationReport:
    """Every frame of every clip, predicted with the memory of the clip's earlier frames, scored per frame."""
    was_training = model.training
    model.eval()
    evaluate, class_agnostic = config.evaluate, config.model.class_agnostic
    scorer = FrameScorer(evaluate, class_agnostic, None)
    started = time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        outputs = forward(model, batch)
        for frames, clip_outputs, clip_superpoints in zip(batch.frames, outputs, batch.superpoints):
            for frame, output, superpoints in zip(frames, clip_outputs, clip_superpoints):
                final = output.decoder.final
                predicted = predict_instances(
                    final.class_logits.float(), final.mask_logits.float(), class_agnostic, topk=evaluate.topk,
                    score_threshold=evaluate.score_threshold, mask_threshold=evaluate.mask_threshold,
                    min_points=evaluate.min_points,
                )
                semantic = predict_point_semantics(
                    output.decoder.semantic_logits, output.decoder.query_superpoints, superpoints,
                    int(superpoints.max()) + 1,
                )
                scorer.add_frame(frame.name, frame.instance_raw, frame.semantic_raw, predicted, semantic.cpu().numpy())
    model.train(was_training)
    return scorer.results(time.perf_counter() - started)
