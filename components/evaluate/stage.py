"""`bifusion evaluate`: score a checkpoint on a prepared split with the ScanNet benchmark protocol.

The network is rebuilt from the model section stored in the checkpoint (the architecture it was trained
with), so an evaluate config cannot silently disagree with the weights. Results: flat metrics and
per-class tables in MLflow and in the store, and the official benchmark files (predictions and ground
truth per frame) so the numbers can be checked with ScanNet's own scripts.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bifusion.components.config import build_dataclass, fingerprint, to_yaml
from bifusion.components.config_schema import Config, ModelConfig
from bifusion.components.datasets.batching import FrameCollator
from bifusion.components.datasets.point_frames import SingleViewDataset
from bifusion.components.datasets.set_files import materialise_set
from bifusion.components.evaluate.benchmark_classes import instance_benchmark
from bifusion.components.ablation import per_class_key
from bifusion.components.evaluate.coverage import coverage_table
from bifusion.components.evaluate.frame_evaluation import EvaluationReport, evaluate_single_view, forward_points
from bifusion.components.evaluate.scene_evaluation import evaluate_scene_set
from bifusion.components.infer import online_model_from_checkpoint
from bifusion.components.run_pictures import log_evaluation_pictures
from bifusion.components.clip_features.features import image_relpath
from bifusion.components.scannet_raw import decode_color
from bifusion.components.storage import Storage, join_uri
from bifusion.components.tracking import stage_run
from bifusion.components.train.checkpoints import load_checkpoint
from bifusion.components.train.fusion_recipe import FusionCollator, ImageFedOnlineModel, feature_source_for, forward_fusion
from bifusion.model.geometry import project_points, scale_intrinsics
from bifusion.components.train.model_factory import build_bifusion_model, build_single_view_model


@dataclass(frozen=True)
class EvaluateResult:
    output_uri: str
    metrics: dict[str, float]
    frames: int


def instance_table(report: EvaluationReport, benchmark: str) -> str:
    """CSV of per-class AP/AP50/AP25 (and head/common/tail split) of one benchmark."""
    result = report.instance[benchmark]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class_name", "split", "ap", "ap50", "ap25"])
    splits = instance_benchmark(benchmark).class_splits
    for index, (class_id, name) in enumerate(zip(result.class_ids, result.class_names)):
        split = splits[index] if splits else ""
        writer.writerow([class_id, name, split, *(f"{value[index]:.6f}" for value in (result.ap, result.ap50, result.ap25))])
    return buffer.getvalue()


def semantic_table(report: EvaluationReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class_name", "iou", "gt_present"])
    result = report.semantic
    for class_id, name, iou, present in zip(result.class_ids, result.class_names, result.iou, result.gt_present):
        writer.writerow([class_id, name, f"{iou:.6f}", bool(present)])
    return buffer.getvalue()


def per_class_metrics(report: EvaluationReport) -> dict[str, float]:
    """Flat per-class AP/AP50/AP25 of classes with GT (`per_class/<benchmark>/<class>/<metric>`): the ablation
    summary reads the appearance-pair classes from them."""
    metrics = {}
    for benchmark, result in report.instance.items():
        for index, name in enumerate(result.class_names):
            for metric, values in (("ap", result.ap), ("ap50", result.ap50), ("ap25", result.ap25)):
                if math.isfinite(values[index]):
                    metrics[per_class_key(benchmark, name, metric)] = float(values[index])
    return metrics


def add_projection_overlays(renders: list[dict[str, Any]], features: Any) -> None:
    """BiFusion: each rendered frame's colour image with its points projected by the stored intrinsics and pose
    (what the encoder samples), so wrong intrinsics or poses are visible at a glance."""
    for item in renders:
        frame = item["frame"]
        camera = frame.camera
        image_uri = join_uri(features.raw_root, image_relpath(camera["img_path"], features.raw_root))
        image = decode_color(features.storage.read_bytes(image_uri), image_uri)
        width, height = camera["image_size"]
        intrinsics = scale_intrinsics(np.asarray(camera["cam2img"], dtype=np.float64)[:3, :3], (width, height),
                                      (image.shape[1], image.shape[0]))
        uv, z = project_points(frame.xyz_stored.astype(np.float64), intrinsics, np.asarray(camera["pose"], dtype=np.float64))
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < image.shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < image.shape[0])
        item.update(image=image, uv=uv, valid=(z > 0) & inside, depth=z)


def run_evaluate(
    config: Config, checkpoint_uri: str, data_uri: str, output_uri: str | None = None, clip_features_uri: str | None = None
) -> EvaluateResult:
    """Evaluate the checkpoint on `evaluate.split` of the SV set at `data_uri`; MV checkpoints (stage `*_mv`)
    on whole scenes instead, with `data_uri` prep's scene/ (or mv/) folder (`scene_evaluation`)."""
    storage = Storage(config.storage, config.workdir)
    checkpoint_uri, data_uri = storage.resolve(checkpoint_uri), storage.resolve(data_uri)
    output_uri = storage.resolve(output_uri or join_uri(storage.root, "evaluate", fingerprint(checkpoint_uri, data_uri, config.evaluate)))
    checkpoint = load_checkpoint(storage, checkpoint_uri)
    model_config = build_dataclass(ModelConfig, checkpoint["config"]["model"], "checkpoint config.model")
    trained_stage = checkpoint.get("stage", "model")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if trained_stage.endswith("_mv"):
        return _evaluate_scenes(config, storage, checkpoint, checkpoint_uri, data_uri, output_uri, model_config, device, clip_features_uri)
    is_fusion = trained_stage.startswith("bifusion")
    model = (build_bifusion_model if is_fusion else build_single_view_model)(model_config)
    model.load_state_dict(checkpoint["model"])
    model.to(device)

    set_dir = materialise_set(storage, data_uri, Path(config.workdir) / "cache" / "sets")
    dataset = SingleViewDataset(set_dir, config.evaluate.split, None, model_config.backbone.voxel_size_m, seed=0)
    collate: Any = FrameCollator(model_config.class_agnostic)
    forward: Any = forward_points
    if is_fusion:
        collate, forward = FusionCollator(collate, feature_source_for(config, clip_features_uri)), forward_fusion
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate, num_workers=0)
    sections, tags = _run_sections_and_tags(config, checkpoint_uri, data_uri, output_uri, clip_features_uri)
    with stage_run(f"evaluate_{trained_stage}", config, sections, tags) as run, tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp) / "benchmark_files" if config.evaluate.export_official else None
        report = evaluate_single_view(model, loader, config.evaluate, model_config.class_agnostic, device, export_dir,
                                      forward=forward, render_frames=config.evaluate.render_frames)
        if is_fusion:
            add_projection_overlays(report.renders, collate.features)
        summary = {"metrics": report.summary, "frames": report.frames, "seconds_per_frame": report.seconds_per_frame,
                   "skipped_benchmarks": report.skipped_benchmarks, "checkpoint_uri": checkpoint_uri}
        metrics = _publish_report(run, storage, output_uri, report, "frames", summary, sections, export_dir)
    return EvaluateResult(output_uri, metrics, report.frames)


