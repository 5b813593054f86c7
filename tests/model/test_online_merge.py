"""Online merging: the same objects seen in several frames merge into one instance each; per-frame cost."""

from __future__ import annotations

import time

import pytest
import torch

from bifusion.model.online_merge import (
    FrameInstances,
    OnlineInstanceMerger,
    assign_for_merge,
    merge_similarity,
)

POINTS_PER_FRAME = 40
FEATURES = {"A": [1.0, 0.0, 0.0, 0.0], "B": [0.0, 1.0, 0.0, 0.0], "C": [0.0, 0.0, 1.0, 0.0]}
CENTRES = {"A": [0.0, 0.0, 0.0], "B": [3.0, 0.0, 0.0], "C": [0.0, 3.0, 0.0]}
POINT_RANGES = {"A": (0, 10), "B": (10, 20), "C": (20, 30)}


def frame_of(
    objects: list[str],
    scores: list[float],
    jitter: float = 0.0,
    labels: list[int] | None = None,
    features: dict[str, list[float]] | None = None,
    centres: dict[str, list[float]] | None = None,
) -> FrameInstances:
    """Instances of `objects` (in that order) with unit boxes around their centres, moved by `jitter` along x."""
    features = FEATURES | (features or {})
    centres = CENTRES | (centres or {})
    masks = torch.zeros(len(objects), POINTS_PER_FRAME, dtype=torch.bool)
    for row, name in enumerate(objects):
        start, stop = POINT_RANGES[name]
        masks[row, start:stop] = True
    return FrameInstances(
        masks=masks,
        scores=torch.tensor(scores),
        labels=torch.tensor(labels if labels is not None else [0] * len(objects)),
        merge_features=torch.tensor([features[name] for name in objects]).view(len(objects), 4),
        boxes=torch.tensor([[centres[name][0] + jitter, *centres[name][1:], 1.0, 1.0, 1.0] for name in objects]).view(
            len(objects), 6
        ),
        semantic_logits=torch.tensor([[score, -score] for score in scores]).view(len(objects), 2),
    )


def global_points(name: str, frames: list[int]) -> set[int]:
    start, stop = POINT_RANGES[name]
    return {frame * POINTS_PER_FRAME + point for frame in frames for point in range(start, stop)}


def mask_rows(result) -> dict[int, set[int]]:
    dense = result.dense_masks()
    return {int(i): set(torch.nonzero(row).squeeze(1).tolist()) for i, row in zip(result.instance_ids, dense)}


def three_frame_scene(merger: OnlineInstanceMerger):
    """A and B in every frame, C only in frame 2 (index 1); frame 2 lists its instances in another order."""
    first = merger.add_frame(frame_of(["A", "B"], [0.9, 0.8]))
    second = merger.add_frame(frame_of(["B", "C", "A"], [0.8, 0.7, 0.6], jitter=0.1))
    third = merger.add_frame(frame_of(["A", "B"], [0.3, 0.8], jitter=-0.1))
    return first, second, third


def test_each_object_merges_into_one_instance_and_the_new_one_is_appended() -> None:
    merger = OnlineInstanceMerger(topk=100)
    first, second, third = three_frame_scene(merger)
    assert first.instance_ids.tolist() == [0, 1]
    assert merger.num_instances == 3 and merger.num_frames == 3 and merger.num_points == 3 * POINTS_PER_FRAME
    # ids in order of first appearance: A = 0, B = 1, C = 2 (appended in frame 2)
    assert sorted(second.instance_ids.tolist()) == [0, 1, 2]
    masks = mask_rows(third)
    assert masks[0] == global_points("A", [0, 1, 2])
    assert masks[1] == global_points("B", [0, 1, 2])
    assert masks[2] == global_points("C", [1])
    assert third.dense_masks().shape == (3, 3 * POINTS_PER_FRAME)


def test_merged_attributes_are_running_means_over_the_frames() -> None:
    merger = OnlineInstanceMerger()
    *_, third = three_frame_scene(merger)
    by_id = {int(i): row for row, i in enumerate(third.instance_ids)}
    a, c = by_id[0], by_id[2]
    assert third.scores[a].item() == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert third.merge_counts[a].item() == 2 and third.merge_counts[c].item() == 0
    torch.testing.assert_close(third.boxes[a], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))  # jitters cancel
    torch.testing.assert_close(third.semantic_logits[a], torch.tensor([0.6, -0.6]))
    torch.testing.assert_close(third.merge_features[a], torch.tensor(FEATURES["A"]))
    assert third.scores[c].item() == pytest.approx(0.7)
    # output sorted by score: B 0.8, C 0.7, A 0.6
    assert third.instance_ids.tolist() == [1, 2, 0]


