"""Epoch orders: reproducible, sharded without overlap, and resumable mid-epoch."""

from __future__ import annotations

from bifusion.components.train.sampling import ResumableSampler
from bifusion.components.train.stage import poly_lr_factor


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = ResumableSampler(10, seed=3), ResumableSampler(10, seed=3)
    a.set_position(2)
    b.set_position(2)
    assert list(a) == list(b)
    b.set_position(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(10))


def test_processes_split_the_epoch_evenly() -> None:
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=0, rank=rank, world_size=3)
        sampler.set_position(0)
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping so every process takes 4 steps
    assert set().union(*shards) == set(range(10))


def test_resuming_mid_epoch_continues_the_same_order() -> None:
    full = ResumableSampler(12, seed=1)
    full.set_position(5)
    resumed = ResumableSampler(12, seed=1)
    resumed.set_position(5, start=7)
    assert list(resumed) == list(full)[7:]
    assert len(resumed) == 5


def test_poly_schedule_matches_esam() -> None:
    assert poly_lr_factor(0, 100, 0.9) == 1.0
    assert abs(poly_lr_factor(50, 100, 0.9) - 0.5**0.9) < 1e-12
    assert poly_lr_factor(100, 100, 0.9) == 0.0
    assert poly_lr_factor(150, 100, 0.9) == 0.0
