"""What differs between training stages: the data, the network, the loss, validation and initialisation.

The training loop (`stage.py`) is the same for every stage; a recipe supplies the parts that are not. A new
stage kind is a new recipe class plus an entry in `recipe_for`, with no change to the loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bifusion.components.config_schema import Config
from bifusion.components.datasets.batching import FrameCollator, PointBatch
from bifusion.components.datasets.point_frames import SingleViewDataset
from bifusion.components.datasets.set_files import materialise_set
from bifusion.components.storage import Storage
from bifusion.components.evaluate.frame_evaluation import EvaluationReport, evaluate_single_view
from bifusion.components.train.model_factory import build_criterion, build_single_view_model
from bifusion.components.train.stages import TRAIN_STAGES
from bifusion.model.res16unet import WeightLoadReport, load_backbone_weights
from bifusion.model.tinysa import is_positional_embedding_parameter


class TrainingRecipe:
    """Single-view 3D training (stage 3d_sv); other recipes override what differs."""

    def __init__(self, config: Config, stage: str) -> None:
        self.config = config
        self.stage = stage
        self.clip_features_uri: str | None = None  # BiFusion stages: the CLIP feature store they read

    def materialise(self, storage: Storage, data_uri: str, cache: Path) -> Path:
        """A local folder holding the prepared set (remote sets are copied into `cache` once)."""
        return materialise_set(storage, data_uri, cache)

    def datasets(self, set_dir: Path) -> tuple[Dataset, Dataset]:
        """(train, validation) datasets over a local copy of the prepared set."""
        train, voxel = self.config.train, self.config.model.backbone.voxel_size_m
        return (SingleViewDataset(set_dir, train.train_split, train.augment, voxel, train.seed),
                SingleViewDataset(set_dir, train.val_split, None, voxel, train.seed))

    def collate(self) -> Callable[[list[Any]], Any]:
        return FrameCollator(self.config.model.class_agnostic)

    def build_model(self) -> nn.Module:
        return build_single_view_model(self.config.model)

    def build_criterion(self) -> nn.Module:
        return build_criterion(self.config.model, self.config.train.loss)

    def begin_iteration(self, model: nn.Module, iteration: int) -> None:
        """Called before every step with the unwrapped model (schedules that depend on the step)."""

    def pop_metrics(self) -> dict[str, float]:
        """Stage-specific metrics gathered since the last call (logged by the loop on the main process)."""
        return {}

    def losses(self, model: nn.Module, criterion: nn.Module, batch: PointBatch) -> dict[str, Tensor]:
        """Loss terms of one batch; "total" is the one optimised."""
        outputs = model(batch.xyz, batch.colors, batch.superpoints)
        return criterion(outputs, batch.targets)

    def batch_to(self, batch: Any, device: torch.device) -> Any:
        return batch.to(device)

    def validate(self, model: nn.Module, batches: Any, device: torch.device) -> EvaluationReport:
        return evaluate_single_view(model, batches, self.config.evaluate, self.config.model.class_agnostic, device)

    def initialise(self, model: nn.Module, checkpoint: Mapping[str, Any]) -> WeightLoadReport:
        """Partial loading from an earlier stage's checkpoint (whole model, same key names) or an external
        backbone checkpoint (Mask3D/ESAM/OneFormer3D, through `train.init_prefix_map`)."""
        if "stage" in checkpoint:  # one of ours: every module whose name and shape agree is carried over
            return load_backbone_weights(model, checkpoint, prefix_map=())
        return load_backbone_weights(model.backbone, checkpoint, self.config.train.init_prefix_map)

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW groups: every parameter decays except TinySA's positional embeddings (weight decay 0)."""
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                (no_decay if is_positional_embedding_parameter(name) else decay).append(parameter)
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups


def recipe_for(config: Config, stage: str, clip_features_uri: str | None = None) -> TrainingRecipe:
    """The recipe of a training stage name (see `stages.TRAIN_STAGES`)."""
    if stage not in TRAIN_STAGES:
        raise ValueError(f"unknown training stage '{stage}'; known: {', '.join(TRAIN_STAGES)}")
    if stage.startswith("3dtsa_") and not config.model.tinysa.enabled:
        raise ValueError(f"stage '{stage}' trains the TinySA neck: set model.tinysa.enabled=true (configs/experiments/{stage}.yaml does)")
    if stage in ("3d_sv", "3dtsa_sv"):
        return TrainingRecipe(config, stage)
    if stage in ("3d_mv", "3dtsa_mv"):
        from bifusion.components.train.online_recipe import MultiViewRecipe

        return MultiViewRecipe(config, stage)
    if stage in ("bifusion_sv", "bifusion_mv"):
        from bifusion.components.train.fusion_recipe import FusionMultiViewRecipe, FusionRecipe, feature_source_for

        recipe_class = FusionRecipe if stage == "bifusion_sv" else FusionMultiViewRecipe
        return recipe_class(config, stage, feature_source_for(config, clip_features_uri))
    raise NotImplementedError(f"training stage '{stage}' has no recipe yet")