def _run_sections_and_tags(
    config: Config, checkpoint_uri: str, data_uri: str, output_uri: str, clip_features_uri: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config sections an evaluate run logs, and its input/output tags (what `bifusion rerun` reads)."""
    sections: dict[str, Any] = {"workdir": config.workdir, "storage": config.storage, "evaluate": config.evaluate}
    tags = {"bifusion.input.checkpoint_uri": checkpoint_uri, "bifusion.input.data_uri": data_uri, "bifusion.output_uri": output_uri}
    if clip_features_uri:
        tags["bifusion.input.clip_features_uri"] = clip_features_uri
    return sections, tags


def _publish_report(
    run: Any, storage: Storage, output_uri: str, report: EvaluationReport, count_name: str, summary: dict[str, Any],
    sections: dict[str, Any], export_dir: Path | None,
) -> dict[str, float]:
    """Metrics, per-class and coverage tables, pictures, summary and official files to MLflow and the store;
    returns the flat metrics plus per-class AP (the ablation summary's input)."""
    metrics = {k: v for k, v in report.summary.items() if math.isfinite(v)}
    run.log_metrics({**metrics, "seconds_per_frame": report.seconds_per_frame, count_name: report.frames})
    metrics.update(per_class_metrics(report))  # returned, not logged: they are the CSV tables
    tables = {f"per_class_{name}.csv": instance_table(report, name) for name in report.instance}
    tables.update({f"coverage_{name}.csv": coverage_table(result) for name, result in report.coverage.items()})
    tables["per_class_semantic.csv"] = semantic_table(report)
    for name, table in tables.items():
        run.log_text(table, name)
        storage.write_text(join_uri(output_uri, name), table)
    log_evaluation_pictures(run, report, report.renders)
    storage.write_json(join_uri(output_uri, "summary.json"), summary)
    storage.write_text(join_uri(output_uri, "config.yaml"), to_yaml(sections))
    run.log_dict(summary, "summary.json")
    if export_dir is not None and export_dir.exists():
        storage.upload_dir(export_dir, join_uri(output_uri, "benchmark_files"))
    return metrics


def _evaluate_scenes(
    config: Config, storage: Storage, checkpoint: dict[str, Any], checkpoint_uri: str, data_uri: str, output_uri: str,
    model_config: ModelConfig, device: torch.device, clip_features_uri: str | None,
) -> EvaluateResult:
    """Whole-scene (MV) branch of `run_evaluate`: stream each scene, score on the mesh, write the same files."""
    model = online_model_from_checkpoint(checkpoint, config.evaluate, checkpoint_uri, allow_fusion=True)
    model.to(device)
    frame_model: Any = model
    before_frame = None
    if model.encoder is not None:  # bifusion_mv: every streamed frame brings its stored CLIP features
        frame_model = ImageFedOnlineModel(model, feature_source_for(config, clip_features_uri))
        before_frame = frame_model.queue
    sections, tags = _run_sections_and_tags(config, checkpoint_uri, data_uri, output_uri, clip_features_uri)
    with stage_run(f"evaluate_{checkpoint['stage']}", config, sections, tags) as run, tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp) / "benchmark_files" if config.evaluate.export_official else None
        report = evaluate_scene_set(frame_model, storage, data_uri, config, model_config.class_agnostic, device, export_dir,
                                    before_frame)
        summary = {"metrics": report.summary, "scenes": report.frames, "seconds_per_frame": report.seconds_per_frame,
                   "segment_smoothing": config.evaluate.segment_smoothing, "protocol": "whole scene, mesh vertices",
                   "skipped_benchmarks": report.skipped_benchmarks, "checkpoint_uri": checkpoint_uri}
        metrics = _publish_report(run, storage, output_uri, report, "scenes", summary, sections, export_dir)
    return EvaluateResult(output_uri, metrics, report.frames)
