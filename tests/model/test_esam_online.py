"""ESAMOnline: SV checkpoint compatibility, memory on/off identity at initialisation, memory reset between
scenes, online prediction for the merger, and the multi-view losses (instance + amodal box + merge)."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.box_head import BoxHead, instance_boxes_from_points
from bifusion.model.criterion import ESAMCriterion, make_frame_targets
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.esam_model import ESAMSingleView
from bifusion.model.esam_online import ESAMOnline, FramePostprocess
from bifusion.model.merge_head import MergeCriterion, MergeHead
from bifusion.model.multilevel_memory import MultilevelMemory
from bifusion.model.online_criterion import ClipTargets, OnlineCriterion
from bifusion.model.online_merge import OnlineInstanceMerger
from bifusion.model.res16unet import Res16UNet34C, load_backbone_weights
from bifusion.model.sparse import SparseBackend, is_available

PLANES = (8, 8, 16, 16, 16, 16, 16, 16)
VOXEL = 0.05
D_MODEL = 16
OBJECT_CENTRES = torch.tensor([[0.4, 0.4, 0.3], [1.4, 0.5, 0.3], [0.6, 1.5, 0.4], [1.5, 1.5, 0.3]])


def backbone(backend: str = "torch") -> Res16UNet34C:
    return Res16UNet34C(3, PLANES, (1,) * 8, 8, 3, 0.02, 0.1, backend)


def head() -> ESAMSingleViewHead:
    return ESAMSingleViewHead(PLANES[7], D_MODEL, 2, 32, 3, num_classes=1, num_semantic_classes=4)


def online_model(memory: bool = True, seed: int = 0, backend: str = "torch") -> ESAMOnline:
    torch.manual_seed(seed)
    postprocess = FramePostprocess(class_agnostic=True, topk=20, score_threshold=0.0, mask_threshold=0.4, min_points=5)
    return ESAMOnline(
        backbone(backend), head(), VOXEL, BoxHead(D_MODEL), MergeHead(D_MODEL, 32, 16), postprocess,
        memory=MultilevelMemory(PLANES[:4], backend) if memory else None,
    )


def synthetic_frame(seed: int, visible: list[int]) -> dict[str, torch.Tensor]:
    """A floor and some of the four boxes, in the shared world frame; superpoints = 0.2 m cells."""
    generator = torch.Generator().manual_seed(seed)
    parts, ids = [torch.rand(150, 3, generator=generator) * torch.tensor([2.0, 2.0, 0.0])], [torch.full((150,), -1)]
    for index in visible:
        parts.append(OBJECT_CENTRES[index] + (torch.rand(80, 3, generator=generator) - 0.5) * 0.3)
        ids.append(torch.full((80,), index))
    xyz = torch.cat(parts)
    cells = torch.floor(xyz / 0.2).long()
    superpoints = torch.unique(cells, dim=0, return_inverse=True)[1]
    return {"xyz": xyz, "colors": torch.randn(len(xyz), 3, generator=generator), "superpoints": superpoints,
            "instances": torch.cat(ids)}


def clip_frames() -> list[dict[str, torch.Tensor]]:
    return [synthetic_frame(0, [0, 1]), synthetic_frame(1, [1, 2]), synthetic_frame(2, [2, 3, 0])]


def run_clip(model: ESAMOnline, frames: list[dict[str, torch.Tensor]]):
    return model.forward_clip([[f["xyz"] for f in frames]], [[f["colors"] for f in frames]],
                              [[f["superpoints"] for f in frames]], query_fraction=1.0)[0]


def test_single_view_checkpoint_loads_with_only_the_new_modules_missing() -> None:
    torch.manual_seed(1)
    single_view = ESAMSingleView(backbone(), head(), VOXEL)
    model = online_model()
    report = load_backbone_weights(model, single_view.state_dict(), prefix_map=())
    assert not report.unexpected and not report.shape_mismatches
    assert sorted(report.loaded) == sorted(single_view.state_dict())
    assert report.missing and {name.split(".")[0] for name in report.missing} == {"memory", "box_head", "merge_head"}
    torch.testing.assert_close(model.backbone.conv0p1s1.kernel, single_view.backbone.conv0p1s1.kernel)


def test_memory_starts_as_the_identity_so_outputs_equal_the_memoryless_model() -> None:
    with_memory = online_model(memory=True).eval()
    without = online_model(memory=False).eval()
    without.load_state_dict({k: v for k, v in with_memory.state_dict().items() if not k.startswith("memory.")})
    frames = clip_frames()
    for got, want in zip(run_clip(with_memory, frames), run_clip(without, frames)):
        torch.testing.assert_close(got.decoder.final.mask_logits, want.decoder.final.mask_logits)
        torch.testing.assert_close(got.decoder.final.class_logits, want.decoder.final.class_logits)
        torch.testing.assert_close(got.boxes, want.boxes)
        torch.testing.assert_close(got.merge_features, want.merge_features)


def activate_memory(model: ESAMOnline) -> None:
    for level in model.memory.levels:
        torch.nn.init.ones_(level.reduce[1].bn.weight)


def test_reset_memory_makes_a_new_scene_independent_of_the_previous_one() -> None:
    model = online_model().eval()
    activate_memory(model)
    frames = clip_frames()
    model.reset_memory()
    fresh = model.predict_frame(frames[2]["xyz"], frames[2]["colors"], frames[2]["superpoints"])
    model.reset_memory()
    for frame in frames[:2]:
        model.predict_frame(frame["xyz"], frame["colors"], frame["superpoints"])
    with_history = model.forward_step([frames[2]["xyz"]], [frames[2]["colors"]], [frames[2]["superpoints"]], [0], 1.0)[0]
    model.reset_memory()
    assert model.memory.num_stored_voxels == [0, 0, 0, 0]
    again = model.predict_frame(frames[2]["xyz"], frames[2]["colors"], frames[2]["superpoints"])
    torch.testing.assert_close(again.scores, fresh.scores)
    torch.testing.assert_close(again.boxes, fresh.boxes)
    model.reset_memory()
    alone = model.forward_step([frames[2]["xyz"]], [frames[2]["colors"]], [frames[2]["superpoints"]], [0], 1.0)[0]
    assert not torch.allclose(with_history.decoder.final.mask_logits, alone.decoder.final.mask_logits)


@pytest.mark.skipif(not is_available(SparseBackend.SPCONV), reason="spconv not installed")
def test_memory_model_gives_the_same_outputs_on_torch_and_spconv_backends() -> None:
    reference = online_model().eval()
    activate_memory(reference)
    other = online_model(backend="spconv").eval()
    other.load_state_dict(reference.state_dict())
    frames = clip_frames()
    for got, want in zip(run_clip(other, frames), run_clip(reference, frames)):
        torch.testing.assert_close(got.decoder.final.mask_logits, want.decoder.final.mask_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.boxes, want.boxes, rtol=1e-4, atol=1e-4)


def test_predict_frame_feeds_the_online_merger() -> None:
    model = online_model().eval()
    merger = OnlineInstanceMerger()
    model.reset_memory()
    counts = []
    for frame in clip_frames():
        instances = model.predict_frame(frame["xyz"], frame["colors"], frame["superpoints"])
        assert instances.masks.shape[1] == len(frame["xyz"])
        assert instances.boxes.shape == (len(instances.scores), 6) and bool((instances.boxes[:, 3:] > 0).all())
        torch.testing.assert_close(instances.merge_features.norm(dim=1), torch.ones(len(instances.scores)))
        counts.append(len(instances.scores))
        merged = merger.add_frame(instances)
    assert min(counts) > 0 and 0 < len(merged.scores) <= sum(counts)


def clip_targets(frames: list[dict[str, torch.Tensor]]) -> ClipTargets:
    frame_targets, frame_ids = [], []
    for frame in frames:
        present = torch.unique(frame["instances"][frame["instances"] >= 0])
        local = torch.searchsorted(present, frame["instances"].clamp_min(0))
        local = torch.where(frame["instances"] >= 0, local, -1)
        num_superpoints = int(frame["superpoints"].max()) + 1
        frame_targets.append(make_frame_targets(local, torch.zeros(len(present), dtype=torch.long),
                                                torch.full((len(local),), 4), frame["superpoints"], num_superpoints, 4))
        frame_ids.append(present)
    scene_points = torch.cat([OBJECT_CENTRES + 0.3, OBJECT_CENTRES - 0.3])  # complete objects: larger than views
    boxes, present = instance_boxes_from_points(scene_points, torch.arange(4).repeat(2), 4)
    return ClipTargets(frame_targets, frame_ids, boxes, present)


def test_clip_losses_are_finite_and_train_the_new_heads_and_the_memory() -> None:
    model = online_model().train()
    criterion = OnlineCriterion(ESAMCriterion(num_classes=1, num_semantic_classes=4), MergeCriterion(2.0, 0.07), 0.5)
    frames = clip_frames()
    outputs = model([[f["xyz"] for f in frames]], [[f["colors"] for f in frames]], [[f["superpoints"] for f in frames]])
    losses = criterion(outputs, [clip_targets(frames)])
    for key in ("total", "instance", "box", "merge"):
        assert torch.isfinite(losses[key]), key
    assert losses["box"] > 0 and losses["merge"] > 0
    expected = 3 * (losses["instance"] + 0.5 * losses["box"]) + losses["merge"]
    torch.testing.assert_close(losses["total"], expected)
    losses["total"].backward()
    assert model.box_head.regression[0].weight.grad.abs().sum() > 0
    assert model.merge_head.net[0].weight.grad.abs().sum() > 0
    assert model.memory.levels[0].reduce[1].bn.weight.grad.abs().sum() > 0
