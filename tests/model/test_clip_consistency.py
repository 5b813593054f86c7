"""CLIP-consistency loss: weight schedule, temperature floor, gradient ratio into the CLIP side, valid-only."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from bifusion.model.clip_consistency import CLIP_CONSISTENCY_PRESETS, ClipConsistencyConfig, ClipConsistencyLoss


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frame(num_points: int, num_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    fused = torch.randn(num_points, 16, generator=generator)
    clip = torch.randn(num_points, 16, generator=generator)
    valid = torch.zeros(num_points, dtype=torch.bool)
    valid[:num_valid] = True
    return fused, clip, valid


def full_weight_loss(**overrides) -> ClipConsistencyLoss:
    return ClipConsistencyLoss(ClipConsistencyConfig(weight=1.0, start_step=0, ramp_steps=0, **overrides))


def test_weight_is_zero_then_ramps_linearly_then_full() -> None:
    config = ClipConsistencyConfig(weight=0.1, start_step=100, ramp_steps=200)

    weights = [config.weight_at(step) for step in (0, 99, 100, 150, 200, 299, 300, 10_000)]

    assert weights == pytest.approx([0.0, 0.0, 0.0, 0.025, 0.05, 0.0995, 0.1, 0.1])
    assert ClipConsistencyConfig(weight=0.1, start_step=5, ramp_steps=0).weight_at(5) == 0.1
    assert CLIP_CONSISTENCY_PRESETS["simple"].weight == 0.02 and CLIP_CONSISTENCY_PRESETS["full"].weight == 0.1
    assert CLIP_CONSISTENCY_PRESETS["full"].weight_at(0) == 0.0


def test_loss_is_weighted_by_the_schedule() -> None:
    config = ClipConsistencyConfig(weight=0.1, start_step=100, ramp_steps=200)
    loss_fn = ClipConsistencyLoss(config)
    fused, clip, valid = frame(50, 40, seed=0)

    early = loss_fn([fused], [clip], [valid], step=0)
    ramp = loss_fn([fused], [clip], [valid], step=200)

    assert early.unweighted > 0 and early.loss == 0 and early.weight == 0.0
    torch.testing.assert_close(ramp.loss, 0.05 * ramp.unweighted)
    assert ramp.num_points == 40


def test_loss_is_zero_when_fused_points_along_its_clip_side_and_ignores_invalid_points() -> None:
    loss_fn = full_weight_loss()
    fused, clip, valid = frame(50, 40, seed=1)

    aligned = loss_fn([3 * clip], [clip], [valid], step=0)
    reference = loss_fn([fused], [clip], [valid], step=0)
    fused_changed, clip_changed = fused.clone(), clip.clone()
    fused_changed[40:], clip_changed[40:] = 100.0, -100.0
    changed = loss_fn([fused_changed], [clip_changed], [valid], step=0)

    assert aligned.unweighted.abs() < 1e-6 and reference.unweighted > 0.1
    assert torch.equal(changed.unweighted, reference.unweighted)


def test_no_valid_points_give_zero_loss_not_nan() -> None:
    loss_fn = full_weight_loss(learnable_temperature=True)
    fused, clip, _ = frame(20, 0, seed=2)
    fused.requires_grad_(True)

    none = loss_fn([fused], [clip], [torch.zeros(20, dtype=torch.bool)], step=0)
    one = loss_fn([fused], [clip], [torch.arange(20) == 3], step=0)
    empty_frames = loss_fn([fused[:0]], [clip[:0]], [torch.zeros(0, dtype=torch.bool)], step=0)

    for result in (none, one, empty_frames):
        assert result.loss.item() == 0.0 and not math.isnan(result.loss.item()) and result.num_points == 0
    (none.loss + fused.sum() * 0).backward()
    assert torch.isfinite(fused.grad).all()


def test_temperature_never_goes_below_its_floor() -> None:
    loss_fn = full_weight_loss(temperature=0.1, temperature_floor=0.05, learnable_temperature=True)
    assert loss_fn.temperature.item() == pytest.approx(0.1)

    with torch.no_grad():
        loss_fn.temperature_offset.fill_(-200.0)
    fused, clip, valid = frame(30, 30, seed=3)
    result = loss_fn([fused], [clip], [valid], step=0)
    result.loss.backward()

    assert result.temperature >= 0.05 and result.temperature == pytest.approx(0.05)
    assert torch.isfinite(result.loss)
    with pytest.raises(ValueError, match="temperature_floor"):
        ClipConsistencyConfig(weight=0.1, temperature=0.01, temperature_floor=0.05)


def test_a_learnable_temperature_gets_a_gradient_and_a_fixed_one_is_a_buffer() -> None:
    learnable = full_weight_loss(learnable_temperature=True)
    fused, clip, valid = frame(30, 30, seed=4)

    learnable([fused], [clip], [valid], step=0).loss.backward()

    assert learnable.temperature_offset.grad is not None and learnable.temperature_offset.grad != 0
    assert list(full_weight_loss().parameters()) == []


def clip_side_gradient(ratio: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    fused, clip, valid = frame(40, 32, seed=5)
    fused.requires_grad_(True)
    clip.requires_grad_(True)
    full_weight_loss(clip_grad_ratio=ratio)([fused], [clip], [valid], step=0).loss.backward()
    return clip.grad, fused.grad


def test_gradient_into_the_clip_side_is_scaled_by_the_ratio() -> None:
    detached_clip, detached_fused = clip_side_gradient(0.0)
    half_clip, half_fused = clip_side_gradient(0.5)
    full_clip, full_fused = clip_side_gradient(1.0)

    assert detached_clip is None
    assert full_clip[:32].abs().sum() > 0 and torch.equal(full_clip[32:], torch.zeros(8, 16))
    torch.testing.assert_close(half_clip, 0.5 * full_clip)
    torch.testing.assert_close(detached_fused, full_fused)
    torch.testing.assert_close(half_fused, full_fused)


def test_frames_with_many_valid_points_use_a_reproducible_subset() -> None:
    loss_fn = full_weight_loss(max_points_per_frame=16)
    fused, clip, valid = frame(100, 80, seed=6)

    first = loss_fn([fused], [clip], [valid], step=0, generator=torch.Generator().manual_seed(0))
    again = loss_fn([fused], [clip], [valid], step=0, generator=torch.Generator().manual_seed(0))

    assert first.num_points == 16 and torch.equal(first.unweighted, again.unweighted)


def test_frames_are_averaged() -> None:
    loss_fn = full_weight_loss()
    first, second = frame(30, 20, seed=7), frame(50, 45, seed=8)

    both = loss_fn(*[list(column) for column in zip(first, second)], step=0)
    alone = [loss_fn([f], [c], [v], step=0).unweighted for f, c, v in (first, second)]

    torch.testing.assert_close(both.unweighted, (alone[0] + alone[1]) / 2)
    assert both.num_points == 65


def test_invalid_configs_are_rejected() -> None:
    base = ClipConsistencyConfig(weight=0.1)
    for field, value in [("weight", -1.0), ("clip_grad_ratio", 1.5), ("ramp_steps", -1), ("max_points_per_frame", 1)]:
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(base, **{field: value})
