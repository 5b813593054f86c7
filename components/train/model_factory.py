"""Config sections -> network modules (the model code itself takes explicit constructor arguments)."""

from __future__ import annotations

from bifusion.components.config_schema import EvaluateConfig, LossConfig, ModelConfig
from bifusion.model.bifusion_encoder import BiFusionEncoder
from bifusion.model.bifusion_model import BiFusionSingleView
from bifusion.model.box_head import BoxHead
from bifusion.model.criterion import ESAMCriterion
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.esam_model import ESAMSingleView
from bifusion.model.esam_online import ESAMOnline, FramePostprocess
from bifusion.model.merge_head import MergeCriterion, MergeHead
from bifusion.model.multilevel_memory import MultilevelMemory
from bifusion.model.online_criterion import OnlineCriterion
from bifusion.model.res16unet import Res16UNet34C
from bifusion.model.tinysa import TinySANeck

SCANNET200_THING_CLASSES = 198
SCANNET200_SEMANTIC_CLASSES = 200


def num_instance_classes(model: ModelConfig) -> int:
    return 1 if model.class_agnostic else SCANNET200_THING_CLASSES


def build_backbone(model: ModelConfig) -> Res16UNet34C:
    b = model.backbone
    return Res16UNet34C(
        in_channels=b.in_channels, planes=b.planes, layers=b.layers, stem_channels=b.stem_channels,
        conv1_kernel_size=b.conv1_kernel_size, bn_momentum=b.bn_momentum, block_bn_momentum=b.block_bn_momentum,
        backend=b.backend,
    )


def build_head(model: ModelConfig, in_channels: int) -> ESAMSingleViewHead:
    d = model.decoder
    return ESAMSingleViewHead(
        in_channels=in_channels, d_model=d.d_model, num_heads=d.num_heads, ffn_channels=d.ffn_channels,
        num_layers=d.num_layers, num_classes=num_instance_classes(model), num_semantic_classes=SCANNET200_SEMANTIC_CLASSES,
        dropout=d.dropout, min_query_fraction=d.min_query_fraction,
    )


def build_neck(model: ModelConfig) -> TinySANeck | None:
    """The TinySA neck on the backbone output when `model.tinysa.enabled`, else None."""
    t = model.tinysa
    if not t.enabled:
        return None
    return TinySANeck(
        channels=model.backbone.planes[7], num_heads=t.num_heads, num_layers=t.num_layers, radius=t.radius_m,
        max_neighbors=t.max_neighbours, ffn_channels=t.ffn_channels, center_cell_size=t.center_cell_size_m,
    )


def build_single_view_model(model: ModelConfig) -> ESAMSingleView:
    return ESAMSingleView(
        build_backbone(model), build_head(model, model.backbone.planes[7]), model.backbone.voxel_size_m, build_neck(model)
    )


def build_online_model(model: ModelConfig, evaluate: EvaluateConfig, with_fusion: bool = False) -> ESAMOnline:
    """ESAMOnline (with the BiFusion encoder for bifusion_mv); per-frame post-processing takes topk and score
    threshold from `model.online`, the mask threshold and minimum size from `evaluate`."""
    online, b = model.online, model.backbone
    memory = MultilevelMemory(b.planes[:4], b.backend, online.memory_box_scale) if online.memory else None
    postprocess = FramePostprocess(
        class_agnostic=model.class_agnostic, topk=online.frame_topk, score_threshold=online.frame_score_threshold,
        mask_threshold=evaluate.mask_threshold, min_points=evaluate.min_points,
    )
    head_channels = model.fusion.channels if with_fusion else b.planes[7]
    return ESAMOnline(
        build_backbone(model), build_head(model, head_channels), b.voxel_size_m, BoxHead(model.decoder.d_model),
        MergeHead(model.decoder.d_model, online.merge_hidden_channels, online.merge_channels), postprocess,
        memory=memory, neck=build_neck(model), encoder=build_fusion_encoder(model) if with_fusion else None,
    )


def build_fusion_encoder(model: ModelConfig) -> BiFusionEncoder:
    f = model.fusion
    return BiFusionEncoder(
        point_channels=model.backbone.planes[7], clip_channels=f.clip_channels, channels=f.channels,
        feature_map_size=tuple(f.feature_map_size), head_hidden_channels=f.head_hidden_channels, dropout=f.dropout,
        gate_hidden_channels=f.gate_hidden_channels, se_reduction=f.se_reduction,
        depth_tolerance_m=f.depth_tolerance_m, depth_tolerance_relative=f.depth_tolerance_relative,
    )


def build_bifusion_model(model: ModelConfig) -> BiFusionSingleView:
    encoder = build_fusion_encoder(model)
    return BiFusionSingleView(build_backbone(model), encoder, build_head(model, model.fusion.channels), model.backbone.voxel_size_m)


def build_criterion(model: ModelConfig, loss: LossConfig) -> ESAMCriterion:
    return ESAMCriterion(
        num_classes=num_instance_classes(model), num_semantic_classes=SCANNET200_SEMANTIC_CLASSES,
        class_weight=loss.class_weight, bce_weight=loss.bce_weight, dice_weight=loss.dice_weight,
        semantic_weight=loss.semantic_weight, no_object_weight=loss.no_object_weight,
    )


def build_online_criterion(model: ModelConfig, loss: LossConfig) -> OnlineCriterion:
    online = model.online
    merge = MergeCriterion(weight=online.merge_loss_weight, temperature=online.merge_temperature)
    return OnlineCriterion(build_criterion(model, loss), merge, box_weight=online.box_loss_weight)
