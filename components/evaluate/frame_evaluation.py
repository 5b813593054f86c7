"""Run a single-view model over frames and score it: instance AP per benchmark and semantic mIoU.

Used by the evaluate stage and by validation during training, so both report the same numbers. Each
frame is one "scene" of the official protocol (ESAM's SV evaluation on each frame's sampled points).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from bifusion.components.config_schema import EvaluateConfig
from bifusion.components.datasets.batching import PointBatch
from bifusion.components.evaluate.benchmark_classes import (
    InstanceBenchmark,
    instance_benchmark,
    raw_to_nyu40_table,
    scannet200_instance_benchmark,
    scannet200_semantic_space,
)
from bifusion.components.evaluate.benchmark_export import write_ground_truth, write_instance_predictions
from bifusion.components.evaluate.coverage import CoverageEvaluator, CoverageResult
from bifusion.components.evaluate.instance_ap import InstanceAPResult, InstanceEvaluator
from bifusion.components.evaluate.semantic_iou import SemanticIoUEvaluator, SemanticIoUResult
from bifusion.model.query_decoder import FrameDecoderOutput
from bifusion.model.postprocess import InstancePredictions, predict_instances, predict_point_semantics


@dataclass
class EvaluationReport:
    """`summary` holds flat metrics such as `scannet200/ap50`, `class_agnostic/ap`, `semantic/miou`."""

    summary: dict[str, float]
    instance: dict[str, InstanceAPResult]
    semantic: SemanticIoUResult
    frames: int
    seconds_per_frame: float
    skipped_benchmarks: dict[str, str] = field(default_factory=dict)
    coverage: dict[str, CoverageResult] = field(default_factory=dict)  # per instance benchmark
    renders: list[dict[str, Any]] = field(default_factory=list)  # the first frames' points, GT and predictions


def benchmark_label_ids(benchmark: InstanceBenchmark, predicted: InstancePredictions, class_agnostic_model: bool) -> np.ndarray | None:
    """Benchmark label ids of a class-aware model's predictions (ScanNet200 thing index -> raw id -> benchmark)."""
    if benchmark.class_agnostic:
        return None
    raw_ids = scannet200_instance_benchmark().class_id_of_index(predicted.labels.cpu().numpy())
    if benchmark.name == "scannet20":
        return raw_to_nyu40_table()[raw_ids]
    return raw_ids


class FrameScorer:
    """Accumulates predictions of many frames into the configured benchmarks and semantic mIoU."""

    def __init__(self, config: EvaluateConfig, class_agnostic_model: bool, export_dir: Path | None):
        self.config = config
        self.class_agnostic_model = class_agnostic_model
        self.export_dir = export_dir
        self.skipped: dict[str, str] = {}
        self.instance: dict[str, InstanceEvaluator] = {}
        self.coverage: dict[str, CoverageEvaluator] = {}
        for name in config.benchmarks:
            benchmark = instance_benchmark(name)
            if class_agnostic_model and not benchmark.class_agnostic:
                self.skipped[name] = "the model is class-agnostic (model.class_agnostic=true); class-aware AP needs labels"
                continue
            self.instance[name] = InstanceEvaluator(benchmark, min_region_size=config.min_points)
            self.coverage[name] = CoverageEvaluator(benchmark, min_region_size=config.min_points)
        self.semantic = SemanticIoUEvaluator(scannet200_semantic_space())
        self.frames = 0

    def add_frame(self, name: str, instance_raw: np.ndarray, semantic_raw: np.ndarray, predicted: InstancePredictions, semantic_pred: np.ndarray) -> None:
        masks = predicted.masks.cpu().numpy()
        scores = predicted.scores.float().cpu().numpy()
        for benchmark_name, evaluator in self.instance.items():
            label_ids = benchmark_label_ids(evaluator.benchmark, predicted, self.class_agnostic_model)
            evaluator.add_scene(name, instance_raw, semantic_raw, masks, scores, label_ids)
            self.coverage[benchmark_name].add_scene(name, instance_raw, semantic_raw, masks, scores, label_ids)
            if self.export_dir is not None:
                folder = self.export_dir / benchmark_name
                export_labels = label_ids if label_ids is not None else np.ones(len(scores), dtype=np.int64)
                write_instance_predictions(folder / "predictions", name, masks, scores, export_labels)
                write_ground_truth(folder / "ground_truth", name, instance_raw, semantic_raw, evaluator.benchmark)
        self.semantic.add_scene(semantic_raw, semantic_pred)
        self.frames += 1

    def results(self, seconds: float) -> EvaluationReport:
        instance = {name: evaluator.compute() for name, evaluator in self.instance.items()}
        semantic = self.semantic.compute()
        coverage = {name: evaluator.compute() for name, evaluator in self.coverage.items()}
        summary = {f"{name}/{key}": value for name, result in instance.items() for key, value in result.summary().items()}
        summary.update({f"{name}/{key}": value for name, result in coverage.items() for key, value in result.summary().items()})
        summary["semantic/miou"] = semantic.mean_iou
        summary["semantic/accuracy"] = semantic.accuracy
        return EvaluationReport(summary, instance, semantic, self.frames, seconds / max(self.frames, 1), dict(self.skipped), coverage)


@torch.no_grad()
def forward_points(model: nn.Module, batch: PointBatch) -> list[FrameDecoderOutput]:
    """The 3D model's forward on a point batch (BiFusion passes its own, with the image inputs)."""
    return model(batch.xyz, batch.colors, batch.superpoints)


def evaluate_single_view(
    model: nn.Module,
    batches: Iterable[Any],
    config: EvaluateConfig,
    class_agnostic_model: bool,
    device: torch.device,
    export_dir: Path | None = None,
    forward: Callable[[nn.Module, Any], list[FrameDecoderOutput]] = forward_points,
    render_frames: int = 0,
) -> EvaluationReport:
    """Predict every frame with all superpoints as queries and score it (model switched to eval mode).

    batches: objects with `.to(device)`, `.frames` and `.superpoints` (a `PointBatch`, or a batch `forward` knows)."""
    was_training = model.training
    model.eval()
    scorer = FrameScorer(config, class_agnostic_model, export_dir)
    renders: list[dict[str, Any]] = []
    started = time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        outputs = forward(model, batch)
        for frame, output, superpoints in zip(batch.frames, outputs, batch.superpoints):
            final = output.final
            predicted = predict_instances(
                final.class_logits.float(), final.mask_logits.float(), class_agnostic_model, topk=config.topk,
                score_threshold=config.score_threshold, mask_threshold=config.mask_threshold, min_points=config.min_points,
            )
            semantic = predict_point_semantics(
                output.semantic_logits, output.query_superpoints, superpoints, int(superpoints.max()) + 1
            )
            scorer.add_frame(frame.name, frame.instance_raw, frame.semantic_raw, predicted, semantic.cpu().numpy())
            if len(renders) < render_frames:
                renders.append({"name": frame.name, "frame": frame, "points": frame.xyz_stored, "gt_instance_ids": frame.instance_raw,
                                "pred_masks": predicted.masks.cpu().numpy(), "pred_scores": predicted.scores.float().cpu().numpy()})
    model.train(was_training)
    report = scorer.results(time.perf_counter() - started)
    report.renders = renders
    return report
