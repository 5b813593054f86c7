"""Axis-aligned box IoU and loss against hand-computed boxes, the box head's parametrisation, GT boxes."""

from __future__ import annotations

import math

import pytest
import torch

from bifusion.model.box_head import (
    BoxHead,
    aligned_box_iou,
    axis_aligned_iou_loss,
    instance_boxes_from_points,
    pairwise_box_iou,
)

UNIT_CUBE = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_of_identical_disjoint_and_half_overlapping_unit_cubes() -> None:
    a = boxes(UNIT_CUBE)
    candidates = boxes(
        UNIT_CUBE,
        [2.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # disjoint
        [0.5, 0.0, 0.0, 1.0, 1.0, 1.0],  # shifted by half along x: 0.5 / 1.5
        [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # touching faces
        [0.5, 0.5, 0.5, 1.0, 1.0, 1.0],  # shifted by half on every axis: 0.125 / 1.875
        [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],  # containing: 1 / 8
    )
    iou = pairwise_box_iou(a, candidates)
    expected = torch.tensor([[1.0, 0.0, 1.0 / 3.0, 0.0, 1.0 / 15.0, 1.0 / 8.0]])
    torch.testing.assert_close(iou, expected)


def test_pairwise_and_aligned_iou_agree() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(5, 3, generator=generator), 0.2 + torch.rand(5, 3, generator=generator)], dim=1)
    b = torch.cat([torch.rand(4, 3, generator=generator), 0.2 + torch.rand(4, 3, generator=generator)], dim=1)
    pairwise = pairwise_box_iou(a, b)
    assert pairwise.shape == (5, 4)
    torch.testing.assert_close(pairwise, pairwise_box_iou(b, a).T)
    torch.testing.assert_close(aligned_box_iou(a[:4], b), pairwise.diagonal())
    assert ((pairwise >= 0) & (pairwise <= 1)).all()


def test_iou_of_empty_boxes_is_zero_not_nan() -> None:
    empty = boxes([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert pairwise_box_iou(empty, empty).item() == 0.0
    assert pairwise_box_iou(torch.zeros(0, 6), boxes(UNIT_CUBE)).shape == (0, 1)


def test_iou_loss_values_and_gradient() -> None:
    pred = boxes(UNIT_CUBE, [0.5, 0.0, 0.0, 1.0, 1.0, 1.0]).requires_grad_()
    gt = boxes(UNIT_CUBE, UNIT_CUBE)
    loss = axis_aligned_iou_loss(pred, gt)
    assert loss.item() == pytest.approx((0.0 + 2.0 / 3.0) / 2.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    # moving the shifted box back towards the target lowers the loss
    assert pred.grad[1, 0] > 0


def test_iou_loss_without_pairs_is_an_attached_zero() -> None:
    pred = torch.zeros(0, 6, requires_grad=True)
    loss = axis_aligned_iou_loss(pred, torch.zeros(0, 6))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.shape == (0, 6)


def test_iou_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        axis_aligned_iou_loss(torch.zeros(2, 6), torch.zeros(3, 6))


def test_box_head_centre_is_anchor_plus_offset_and_size_is_exp() -> None:
    head = BoxHead(d_model=8)
    last = head.regression[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.1, -0.2, 0.3, math.log(2.0), 0.0, math.log(0.5)]))
    anchors = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])
    out = head(torch.randn(2, 8), anchors)
    torch.testing.assert_close(out[:, :3], anchors + torch.tensor([0.1, -0.2, 0.3]))
    torch.testing.assert_close(out[:, 3:], torch.tensor([[2.0, 1.0, 0.5]] * 2))


def test_box_head_offset_does_not_depend_on_the_anchor() -> None:
    torch.manual_seed(0)
    head = BoxHead(d_model=16)
    queries = torch.randn(5, 16)
    anchors = torch.randn(5, 3)
    shift = torch.tensor([1.5, -2.0, 0.25])
    near, far = head(queries, anchors), head(queries, anchors + shift)
    torch.testing.assert_close(far[:, :3] - near[:, :3], shift.expand(5, 3))
    torch.testing.assert_close(far[:, 3:], near[:, 3:])
    assert (near[:, 3:] > 0).all()


def test_instance_boxes_from_points() -> None:
    points = torch.tensor(
        [[0.0, 0.0, 0.0], [2.0, 1.0, 0.5], [1.0, 4.0, 0.0], [5.0, 5.0, 5.0], [9.0, 9.0, 9.0], [-3.0, 0.0, 0.0]]
    )
    instance_ids = torch.tensor([0, 0, 0, 2, -1, -1])
    gt_boxes, present = instance_boxes_from_points(points, instance_ids, num_instances=3)
    expected = torch.tensor(
        [
            [1.0, 2.0, 0.25, 2.0, 4.0, 0.5],  # min (0, 0, 0), max (2, 4, 0.5)
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # no points
            [5.0, 5.0, 5.0, 0.0, 0.0, 0.0],  # one point: zero size
        ]
    )
    torch.testing.assert_close(gt_boxes, expected)
    assert present.tolist() == [True, False, True]


def test_amodal_box_covers_the_complete_object_not_the_visible_part() -> None:
    """The target comes from the complete object (mesh vertices), so a frame seeing half of it still gets the
    whole box."""
    mesh_vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [2.0, 1.0, 1.0]])
    mesh_ids = torch.tensor([0, 0, 0, 0])
    visible = mesh_vertices[:2]
    complete, _ = instance_boxes_from_points(mesh_vertices, mesh_ids, 1)
    partial, _ = instance_boxes_from_points(visible, mesh_ids[:2], 1)
    torch.testing.assert_close(complete, torch.tensor([[1.0, 0.5, 0.5, 2.0, 1.0, 1.0]]))
    assert pairwise_box_iou(partial, complete).item() == pytest.approx(0.5)
