"""Whole-scene (MV) evaluation: stream frames, merge, move to the mesh, score (GT oracle and a real network)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from bifusion.components.config_schema import EvaluateConfig, load_config
from bifusion.components.datasets.augment import normalize_colors
from bifusion.components.datasets.multi_view import PointClip, SceneGeometry
from bifusion.components.datasets.point_frames import PointFrame
from bifusion.components.evaluate.benchmark_classes import scannet200_semantic_space
from bifusion.components.evaluate.scene_evaluation import evaluate_scenes, instance_point_semantics
from bifusion.model.online_merge import FrameInstances
from bifusion.model.streaming import StreamingSegmenter

CHAIR, TABLE, FLOOR = 2, 4, 3  # raw ScanNet ids


def make_scene(rng: np.random.Generator) -> tuple[SceneGeometry, list[np.ndarray]]:
    """A floor with three objects (150 mesh vertices each); three frames, each seeing the floor and two objects."""
    centres = np.array([[0.0, 0.0, 0.5], [1.5, 0.0, 0.5], [3.0, 0.0, 0.5]])
    parts = [np.column_stack([rng.uniform(-0.5, 3.5, 600), rng.uniform(-1, 1, 600), np.zeros(600)])]
    parts += [centre + rng.uniform(-0.3, 0.3, (150, 3)) for centre in centres]
    xyz = np.concatenate(parts)
    instance = np.repeat([0, 1, 2, 3], [600, 150, 150, 150])
    semantic = np.repeat([FLOOR, CHAIR, TABLE, CHAIR], [600, 150, 150, 150])
    segments = np.concatenate([np.arange(600) // 50, 100 + instance[600:]])  # floor patches, one segment per object
    geometry = SceneGeometry(xyz, instance.astype(np.int64), semantic.astype(np.int64), segments.astype(np.int64))
    views = []
    for first in range(3):
        seen = (instance == 0) | (instance == first + 1) | (instance == (first + 1) % 3 + 1)
        views.append(np.flatnonzero(seen))
    return geometry, views


def make_clip(name: str, geometry: SceneGeometry, views: list[np.ndarray], rng: np.random.Generator) -> PointClip:
    frames = []
    for index, vertices in enumerate(views):
        xyz = (geometry.xyz[vertices] + rng.normal(0, 0.003, (len(vertices), 3))).astype(np.float32)
        rgb = rng.integers(0, 255, (len(vertices), 3)).astype(np.uint8)
        frames.append(PointFrame(
            name=f"{name}_{index}", xyz=xyz, xyz_stored=xyz, colors=normalize_colors(rgb.astype(np.float64)), rgb=rgb,
            instance_raw=geometry.instance_raw[vertices], semantic_raw=geometry.semantic_raw[vertices],
            superpoints=np.zeros(len(vertices), dtype=np.int64), source_pixels=None, augment=np.eye(4),
        ))
    return PointClip(name, frames, geometry, np.eye(4))


class MeshOracle:
    """An OnlineFrameModel that labels each point like its nearest GT mesh vertex: one instance per GT object in
    view, merge feature one-hot of the object (or all-equal with `merge_everything`), semantic logits one-hot."""

    def __init__(self, geometry: SceneGeometry, merge_everything: bool = False) -> None:
        self.tree = cKDTree(geometry.xyz)
        self.geometry = geometry
        self.merge_everything = merge_everything
        space = scannet200_semantic_space()
        self.semantic_index = {raw: space.class_ids.index(raw) for raw in (CHAIR, TABLE)}

    def reset_memory(self) -> None:
        pass

    def predict_frame(self, xyz: Tensor, colors: Tensor, superpoints: Tensor) -> FrameInstances:
        nearest = self.tree.query(xyz.numpy(), k=1)[1]
        instance = self.geometry.instance_raw[nearest]
        ids = [i for i in np.unique(instance) if i > 0]
        masks = torch.from_numpy(np.stack([instance == i for i in ids]))
        features = torch.ones((len(ids), 4)) / 2 if self.merge_everything else torch.eye(4)[ids]
        boxes, logits = [], torch.zeros((len(ids), 201))
        for row, mask in enumerate(masks):
            points = xyz[mask]
            low, high = points.min(dim=0).values, points.max(dim=0).values
            boxes.append(torch.cat([(low + high) / 2, high - low]))
            raw = int(self.geometry.semantic_raw[nearest][mask.numpy()][0])
            logits[row, self.semantic_index[raw]] = 5.0
        if self.merge_everything:
            boxes = [torch.tensor([1.5, 0.0, 0.5, 4.0, 2.0, 1.0])] * len(ids)
        return FrameInstances(masks, torch.linspace(0.9, 0.5, len(ids)), torch.zeros(len(ids), dtype=torch.long),
                              features, torch.stack(boxes), logits)


def config(**changes) -> EvaluateConfig:
    base = load_config(["base"], []).evaluate
    values = dict(benchmarks=["scannet200_class_agnostic"], min_points=20, segment_smoothing=False)
    return dataclasses.replace(base, **{**values, **changes})


@pytest.mark.parametrize("segment_smoothing", [False, True])
def test_perfect_online_prediction_scores_ap_one_on_the_mesh(segment_smoothing: bool, tmp_path) -> None:
    rng = np.random.default_rng(0)
    scenes = []
    for name in ("scene0000_00", "scene0001_00"):
        geometry, views = make_scene(rng)
        scenes.append(make_clip(name, geometry, views, rng))
    report = None
    for clip in scenes:  # one oracle per scene: it knows that scene's mesh
        segmenter = StreamingSegmenter(MeshOracle(clip.geometry), normalize_colors)
        single = evaluate_scenes(segmenter, [clip], config(segment_smoothing=segment_smoothing), True, tmp_path / clip.scene)
        assert single.summary["scannet200_class_agnostic/ap"] == pytest.approx(1.0)
        assert single.summary["scannet200_class_agnostic/ap25"] == pytest.approx(1.0)
        assert single.frames == 1
        report = single
    # chair and table vertices are predicted exactly; floor (stuff, no instance) is predicted as ignore
    iou = dict(zip(report.semantic.class_ids, report.semantic.iou))
    assert iou[CHAIR] == pytest.approx(1.0) and iou[TABLE] == pytest.approx(1.0)
    exported = sorted(p.name for p in (tmp_path / "scene0001_00" / "scannet200_class_agnostic" / "predictions").iterdir())
    assert "scene0001_00.txt" in exported


def test_merging_everything_into_one_instance_is_penalised() -> None:
    rng = np.random.default_rng(1)
    geometry, views = make_scene(rng)
    clip = make_clip("scene0002_00", geometry, views, rng)
    segmenter = StreamingSegmenter(MeshOracle(geometry, merge_everything=True), normalize_colors)
    report = evaluate_scenes(segmenter, [clip], config(), True)
    assert report.summary["scannet200_class_agnostic/ap"] < 0.5


def test_instance_point_semantics_prefers_the_best_instance() -> None:
    masks = np.array([[True, True, False, False], [False, True, True, False]])
    logits = np.array([[0.0, 9.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])  # classes 1 and 0; ignore column last
    classes = instance_point_semantics(masks, np.array([0.9, 0.5]), logits)
    assert classes.tolist() == [1, 1, 0, 3]


def test_run_evaluate_scores_an_mv_checkpoint_on_whole_scenes(tmp_path, mlflow_uri: str) -> None:
    """Smoke run of the real path: synth -> prep (mv + scene) -> untrained tiny ESAMOnline -> `run_evaluate`."""
    from bifusion.components.evaluate.stage import run_evaluate
    from bifusion.components.prep.stage import run_prep
    from bifusion.components.synth.stage import run_synth
    from bifusion.components.train.model_factory import build_online_model

    overrides = [
        f"workdir={tmp_path}", f"tracking.uri={mlflow_uri}", "synth.num_scenes=1", "synth.num_val_scenes=0",
        "synth.frames_per_scene=5", "synth.width=160", "synth.height=120", "synth.objects_per_room=[4, 5]",
        "synth.workers=1", "prep.sets=[mv, scene]", "prep.mv_frame_step=40", "prep.points_per_frame=1500",
        "prep.min_valid_points=500", "prep.superpoints.min_size=40", "prep.superpoints.downsample=1", "prep.workers=1",
        "prep.split_files={train: scannetv2_train.txt, val: scannetv2_train.txt}",
        "model.backbone.planes=[16, 16, 32, 32, 32, 32, 32, 32]", "model.backbone.layers=[1, 1, 1, 1, 1, 1, 1, 1]",
        "model.backbone.stem_channels=16", "model.decoder.d_model=32", "model.decoder.num_heads=2",
        "model.decoder.ffn_channels=64", "model.online.merge_hidden_channels=32", "model.online.merge_channels=16",
        "model.online.frame_score_threshold=0.0", "evaluate.min_points=5",
    ]
    config = load_config(["experiments/3d_mv"], overrides)
    prepared = run_prep(config, run_synth(config, str(tmp_path / "raw")).raw_uri)
    torch.manual_seed(0)
    model = build_online_model(config.model, config.evaluate)
    checkpoint = tmp_path / "mv.pt"
    torch.save({"model": model.state_dict(), "config": {"model": dataclasses.asdict(config.model)}, "stage": "3d_mv"}, checkpoint)

    result = run_evaluate(config, str(checkpoint), prepared.scene_uri, str(tmp_path / "evaluation"))
    assert result.frames == 1  # one scene
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert summary["segment_smoothing"] is True and summary["scenes"] == 1
    assert 0.0 <= summary["metrics"]["scannet200/ap25"] <= 1.0
    assert (tmp_path / "evaluation" / "benchmark_files" / "scannet200" / "ground_truth").is_dir()


def test_scene_sets_are_found_beside_the_given_folder(tmp_path) -> None:
    from bifusion.components.evaluate.scene_evaluation import materialise_scene_sets
    from bifusion.components.storage import Storage

    storage = Storage(load_config(["base"], []).storage, tmp_path)
    for given in ("scene", "mv/"):
        assert materialise_scene_sets(storage, str(tmp_path / "prep" / given), tmp_path / "cache") == tmp_path / "prep" / "mv"
    with pytest.raises(ValueError, match="scene/ or mv/"):
        materialise_scene_sets(storage, str(tmp_path / "prep" / "sv"), tmp_path / "cache")