def test_top_k_is_returned_after_every_frame() -> None:
    merger = OnlineInstanceMerger(topk=2)
    first, second, third = three_frame_scene(merger)
    assert first.instance_ids.tolist() == [0, 1]
    assert second.instance_ids.tolist() == [1, 0]  # B 0.8, A (0.9 + 0.6) / 2 = 0.75, C 0.7 left out
    assert second.scores.tolist() == pytest.approx([0.8, 0.75])
    assert third.instance_ids.tolist() == [1, 2]  # A fell to 0.6
    assert merger.num_instances == 3


def test_different_labels_never_merge() -> None:
    merger = OnlineInstanceMerger()
    merger.add_frame(frame_of(["A", "B"], [0.9, 0.8], labels=[0, 0]))
    result = merger.add_frame(frame_of(["A", "B"], [0.9, 0.8], labels=[1, 0]))
    assert merger.num_instances == 3
    assert sorted(result.labels.tolist()) == [0, 0, 1]
    masks = mask_rows(result)
    assert masks[0] == global_points("A", [0]) and masks[2] == global_points("A", [1])


@pytest.mark.parametrize(
    "changes",
    [
        {"features": {"A": [-1.0, 0.0, 0.0, 0.0]}},  # opposite merge features: negative similarity
        {"centres": {"A": [10.0, 0.0, 0.0]}},  # same features, disjoint boxes: IoU 0
    ],
)
def test_no_merge_without_positive_feature_and_box_agreement(changes: dict) -> None:
    merger = OnlineInstanceMerger()
    merger.add_frame(frame_of(["A", "B"], [0.9, 0.8]))
    merger.add_frame(frame_of(["A", "B"], [0.9, 0.8], **changes))
    assert merger.num_instances == 3
    assert merger.merge_counts.tolist() == [0, 1, 0]


def test_similarity_is_feature_dot_times_box_iou_clamped_and_class_aware() -> None:
    stored_boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]] * 2)
    new_boxes = torch.tensor([[0.5, 0.0, 0.0, 1.0, 1.0, 1.0]] * 3)  # IoU 1/3 with both
    similarity = merge_similarity(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        stored_boxes,
        torch.tensor([0, 0]),
        torch.tensor([[0.6, 0.8], [-1.0, 0.0], [0.0, 1.0]]),
        new_boxes,
        torch.tensor([0, 0, 1]),
    )
    torch.testing.assert_close(similarity, torch.tensor([[0.2, 0.0, 0.0], [0.8 / 3, 0.0, 0.0]]))
    stored, new = assign_for_merge(similarity)
    assert stored.tolist() == [1] and new.tolist() == [0]


def test_hungarian_assignment_maximises_the_total() -> None:
    similarity = torch.tensor([[0.9, 0.8], [0.85, 0.0]])  # greedy would take (0, 0) and leave row 1 unmatched
    stored, new = assign_for_merge(similarity)
    assert sorted(zip(stored.tolist(), new.tolist())) == [(0, 1), (1, 0)]


def test_earlier_outputs_keep_their_masks() -> None:
    merger = OnlineInstanceMerger()
    first, *_ = three_frame_scene(merger)
    masks = mask_rows(first)
    assert first.dense_masks().shape == (2, POINTS_PER_FRAME)
    assert masks[0] == global_points("A", [0]) and masks[1] == global_points("B", [0])


def test_frames_without_instances_still_add_points() -> None:
    merger = OnlineInstanceMerger()
    empty = frame_of([], [])
    assert merger.add_frame(empty).instance_ids.numel() == 0
    merger.add_frame(frame_of(["A"], [0.5]))
    result = merger.add_frame(empty)
    assert merger.num_points == 3 * POINTS_PER_FRAME
    assert mask_rows(result)[0] == global_points("A", [1])


