"""The single-view head end to end: packing, query sampling, and a tiny overfit through criterion + post-processing."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from bifusion.model.criterion import ESAMCriterion, make_frame_targets
from bifusion.model.esam_head import ESAMSingleViewHead, sample_query_superpoints
from bifusion.model.postprocess import predict_instances, predict_point_semantics

TINY = dict(in_channels=8, d_model=32, num_heads=4, ffn_channels=64, num_layers=3)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors: with several threads, synchronisation costs more than the arithmetic (5-10x on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_frame(num_points: int, num_superpoints: int, generator: torch.Generator):
    superpoint_ids = torch.randperm(num_points, generator=generator) % num_superpoints
    features = torch.randn(num_points, 8, generator=generator)
    return features, torch.randn(num_points, 3, generator=generator), superpoint_ids


def test_frames_decoded_together_equal_frames_decoded_alone() -> None:
    torch.manual_seed(0)
    head = ESAMSingleViewHead(**TINY, num_classes=2, num_semantic_classes=6).eval()
    generator = torch.Generator().manual_seed(0)
    frames = [random_frame(n, s, generator) for n, s in [(60, 5), (90, 11), (40, 3)]]

    with torch.no_grad():
        together = head(*[list(column) for column in zip(*frames)])
        alone = [head([f], [x], [s])[0] for f, x, s in frames]

    for joint, single, (_, _, superpoint_ids) in zip(together, alone, frames):
        assert torch.equal(joint.query_superpoints, torch.arange(int(superpoint_ids.max()) + 1))
        for joint_level, single_level in zip(joint.levels, single.levels):
            torch.testing.assert_close(joint_level.mask_logits, single_level.mask_logits)
            torch.testing.assert_close(joint_level.class_logits, single_level.class_logits)
        torch.testing.assert_close(joint.semantic_logits, single.semantic_logits)


def test_training_uses_a_random_half_or_more_of_the_superpoints_as_queries() -> None:
    torch.manual_seed(0)
    head = ESAMSingleViewHead(**TINY).train()
    generator = torch.Generator().manual_seed(1)
    features, xyz, superpoint_ids = random_frame(100, 20, generator)

    counts = {len(head([features], [xyz], [superpoint_ids])[0].query_superpoints) for _ in range(12)}
    fixed = head([features], [xyz], [superpoint_ids], query_fraction=0.25)[0].query_superpoints

    assert counts <= set(range(10, 21)) and len(counts) > 1
    assert len(fixed) == 5 and len(set(fixed.tolist())) == 5
    assert len(sample_query_superpoints(7, 0.5, torch.device("cpu"))) == math.ceil(3.5)


def overfit_frame(seed: int, num_instances: int):
    """Instances are spatial blobs of 3 superpoints x 50 points plus a 3-superpoint background; point features are
    the one-hot of the instance (background last) plus noise, so the head can only succeed through the
    superpoint/point structure the losses supervise."""
    generator = torch.Generator().manual_seed(seed)
    instance_ids, superpoint_ids, xyz = [], [], []
    for instance in range(num_instances + 1):
        center = torch.rand(3, generator=generator) * 4.0
        for part in range(3):
            instance_ids += [instance if instance < num_instances else -1] * 50
            superpoint_ids += [3 * instance + part] * 50
            xyz.append(center + torch.tensor([0.3 * part, 0.0, 0.0]) + 0.1 * torch.rand(50, 3, generator=generator))
    instance_ids = torch.tensor(instance_ids)
    one_hot = torch.nn.functional.one_hot(torch.where(instance_ids < 0, num_instances, instance_ids), 8).float()
    features = one_hot + 0.1 * torch.randn(len(instance_ids), 8, generator=generator)
    semantic_ids = torch.where(instance_ids < 0, 0, 2 + instance_ids % 3)
    labels = torch.arange(num_instances) % 2
    return features, torch.cat(xyz), torch.tensor(superpoint_ids), instance_ids, labels, semantic_ids


def test_head_and_criterion_overfit_two_frames_to_matching_instances() -> None:
    torch.manual_seed(0)
    frames = [overfit_frame(seed=1, num_instances=3), overfit_frame(seed=2, num_instances=4)]
    head = ESAMSingleViewHead(**TINY, num_classes=2, num_semantic_classes=5)
    criterion = ESAMCriterion(num_classes=2, num_semantic_classes=5)
    targets = [
        make_frame_targets(instances, labels, semantics, superpoints, int(superpoints.max()) + 1, 5)
        for _, _, superpoints, instances, labels, semantics in frames
    ]
    features, xyz, superpoint_ids = ([frame[i] for frame in frames] for i in range(3))
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)

    head.train()
    for _ in range(150):
        losses = criterion(head(features, xyz, superpoint_ids), targets)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()

    head.eval()
    with torch.no_grad():
        outputs = head(features, xyz, superpoint_ids)
    for output, target, frame in zip(outputs, targets, frames):
        result = predict_instances(
            output.final.class_logits,
            output.final.mask_logits,
            class_agnostic=False,
            min_points=50,
            score_threshold=0.3,
        )
        gt = target.point_masks
        intersection = (gt[:, None, :] & result.masks[None, :, :]).sum(dim=2).float()
        union = (gt[:, None, :] | result.masks[None, :, :]).sum(dim=2).float()
        iou = intersection / union
        best = iou.argmax(dim=1)
        assert bool((iou.amax(dim=1) > 0.5).all()), iou
        assert torch.equal(result.labels[best], target.labels)
        # predictions are sorted by score: the G best-scored ones are the G objects
        assert sorted(best.tolist()) == list(range(len(gt)))
        semantics = predict_point_semantics(
            output.semantic_logits, output.query_superpoints, frame[2], int(frame[2].max()) + 1
        )
        assert bool((semantics == frame[5]).float().mean() > 0.95)


def test_a_frame_without_points_gets_no_queries_and_finite_losses() -> None:
    torch.manual_seed(0)
    head = ESAMSingleViewHead(**TINY, num_classes=1, num_semantic_classes=5).train()
    criterion = ESAMCriterion(num_classes=1, num_semantic_classes=5)
    features, xyz, superpoint_ids = random_frame(30, 4, torch.Generator().manual_seed(0))
    empty_long = torch.zeros(0, dtype=torch.long)
    targets = [
        make_frame_targets(empty_long, empty_long, empty_long, empty_long, 0, 5),
        make_frame_targets(
            torch.where(superpoint_ids < 2, 0, -1),
            torch.zeros(1, dtype=torch.long),
            torch.zeros(30, dtype=torch.long),
            superpoint_ids,
            4,
            5,
        ),
    ]

    outputs = head([torch.zeros(0, 8), features], [torch.zeros(0, 3), xyz], [empty_long, superpoint_ids])
    losses = criterion(outputs, targets)
    losses["total"].backward()

    assert outputs[0].final.mask_logits.shape == (0, 0)
    assert all(torch.isfinite(value) for value in losses.values())
    assert all(bool(torch.isfinite(p.grad).all()) for p in head.parameters() if p.grad is not None)
