"""ESAM losses: targets from per-point labels, loss values, and finite losses/gradients in every empty case."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bifusion.model.criterion import ESAMCriterion, FrameTargets, make_frame_targets
from bifusion.model.query_decoder import ESAM_MASK_LEVELS, FrameDecoderOutput, MaskLevel, MaskPrediction

NUM_SEMANTIC = 5
# 12 points, 4 superpoints of 3 points each
SUPERPOINT_IDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def make_output(
    num_queries: int, num_classes: int, query_superpoints: torch.Tensor | None = None, seed: int = 0
) -> FrameDecoderOutput:
    """Random decoder output for the 12-point frame, as leaves that require gradients."""
    generator = torch.Generator().manual_seed(seed)
    levels = []
    for level in ESAM_MASK_LEVELS:
        width = 4 if level is MaskLevel.SUPERPOINT else 12
        levels.append(
            MaskPrediction(
                torch.randn(num_queries, num_classes + 1, generator=generator).requires_grad_(),
                torch.randn(num_queries, width, generator=generator).requires_grad_(),
                level,
            )
        )
    if query_superpoints is None:
        query_superpoints = torch.arange(num_queries)
    return FrameDecoderOutput(
        levels=levels,
        semantic_logits=torch.randn(num_queries, NUM_SEMANTIC + 1, generator=generator).requires_grad_(),
        queries=torch.randn(num_queries, 8, generator=generator),
        query_superpoints=query_superpoints,
    )


def make_targets(instance_ids: list[int], labels: list[int], semantic_ids: list[int]) -> FrameTargets:
    return make_frame_targets(
        torch.tensor(instance_ids),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(semantic_ids),
        SUPERPOINT_IDS,
        4,
        NUM_SEMANTIC,
    )


TWO_INSTANCES = dict(
    instance_ids=[0, 0, 0, 0, 0, -1, 1, 1, 1, -1, 1, -1],
    labels=[2, 0],
    semantic_ids=[3, 3, 3, 3, 3, 0, 4, 4, 4, 5, 4, 5],
)


def all_finite_with_gradients(losses: dict[str, torch.Tensor], outputs: list[FrameDecoderOutput]) -> None:
    for name, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()), name
    losses["total"].backward()
    for output in outputs:
        tensors = [output.semantic_logits] + [t for p in output.levels for t in (p.class_logits, p.mask_logits)]
        for tensor in tensors:
            assert tensor.grad is not None and bool(torch.isfinite(tensor.grad).all())


def test_superpoint_targets_use_strict_majorities() -> None:
    targets = make_targets(**TWO_INSTANCES)

    # sp1 has 2 of 3 points in instance 0; sp3 has 1 of 3 in instance 1
    assert targets.superpoint_masks.tolist() == [[True, True, False, False], [False, False, True, False]]
    assert targets.point_masks.sum(dim=1).tolist() == [5, 4]
    # sp1: class 3 twice, class 0 once -> 3; sp3: ignore (5) twice -> ignore
    assert targets.superpoint_semantics.tolist() == [3, 3, 4, NUM_SEMANTIC]

    split = make_frame_targets(
        torch.tensor([0, 0, -1, -1]),
        torch.tensor([0]),
        torch.tensor([1, 2, 1, 2]),
        torch.tensor([0, 0, 0, 0]),
        1,
        NUM_SEMANTIC,
    )
    assert split.superpoint_masks.tolist() == [[False]]  # exactly 50 % is not inside
    assert split.superpoint_semantics.tolist() == [NUM_SEMANTIC]


def test_loss_names_and_total_is_the_weighted_sum() -> None:
    criterion = ESAMCriterion(num_classes=3, num_semantic_classes=NUM_SEMANTIC)
    outputs = [make_output(4, 3)]

    losses = criterion(outputs, [make_targets(**TWO_INSTANCES)])

    expected_names = {"semantic", "total"} | {f"level{i}_{t}" for i in range(4) for t in ("cls", "bce", "dice")}
    assert set(losses) == expected_names
    total = 0.5 * losses["semantic"] + sum(
        0.5 * losses[f"level{i}_cls"] + losses[f"level{i}_bce"] + losses[f"level{i}_dice"] for i in range(4)
    )
    torch.testing.assert_close(losses["total"], total)
    all_finite_with_gradients(losses, outputs)


def test_classification_targets_matched_labels_and_no_object_elsewhere() -> None:
    criterion = ESAMCriterion(num_classes=3, num_semantic_classes=NUM_SEMANTIC)
    output = make_output(4, 3)
    targets = make_targets(**TWO_INSTANCES)

    losses = criterion([output], [targets])

    # instance 0 may take queries 0, 1; instance 1 only query 2; query 3 is background
    final = output.final
    candidates = [0, 1]
    matched_0 = min(
        candidates,
        key=lambda q: (
            -0.5 * final.class_logits[q].softmax(0)[2]
            + F.binary_cross_entropy_with_logits(final.mask_logits[q], targets.point_masks[0].float())
            + 1
            - (2 * (final.mask_logits[q].sigmoid() * targets.point_masks[0]).sum() + 1)
            / (final.mask_logits[q].sigmoid().sum() + 5 + 1)
        ).item(),
    )
    class_targets = torch.full((4,), 3)
    class_targets[matched_0] = 2
    class_targets[2] = 0
    expected = F.cross_entropy(final.class_logits, class_targets, torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(losses["level3_cls"], expected)
    matched_gt = targets.point_masks[[0, 1]].float()
    torch.testing.assert_close(
        losses["level3_bce"], F.binary_cross_entropy_with_logits(final.mask_logits[[matched_0, 2]], matched_gt)
    )
    semantic_targets = torch.tensor([3, 3, 4])
    torch.testing.assert_close(
        losses["semantic"], F.cross_entropy(output.semantic_logits[:3, :NUM_SEMANTIC], semantic_targets)
    )


def test_frame_without_instances_pushes_every_query_to_no_object() -> None:
    criterion = ESAMCriterion(num_classes=1, num_semantic_classes=NUM_SEMANTIC)
    outputs = [make_output(4, 1)]
    targets = make_frame_targets(
        torch.full((12,), -1), torch.zeros(0, dtype=torch.long), torch.zeros(12).long(), SUPERPOINT_IDS, 4, NUM_SEMANTIC
    )

    losses = criterion(outputs, [targets])

    final = outputs[0].final
    torch.testing.assert_close(losses["level3_cls"], F.cross_entropy(final.class_logits, torch.ones(4).long()))
    for level in range(4):
        assert losses[f"level{level}_bce"].item() == 0.0 and losses[f"level{level}_dice"].item() == 0.0
    all_finite_with_gradients(losses, outputs)
    assert bool(final.class_logits.grad[:, 1].lt(0).all())  # raises the no-object logit of every query
    assert bool((final.mask_logits.grad == 0).all())


def test_instances_on_no_superpoint_majority_are_left_unmatched_without_nan() -> None:
    criterion = ESAMCriterion(num_classes=1, num_semantic_classes=NUM_SEMANTIC)
    outputs = [make_output(4, 1)]
    # one point of each superpoint: no superpoint is inside the instance
    targets = make_targets([0, -1, -1, 0, -1, -1, 0, -1, -1, 0, -1, -1], [0], [NUM_SEMANTIC] * 12)

    losses = criterion(outputs, [targets])

    assert losses["level3_bce"].item() == 0.0 and losses["semantic"].item() == 0.0
    all_finite_with_gradients(losses, outputs)


def test_frames_without_queries_give_zero_losses_and_zero_gradients() -> None:
    criterion = ESAMCriterion(num_classes=1, num_semantic_classes=NUM_SEMANTIC)
    outputs = [make_output(0, 1, torch.zeros(0, dtype=torch.long))]

    losses = criterion(outputs, [make_targets(**{**TWO_INSTANCES, "labels": [0, 0]})])

    assert all(value.item() == 0.0 for value in losses.values())
    all_finite_with_gradients(losses, outputs)


def test_empty_frames_do_not_dilute_the_mask_losses_of_other_frames() -> None:
    criterion = ESAMCriterion(num_classes=1, num_semantic_classes=NUM_SEMANTIC)
    full = make_output(4, 1, seed=1)
    targets = make_targets(**{**TWO_INSTANCES, "labels": [0, 0]})
    empty_targets = make_frame_targets(
        torch.full((12,), -1),
        torch.zeros(0, dtype=torch.long),
        torch.full((12,), NUM_SEMANTIC),
        SUPERPOINT_IDS,
        4,
        NUM_SEMANTIC,
    )

    alone = criterion([full], [targets])
    batched = criterion([full, make_output(3, 1, seed=2)], [targets, empty_targets])

    for name in ("level3_bce", "level3_dice", "level0_bce", "level0_dice", "semantic"):
        torch.testing.assert_close(batched[name], alone[name])


def test_training_query_subsets_index_candidates_and_semantics_by_their_superpoint() -> None:
    criterion = ESAMCriterion(num_classes=3, num_semantic_classes=NUM_SEMANTIC)
    # queries on superpoints 2 and 0 only
    output = make_output(2, 3, query_superpoints=torch.tensor([2, 0]))

    losses = criterion([output], [make_targets(**TWO_INSTANCES)])

    class_targets = torch.tensor([0, 2])
    expected_cls = F.cross_entropy(output.final.class_logits, class_targets, torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(losses["level3_cls"], expected_cls)
    torch.testing.assert_close(
        losses["semantic"], F.cross_entropy(output.semantic_logits[:, :NUM_SEMANTIC], torch.tensor([4, 3]))
    )