def test_reset_starts_a_new_scene() -> None:
    merger = OnlineInstanceMerger()
    three_frame_scene(merger)
    merger.reset()
    assert merger.num_instances == 0 and merger.num_frames == 0 and merger.num_points == 0
    result = merger.add_frame(frame_of(["C"], [0.4]))
    assert result.instance_ids.tolist() == [0]
    assert mask_rows(result)[0] == global_points("C", [0])


def test_inconsistent_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="K rows"):
        FrameInstances(
            masks=torch.zeros(2, 5, dtype=torch.bool),
            scores=torch.zeros(3),
            labels=torch.zeros(2, dtype=torch.long),
            merge_features=torch.zeros(2, 4),
            boxes=torch.zeros(2, 6),
            semantic_logits=torch.zeros(2, 2),
        )
    merger = OnlineInstanceMerger()
    merger.add_frame(frame_of(["A"], [0.5]))
    wider = frame_of(["A"], [0.5])
    wider.merge_features = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="merge_features"):
        merger.add_frame(wider)


def synthetic_stream(num_frames: int, num_objects: int, per_frame: int, num_points: int, revisits: bool):
    """Frames of `per_frame` instances with masks of num_points / per_frame points each.

    revisits: each frame sees `per_frame` of a scene's `num_objects` objects again (features and boxes jittered);
    otherwise every frame's instances are new objects (fresh features, boxes far from all earlier ones).
    """
    generator = torch.Generator().manual_seed(0)
    base_features = torch.nn.functional.normalize(torch.randn(num_objects, 256, generator=generator), dim=1)
    base_centres = torch.rand(num_objects, 3, generator=generator) * 10.0
    points_per_instance = num_points // per_frame
    masks = torch.zeros(per_frame, num_points, dtype=torch.bool)
    for row in range(per_frame):
        masks[row, row * points_per_instance : (row + 1) * points_per_instance] = True
    for frame in range(num_frames):
        objects = torch.randperm(num_objects, generator=generator)[:per_frame]
        features = base_features[objects] if revisits else torch.randn(per_frame, 256, generator=generator)
        features = torch.nn.functional.normalize(features + 0.05 * torch.randn(per_frame, 256, generator=generator))
        centres = base_centres[objects] + 0.05 * torch.randn(per_frame, 3, generator=generator)
        if not revisits:
            centres[:, 0] += 100.0 * frame
        yield (
            FrameInstances(
                masks=masks,
                scores=torch.rand(per_frame, generator=generator),
                labels=torch.zeros(per_frame, dtype=torch.long),
                merge_features=features,
                boxes=torch.cat([centres, torch.ones(per_frame, 3)], dim=1),
                semantic_logits=torch.randn(per_frame, 201, generator=generator),
            ),
            objects,
        )


@pytest.mark.parametrize("revisits", [True, False], ids=["60-object-scene", "nothing-merges"])
def test_per_frame_merge_cost_over_100_frames(revisits: bool) -> None:
    """Per-frame merge time over 100 frames x 20 instances x 20,000 points, printed (run with -s); asserts
    correctness only. Timed with one intra-op thread: on a shared 2-core machine, torch's thread pool turns
    millisecond ops into 100 ms stalls."""
    frames = list(synthetic_stream(100, 60, 20, 20_000, revisits))
    merger = OnlineInstanceMerger(topk=100)
    milliseconds = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for frame, _ in frames:
            start = time.perf_counter()
            result = merger.add_frame(frame)
            milliseconds.append(1000.0 * (time.perf_counter() - start))
        start = time.perf_counter()
        dense = result.dense_masks()
        dense_ms = 1000.0 * (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    print(
        f"\n[{'revisits' if revisits else 'no merges'}] per-frame merge ms: frames 2-10 "
        f"{sum(milliseconds[1:10]) / 9:.2f}, frames 91-100 {sum(milliseconds[90:]) / 10:.2f}, max "
        f"{max(milliseconds):.2f}; {merger.num_instances} instances; top-100 dense masks {tuple(dense.shape)} in "
        f"{dense_ms:.1f} ms"
    )
    seen = {int(i) for _, objects in frames for i in objects}
    assert merger.num_instances == (len(seen) if revisits else 100 * 20)
    assert dense.shape == (min(100, merger.num_instances), 100 * 20_000)
    assert int(dense.sum()) == int(result.merge_counts.sum() + result.merge_counts.numel()) * 1000
