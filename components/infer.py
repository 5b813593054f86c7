"""`bifusion infer --stream`: online instance segmentation of one raw RGB-D sequence with an MV checkpoint.

The sequence is a ScanNet export folder (`2D/<scene>` of the raw layout, or any folder laid out the same way):
`color/<N>.jpg`, `depth/<N>.png`, `pose/<N>.txt` (camera to world) and `intrinsic/intrinsic_depth.txt`.
Frames whose raw number is a multiple of `prep.mv_frame_step` are streamed in order (ESAM's MV sampling);
frames with a missing file or a lost pose are skipped with a warning. Each frame is lifted to points like prep
does (`prep.points_per_frame`, `prep.depth_range_m`, `prep.depth_scale`, Felzenszwalb superpoints with
`prep.superpoints`), so the network sees what it was trained on; `--intrinsics`, `--depth-scale`,
`--depth-min/--depth-max` override the camera settings for sequences from other sensors.

Output (`--output`, default `<storage.root>/infer/<hash>`):
  instances.npz: points_xyz (P, 3) float32 world, points_rgb (P, 3) uint8, point_instance (P,) int32 (index
  into the instance arrays of the highest-scored instance covering the point, -1 = none), masks (K, P) bool,
  scores (K,), labels (K,);
  summary.json: checkpoint, sequence, settings, frames streamed/skipped, points, instances, timings.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bifusion.components.config import build_dataclass, fingerprint
from bifusion.components.config_schema import Config, EvaluateConfig, ModelConfig
from bifusion.components.datasets.augment import normalize_colors
from bifusion.components.prep.frames import FrameSkipped, list_frames, load_depth_intrinsics, load_frame, sample_frames
from bifusion.components.prep.superpoints import felzenszwalb_segments
from bifusion.components.scannet_raw import SceneLayout
from bifusion.components.storage import Storage, join_uri
from bifusion.components.train.checkpoints import load_checkpoint
from bifusion.components.train.model_factory import build_online_model
from bifusion.model.esam_online import ESAMOnline
from bifusion.model.streaming import OnlineFrameModel, SequenceSettings, StreamingSegmenter, StreamStep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferResult:
    output_uri: str
    frames: int
    skipped_frames: int
    points: int
    instances: int


def online_model_from_checkpoint(
    checkpoint: dict[str, Any], evaluate: EvaluateConfig, source: str, allow_fusion: bool = False
) -> ESAMOnline:
    """The online network of an MV checkpoint (stage `*_mv`), rebuilt from its `config.model`, weights loaded;
    per-frame post-processing as `build_online_model` sets it (`model.online`, mask settings of `evaluate`).

    `source` names the checkpoint in errors. SV checkpoints have no box/merge heads and cannot merge frames.
    `allow_fusion`: accept bifusion_mv (the caller feeds each frame's CLIP inputs, as whole-scene evaluation does).
    """
    stage = str(checkpoint.get("stage", ""))
    if not stage.endswith("_mv"):
        raise ValueError(
            f"{source}: checkpoint of stage {stage!r} is a single-view model; streaming and whole-scene evaluation "
            f"need a multi-view checkpoint (stage *_mv, e.g. from `bifusion train --stage bifusion_mv`), whose "
            f"box and merge heads match instances across frames. Score SV checkpoints on the SV set instead."
        )
    with_fusion = stage.startswith("bifusion")
    if with_fusion and not allow_fusion:
        raise ValueError(
            f"{source}: stage {stage!r} fuses CLIP image features, which streaming does not compute per frame yet; "
            f"stream a 3d_mv or 3dtsa_mv checkpoint"
        )
    model_config = build_dataclass(ModelConfig, checkpoint["config"]["model"], f"{source} config.model")
    model = build_online_model(model_config, evaluate, with_fusion=with_fusion)
    model.load_state_dict(checkpoint["model"])
    return model


def sequence_layout(sequence_uri: str) -> SceneLayout:
    """Layout of a frame folder (holding color/, depth/, pose/, intrinsic/) given by its path or URI."""
    trimmed = sequence_uri.rstrip("/")
    parent, _, name = trimmed.rpartition("/")
    if not name:
        raise ValueError(f"--sequence {sequence_uri!r}: expected the folder holding color/, depth/, pose/ and intrinsic/")
    return SceneLayout(root=parent, scene=name, frames_dir="{scene}")


def parse_intrinsics(text: str) -> np.ndarray:
    """'fx,fy,cx,cy' -> (3, 3)."""
    values = [float(part) for part in text.split(",")]
    if len(values) != 4:
        raise ValueError(f"--intrinsics {text!r}: expected fx,fy,cx,cy (4 numbers)")
    fx, fy, cx, cy = values
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def instance_arrays(step: StreamStep) -> dict[str, np.ndarray]:
    """The arrays of instances.npz (module docstring) from the last streaming step."""
    masks = step.instances.dense_masks().cpu().numpy()
    scores = step.instances.scores.float().cpu().numpy()
    point_instance = np.full(masks.shape[1], -1, dtype=np.int32)
    for row in np.argsort(scores, kind="stable"):  # ascending: the best instance is written last
        point_instance[masks[row]] = row
    return {
        "points_xyz": step.points_world.astype(np.float32), "points_rgb": step.rgb, "point_instance": point_instance,
        "masks": masks, "scores": scores, "labels": step.instances.labels.cpu().numpy(),
    }


def run_infer(
    config: Config,
    checkpoint_uri: str,
    sequence_uri: str,
    output_uri: str | None = None,
    intrinsics: np.ndarray | None = None,
    depth_scale: float | None = None,
    depth_range_m: tuple[float, float] | None = None,
    model: OnlineFrameModel | None = None,
) -> InferResult:
    """Stream the sequence at `sequence_uri` through the checkpoint's online model and store the instances.

    intrinsics (3, 3) of the depth images overrides `intrinsic/intrinsic_depth.txt`; depth_scale (units per
    metre) and depth_range_m override the `prep` values. `model` replaces the checkpoint's network (tests).
    """
    storage = Storage(config.storage, config.workdir)
    checkpoint_uri, sequence_uri = storage.resolve(checkpoint_uri), storage.resolve(sequence_uri)
    if model is None:
        model = online_model_from_checkpoint(load_checkpoint(storage, checkpoint_uri), config.evaluate, checkpoint_uri)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(model, torch.nn.Module):
        model.to(device)
    layout = sequence_layout(sequence_uri)
    numbers = sample_frames(list_frames(storage, layout), config.prep.mv_frame_step)
    if not numbers:
        raise ValueError(f"{layout.frame_dir}: no frame numbered a multiple of prep.mv_frame_step={config.prep.mv_frame_step}")
    scale = depth_scale if depth_scale is not None else config.prep.depth_scale
    depth_range = tuple(depth_range_m) if depth_range_m is not None else tuple(config.prep.depth_range_m)
    settings = SequenceSettings(
        intrinsics=intrinsics, depth_scale=1.0, depth_range_m=depth_range,  # load_frame already divides by the scale
        points_per_frame=config.prep.points_per_frame, seed=config.prep.seed,
    )
    output_uri = storage.resolve(output_uri or join_uri(
        storage.root, "infer", fingerprint(checkpoint_uri, sequence_uri, settings, scale, config.prep.superpoints)))

    def superpoints(color: np.ndarray, depth_m: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return felzenszwalb_segments(color, depth_m, matrix, config.prep.superpoints)

    segmenter = StreamingSegmenter(model, normalize_colors, settings, superpoints, config.evaluate.topk, device)
    step, skipped, started = None, [], time.perf_counter()
    network_s = merge_s = 0.0
    progress = tqdm(numbers, desc=f"infer {layout.scene}", unit="frame")
    for number in progress:
        try:
            frame = load_frame(storage, layout, number, scale)
        except FrameSkipped as exc:
            logger.warning("skipping frame %d: %s", number, exc)
            skipped.append(number)
            continue
        matrix = intrinsics if intrinsics is not None else load_depth_intrinsics(
            storage, layout, "file", (frame.depth_m.shape[1], frame.depth_m.shape[0]))
        step = segmenter.add_frame(frame.color, frame.cam_to_world, depth=frame.depth_m, intrinsics=matrix)
        network_s += step.seconds_network
        merge_s += step.seconds_merge
        progress.set_postfix(points=len(step.points_world), instances=len(step.instances.scores))
    if step is None:
        raise ValueError(f"{layout.frame_dir}: every frame was skipped ({len(skipped)}); see the warnings")

    arrays = instance_arrays(step)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    storage.write_bytes(join_uri(output_uri, "instances.npz"), buffer.getvalue())
    streamed = segmenter.num_frames
    summary = {
        "checkpoint_uri": checkpoint_uri, "sequence_uri": sequence_uri, "frames": streamed, "skipped_frames": skipped,
        "points": int(len(arrays["points_xyz"])), "instances": int(len(arrays["scores"])),
        "settings": {**dataclasses.asdict(settings), "depth_scale": scale,
                     "intrinsics": None if intrinsics is None else np.asarray(intrinsics).tolist()},
        "seconds": time.perf_counter() - started, "ms_per_frame_network": 1000 * network_s / streamed,
        "ms_per_frame_merge": 1000 * merge_s / streamed,
    }
    storage.write_json(join_uri(output_uri, "summary.json"), summary)
    return InferResult(output_uri, streamed, len(skipped), summary["points"], summary["instances"])
