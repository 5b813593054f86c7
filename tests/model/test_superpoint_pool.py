"""Geometry-aware superpoint pooling against a per-superpoint loop written from ESAM's description."""

from __future__ import annotations

import torch

from bifusion.model.superpoint_pool import GeometryAwareSuperpointPooling, normalize_xyz_within_superpoints


def test_xyz_is_centred_and_divided_by_the_largest_extent_plus_one_centimetre() -> None:
    xyz = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    superpoint_ids = torch.tensor([0, 0, 0, 1])

    normalized, centers = normalize_xyz_within_superpoints(xyz, superpoint_ids, 2)

    center = torch.tensor([1.0, 1.0 / 3.0, 0.0])
    torch.testing.assert_close(centers, torch.stack([center, torch.tensor([5.0, 5.0, 5.0])]))
    torch.testing.assert_close(normalized[:3], (xyz[:3] - center) / 2.01)
    torch.testing.assert_close(normalized[3], torch.zeros(3))


def reference_pooling(
    pooling: GeometryAwareSuperpointPooling, features: torch.Tensor, xyz: torch.Tensor, superpoint_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, weights = [], torch.zeros(len(xyz))
    for superpoint in range(int(superpoint_ids.max()) + 1):
        members = torch.nonzero(superpoint_ids == superpoint).squeeze(1)
        points = xyz[members]
        extent = (points.max(dim=0).values - points.min(dim=0).values).max()
        embedding = pooling.point_geometry((points - points.mean(dim=0)) / (extent + 0.01))
        code = embedding.max(dim=0).values
        weight = 2.0 * torch.sigmoid(pooling.point_weight(torch.cat([embedding, code.expand_as(embedding)], 1)))
        weights[members] = weight.squeeze(1)
        pooled.append((features[members] * weight).mean(dim=0) + code)
    return torch.stack(pooled), weights


def test_pooling_matches_a_loop_over_superpoints() -> None:
    torch.manual_seed(0)
    pooling = GeometryAwareSuperpointPooling(channels=8)
    superpoint_ids = torch.tensor([2, 0, 1, 1, 0, 2, 2, 3, 0, 1, 3, 2, 0, 1])
    features = torch.randn(len(superpoint_ids), 8)
    xyz = torch.randn(len(superpoint_ids), 3) * 3.0

    result = pooling(features, xyz, superpoint_ids, 4)
    expected_features, expected_weights = reference_pooling(pooling, features, xyz, superpoint_ids)

    torch.testing.assert_close(result.features, expected_features)
    torch.testing.assert_close(result.point_weights, expected_weights)
    assert bool(((result.point_weights > 0) & (result.point_weights < 2)).all())
    for superpoint in range(4):
        torch.testing.assert_close(result.centers[superpoint], xyz[superpoint_ids == superpoint].mean(dim=0))


def test_pooled_features_do_not_depend_on_where_a_superpoint_lies() -> None:
    torch.manual_seed(1)
    pooling = GeometryAwareSuperpointPooling(channels=8)
    superpoint_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    features = torch.randn(7, 8)
    xyz = torch.randn(7, 3)
    moved = xyz.clone()
    moved[:4] += torch.tensor([10.0, -4.0, 2.0])

    original = pooling(features, xyz, superpoint_ids, 2)
    translated = pooling(features, moved, superpoint_ids, 2)

    torch.testing.assert_close(original.features, translated.features)
    torch.testing.assert_close(original.point_weights, translated.point_weights)


def test_every_pooling_parameter_gets_a_gradient() -> None:
    torch.manual_seed(2)
    pooling = GeometryAwareSuperpointPooling(channels=8)
    superpoint_ids = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    features = torch.randn(7, 8, requires_grad=True)

    result = pooling(features, torch.randn(7, 3), superpoint_ids, 3)
    (result.features.square().sum() + result.point_weights.sum()).backward()

    assert features.grad is not None and bool(features.grad.abs().sum() > 0)
    for name, parameter in pooling.named_parameters():
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all()), name
