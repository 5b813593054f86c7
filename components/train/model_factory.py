"""Config sections -> network modules (the model code itself takes explicit constructor arguments)."""

from __future__ import annotations

from bifusion.components.config_schema import LossConfig, ModelConfig
from bifusion.model.criterion import ESAMCriterion
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.esam_model import ESAMSingleView
from bifusion.model.res16unet import Res16UNet34C

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


def build_single_view_model(model: ModelConfig) -> ESAMSingleView:
    d = model.decoder
    head = ESAMSingleViewHead(
        in_channels=model.backbone.planes[7], d_model=d.d_model, num_heads=d.num_heads, ffn_channels=d.ffn_channels,
        num_layers=d.num_layers, num_classes=num_instance_classes(model), num_semantic_classes=SCANNET200_SEMANTIC_CLASSES,
        dropout=d.dropout, min_query_fraction=d.min_query_fraction,
    )
    return ESAMSingleView(build_backbone(model), head, model.backbone.voxel_size_m)


def build_criterion(model: ModelConfig, loss: LossConfig) -> ESAMCriterion:
    return ESAMCriterion(
        num_classes=num_instance_classes(model), num_semantic_classes=SCANNET200_SEMANTIC_CLASSES,
        class_weight=loss.class_weight, bce_weight=loss.bce_weight, dice_weight=loss.dice_weight,
        semantic_weight=loss.semantic_weight, no_object_weight=loss.no_object_weight,
    )
