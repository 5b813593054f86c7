"""Merge head output and the temporal contrastive merge loss: hand-computed InfoNCE, empty cases, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from bifusion.model.merge_head import (
    MergeCriterion,
    MergeHead,
    clip_merge_loss,
    directed_pair_loss,
    instance_embeddings,
    query_instance_membership,
)

TAU = 0.07


def membership(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def info_nce(anchors: list[list[float]], candidates: list[list[float]], temperature: float = TAU) -> float:
    """Mean over anchors i of -log softmax_j(a_i . c_j / t)[i], by hand."""
    total = 0.0
    for i, anchor in enumerate(anchors):
        logits = [sum(x * y for x, y in zip(anchor, candidate)) / temperature for candidate in candidates]
        total += -logits[i] + math.log(sum(math.exp(value) for value in logits))
    return total / len(anchors)


def unit(x: float, y: float) -> list[float]:
    norm = math.hypot(x, y)
    return [x / norm, y / norm]


def test_merge_head_outputs_unit_vectors() -> None:
    head = MergeHead(d_model=256, hidden_channels=512, out_channels=256)
    out = head(torch.randn(7, 256))
    assert out.shape == (7, 256)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))
    assert isinstance(head.net[1], torch.nn.LayerNorm)


def test_membership_is_superpoint_inside_instance() -> None:
    superpoint_masks = membership([[1, 1, 0, 0], [0, 0, 1, 0]])
    queries = torch.tensor([3, 0, 2])
    assert query_instance_membership(superpoint_masks, queries).tolist() == [[False, True, False], [False, False, True]]


def test_instance_embedding_is_the_mean_of_its_queries() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    embeddings, present = instance_embeddings(features, membership([[1, 1, 0], [0, 0, 0], [0, 0, 1]]))
    torch.testing.assert_close(embeddings, torch.tensor([[0.5, 0.5], [0.0, 0.0], [3.0, 3.0]]))
    assert present.tolist() == [True, False, True]


def test_two_frame_two_instance_loss_matches_hand_computed_info_nce() -> None:
    frame_a = [unit(1.0, 0.8), unit(0.8, 1.0)]
    frame_b = [unit(1.0, 0.7), unit(0.9, 1.0)]
    features = [torch.tensor(frame_a), torch.tensor(frame_b)]
    one_query_each = [membership([[1, 0], [0, 1]])] * 2
    expected = info_nce(frame_a, frame_b) + info_nce(frame_b, frame_a)
    assert clip_merge_loss(features, one_query_each, TAU).item() == pytest.approx(expected, rel=1e-5)


def test_consistent_embeddings_score_lower_than_shuffled() -> None:
    generator = torch.Generator().manual_seed(0)
    objects = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    features = [objects.clone(), objects.clone(), objects.clone()]
    consistent = [torch.eye(4, dtype=torch.bool)] * 3
    shuffled = [torch.eye(4, dtype=torch.bool), torch.eye(4, dtype=torch.bool)[[1, 2, 3, 0]], torch.eye(4).bool()]
    assert clip_merge_loss(features, consistent).item() < clip_merge_loss(features, shuffled).item()


def test_instance_seen_only_in_the_other_frame_is_a_negative() -> None:
    """ESAM: anchors need both frames, candidates only the other frame (an absent instance gives -inf logits
    only where its mean feature is zero)."""
    a = [unit(1.0, 0.0), unit(0.0, 1.0)]
    b = [unit(1.0, 0.2), unit(0.0, 1.0), unit(0.7, 0.7)]
    features_a, features_b = torch.tensor(a), torch.tensor(b)
    members_a = membership([[1, 0], [0, 0], [0, 0]])  # frame a sees instance 0 (query 0) only
    members_b = membership([[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # frame b sees instances 0, 1, 2
    loss = directed_pair_loss(features_a, members_a, features_b, members_b, TAU)
    assert loss.item() == pytest.approx(info_nce([a[0]], b), rel=1e-5)
    reverse = directed_pair_loss(features_b, members_b, features_a, members_a, TAU)
    assert reverse.item() == pytest.approx(info_nce([b[0]], [a[0]]), abs=1e-6)  # a single candidate: 0


def test_clip_loss_sums_both_directions_of_every_adjacent_pair() -> None:
    generator = torch.Generator().manual_seed(1)
    features = [torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=1) for _ in range(4)]
    members = [torch.eye(3, dtype=torch.bool)] * 4
    expected = sum(
        directed_pair_loss(features[t], members[t], features[s], members[s])
        for t, s in [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    )
    torch.testing.assert_close(clip_merge_loss(features, members), expected)


def test_criterion_weights_and_averages_over_clips() -> None:
    generator = torch.Generator().manual_seed(2)
    clips = [
        [torch.nn.functional.normalize(torch.randn(2, 8, generator=generator), dim=1) for _ in range(2)]
        for _ in range(2)
    ]
    members = [[torch.eye(2, dtype=torch.bool)] * 2] * 2
    per_clip = [clip_merge_loss(clip, clip_members) for clip, clip_members in zip(clips, members)]
    loss = MergeCriterion(weight=2.0, temperature=TAU)(clips, members)
    torch.testing.assert_close(loss, 2.0 * (per_clip[0] + per_clip[1]) / 2.0)


@pytest.mark.parametrize(
    "members_a, members_b",
    [
        ([[1, 0], [0, 0]], [[0, 0], [0, 1]]),  # no instance in both frames
        ([[0, 0], [0, 0]], [[0, 0], [0, 0]]),  # no instance at all
    ],
)
def test_no_shared_instance_gives_an_attached_zero(members_a: list[list[int]], members_b: list[list[int]]) -> None:
    features = [torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    loss = clip_merge_loss(features, [membership(members_a), membership(members_b)])
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.equal(f.grad, torch.zeros(2, 4)) for f in features)


def test_frames_without_queries_and_single_frames_give_zero() -> None:
    no_queries = [torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4, requires_grad=True)]
    assert clip_merge_loss(no_queries, [torch.zeros(3, 0, dtype=torch.bool)] * 2).item() == 0.0
    single = [torch.randn(2, 4, requires_grad=True)]
    loss = clip_merge_loss(single, [torch.eye(2, dtype=torch.bool)])
    assert loss.item() == 0.0
    loss.backward()


def test_gradients_reach_the_merge_head_and_are_finite() -> None:
    torch.manual_seed(0)
    head = MergeHead(d_model=32, hidden_channels=64, out_channels=16)
    queries = [torch.randn(6, 32), torch.randn(5, 32)]
    members = [
        membership([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]]),
        membership([[0, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0]]),
    ]
    loss = MergeCriterion()([[head(q) for q in queries]], [members])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for name, parameter in head.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    assert head.net[0].weight.grad.abs().sum() > 0


def test_membership_rows_must_be_shared_by_the_clip() -> None:
    with pytest.raises(ValueError, match="scene-level instance ids"):
        clip_merge_loss([torch.randn(2, 4), torch.randn(2, 4)], [torch.eye(2).bool(), torch.ones(3, 2).bool()])
