"""Score an online (MV) model on whole scenes, ESAM's MV protocol (esam.md §2.4, §3).

Each scene's frames are streamed in order through a `StreamingSegmenter` (the online model + merging);
after the last frame the merged instances over the accumulated frame points are moved to the reconstructed
mesh by 1-nearest-neighbour, optionally smoothed over ScanNet's mesh segments (`evaluate.segment_smoothing`,
reported in the summary because it uses offline segmentation), and scored against the mesh GT with the same
`FrameScorer` as SV evaluation: one "scene" of the official protocol per ScanNet scene.

Semantic mIoU: the online model predicts semantics per instance, not per point, so a point takes the class of
the highest-scored merged instance covering it (argmax of that instance's semantic logits) and uncovered
points the ignore class; stuff classes (wall, floor) thus score only as far as instances cover them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from bifusion.components.config_schema import Config, EvaluateConfig
from bifusion.components.datasets.augment import normalize_colors
from bifusion.components.datasets.multi_view import MultiViewSceneDataset, PointClip
from bifusion.components.datasets.point_frames import PointFrame
from bifusion.components.evaluate.frame_evaluation import EvaluationReport, FrameScorer
from bifusion.components.evaluate.mesh_transfer import nearest_point_index, smooth_over_segments, transfer_masks
from bifusion.components.storage import Storage, is_s3_uri, join_uri, local_path
from bifusion.model.postprocess import InstancePredictions
from bifusion.model.streaming import OnlineFrameModel, StreamingSegmenter


def instance_point_semantics(masks: np.ndarray, scores: np.ndarray, semantic_logits: np.ndarray) -> np.ndarray:
    """Per-point class index (P,) from instances: masks (K, P) bool, scores (K,), semantic_logits (K, C + 1)
    with the ignore class last. A point takes the class of its highest-scored instance, or C when none covers it."""
    ignore_index = semantic_logits.shape[1] - 1
    classes = np.full(masks.shape[1], ignore_index, dtype=np.int64)
    instance_classes = semantic_logits[:, :ignore_index].argmax(axis=1) if ignore_index > 0 else np.zeros(len(scores), np.int64)
    for row in np.argsort(scores, kind="stable"):  # ascending: the best instance is written last
        classes[masks[row]] = instance_classes[row]
    return classes


def stream_scene(
    segmenter: StreamingSegmenter, clip: PointClip, before_frame: Callable[[PointFrame], None] | None = None
) -> tuple[np.ndarray, InstancePredictions, np.ndarray]:
    """Stream every frame of a scene; returns the accumulated points (P, 3) world, the final merged instances
    as masks (K, P) over them, and per-point semantic classes (P,). `before_frame` sees each frame first
    (BiFusion queues the frame's image inputs there)."""
    if not clip.frames:
        raise ValueError(f"scene {clip.scene}: no frames to stream (empty MV record)")
    segmenter.reset()
    for frame in clip.frames:
        if before_frame is not None:
            before_frame(frame)
        step = segmenter.add_points(frame.xyz, frame.rgb, frame.superpoints)
    instances = step.instances
    masks = instances.dense_masks().cpu()
    scores = instances.scores.float().cpu()
    semantics = instance_point_semantics(masks.numpy(), scores.numpy(), instances.semantic_logits.float().cpu().numpy())
    return step.points_world, InstancePredictions(masks=masks, scores=scores, labels=instances.labels.cpu()), semantics


def to_mesh(
    clip: PointClip, points_world: np.ndarray, predicted: InstancePredictions, semantics: np.ndarray, segment_smoothing: bool
) -> tuple[InstancePredictions, np.ndarray]:
    """Move point predictions to the scene's mesh vertices (1-NN, then the optional segment vote)."""
    nearest = nearest_point_index(clip.geometry.xyz, points_world)
    vertex_masks = transfer_masks(predicted.masks.numpy(), nearest)
    if segment_smoothing:
        vertex_masks = smooth_over_segments(vertex_masks, clip.geometry.segments)
    vertex_predictions = InstancePredictions(torch.from_numpy(vertex_masks), predicted.scores, predicted.labels)
    return vertex_predictions, semantics[nearest]


def evaluate_scenes(
    segmenter: StreamingSegmenter,
    scenes: Iterable[PointClip],
    config: EvaluateConfig,
    class_agnostic_model: bool,
    export_dir: Path | None = None,
    before_frame: Callable[[PointFrame], None] | None = None,
) -> EvaluationReport:
    """Stream, transfer and score every scene (module docstring); `frames` of the report counts scenes and
    `seconds_per_frame` is seconds per streamed frame."""
    scorer = FrameScorer(config, class_agnostic_model, export_dir)
    started = time.perf_counter()
    streamed = 0
    for clip in scenes:
        points_world, predicted, semantics = stream_scene(segmenter, clip, before_frame)
        streamed += len(clip.frames)
        on_mesh, mesh_semantics = to_mesh(clip, points_world, predicted, semantics, config.segment_smoothing)
        scorer.add_frame(clip.scene, clip.geometry.instance_raw, clip.geometry.semantic_raw, on_mesh, mesh_semantics)
    report = scorer.results(time.perf_counter() - started)
    report.seconds_per_frame = (time.perf_counter() - started) / max(streamed, 1)
    return report


def materialise_scene_sets(storage: Storage, data_uri: str, cache_root: Path) -> Path:
    """Local MV set folder for whole-scene evaluation, with its `scene/` sibling beside it.

    `data_uri` is prep's scene set (`<prep>/scene`, what the pipeline passes) or MV set (`<prep>/mv`): the
    frames come from `<prep>/mv`, the meshes from `<prep>/scene` (MV records point at `../scene/...`).
    Remote sets are downloaded once into `cache_root/<hash>/{mv,scene}`.
    """
    data_uri = storage.resolve(data_uri).rstrip("/")
    parent, _, name = data_uri.rpartition("/")
    if name not in ("scene", "mv"):
        raise ValueError(f"{data_uri}: whole-scene evaluation expects prep's scene/ or mv/ folder (siblings of one prep output)")
    if not is_s3_uri(parent):
        return local_path(parent) / "mv"
    target = cache_root / hashlib.sha256(parent.encode()).hexdigest()[:16]
    for folder in ("mv", "scene"):
        marker = target / folder / ".bifusion-complete"
        if not marker.is_file():
            storage.download_dir(join_uri(parent, folder), target / folder)
            marker.write_text(join_uri(parent, folder))
    return target / "mv"


def evaluate_scene_set(
    model: OnlineFrameModel, storage: Storage, data_uri: str, config: Config, class_agnostic_model: bool,
    device: torch.device, export_dir: Path | None = None, before_frame: Callable[[PointFrame], None] | None = None,
) -> EvaluationReport:
    """Whole-scene evaluation of `evaluate.split` of the prep output around `data_uri` (see `materialise_scene_sets`).

    Online settings: ESAM's top-k (`evaluate.topk`) merged instances; frames used as prep stored them.
    """
    mv_dir = materialise_scene_sets(storage, data_uri, Path(config.workdir) / "cache" / "scene_sets")
    dataset = MultiViewSceneDataset(mv_dir, config.evaluate.split)
    segmenter = StreamingSegmenter(model, normalize_colors, topk=config.evaluate.topk, device=device)
    scenes = (dataset[index] for index in range(len(dataset)))
    return evaluate_scenes(segmenter, scenes, config.evaluate, class_agnostic_model, export_dir, before_frame)
