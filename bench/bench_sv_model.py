"""Single-view model cost against its backbone: one training step and inference per frame.

Builds ESAM's single-view network from a config (`components/train/model_factory.py`
`build_single_view_model`: Res16UNet34C + query decoder, and `build_criterion`) and one synthetic single
view: points unprojected from random pixels of a 640x480 camera onto a slanted wall/floor and a dozen
box-shaped objects (each one ground-truth instance with a random ScanNet200 thing class, the background
wall and floor), rgb per surface with noise, superpoints from 32x32 pixel blocks split at object borders,
targets from `model/criterion.py` `make_frame_targets`. Times, in the same run:

- training step: the full model (voxelise -> backbone -> slice -> decoder, all superpoints as queries) +
  `ESAMCriterion` + backward, against the same backbone alone (voxelise -> backbone -> slice -> a scalar
  loss -> backward);
- inference: the full model in eval mode without gradients (all superpoints as queries) +
  `model/postprocess.py` `predict_instances` with the config's evaluate settings, against the backbone
  forward alone (voxelise -> backbone -> slice).

Full model and backbone alternate every repeat (the order flips) after one warm-up each, so that load from
other processes favours neither; medians and minima are reported with the ratio full model / backbone.

    python bench/bench_sv_model.py [--config base] [--points 20000] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from bifusion.components.config_schema import load_config
from bifusion.components.train.model_factory import build_criterion, build_single_view_model, num_instance_classes
from bifusion.model.criterion import FrameTargets, make_frame_targets
from bifusion.model.esam_model import point_features
from bifusion.model.postprocess import predict_instances
from bifusion.model.sparse import voxelize

IMAGE_SIZE = (640, 480)  # (W, H) of the ScanNet depth grid
FOCAL_PX = 577.87
SUPERPOINT_BLOCK_PX = 32
OBJECTS = 12
NUM_SEMANTIC_CLASSES = 200  # ScanNet200; index 200 is the ignore class
WALL, FLOOR = 0, 1  # ScanNet200 semantic indices of the stuff classes (never instances)
NUM_STUFF_CLASSES = 2


def synthetic_frame(points: int, seed: int) -> dict:
    """One single view in camera coordinates (x right, y down, z forward, metres).

    Returns xyz (N, 3), colors (N, 3) in [0, 1], superpoints (N,) contiguous long, instance_ids (N,) long
    (-1 = wall/floor), instance_labels (G,) long thing class, semantic_ids (N,) long ScanNet200 index."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    u = rng.integers(0, width, points)
    v = rng.integers(0, height, points)
    # background: a wall 3.5 m away above the image's middle row, a floor coming closer towards the bottom
    floor = v > height // 2
    depth = np.where(floor, 3.5 - 2.0 * (v - height // 2) / height, 3.5)
    semantic = np.where(floor, FLOOR, WALL)
    instance = np.full(points, -1)
    colour_of_point = np.where(floor, OBJECTS, OBJECTS + 1)
    # objects: image rectangles at 1.2-3 m with a slight tilt; the nearest covering object wins
    corners = rng.integers([0, 0], [width - 60, height - 60], (OBJECTS, 2))
    sizes = rng.integers(60, 220, (OBJECTS, 2))
    object_depths = rng.uniform(1.2, 3.0, OBJECTS)
    object_classes = rng.integers(NUM_STUFF_CLASSES, NUM_SEMANTIC_CLASSES, OBJECTS)
    for k in range(OBJECTS):
        inside = (u >= corners[k, 0]) & (u < corners[k, 0] + sizes[k, 0])
        inside &= (v >= corners[k, 1]) & (v < corners[k, 1] + sizes[k, 1])
        object_depth = object_depths[k] + 0.3 * (u - corners[k, 0]) / width
        nearer = inside & (object_depth < depth)
        depth = np.where(nearer, object_depth, depth)
        instance[nearer] = k
        semantic[nearer] = object_classes[k]
        colour_of_point[nearer] = k
    depth = depth + rng.normal(0.0, 0.002, points)
    xyz = np.stack([(u - width / 2) * depth / FOCAL_PX, (v - height / 2) * depth / FOCAL_PX, depth], axis=1)
    surface_colours = rng.uniform(0.0, 1.0, (OBJECTS + 2, 3))
    colors = np.clip(surface_colours[colour_of_point] + rng.normal(0.0, 0.05, (points, 3)), 0.0, 1.0)
    blocks = (v // SUPERPOINT_BLOCK_PX) * (width // SUPERPOINT_BLOCK_PX) + u // SUPERPOINT_BLOCK_PX
    superpoints = np.unique(blocks * (OBJECTS + 1) + instance + 1, return_inverse=True)[1]
    # instances that lost every point to nearer objects are dropped; ids made contiguous
    present, instance_ids = np.unique(instance, return_inverse=True)
    if present[0] == -1:
        present, instance_ids = present[1:], instance_ids - 1
    return {
        "xyz": torch.from_numpy(xyz.astype(np.float32)),
        "colors": torch.from_numpy(colors.astype(np.float32)),
        "superpoints": torch.from_numpy(superpoints.reshape(-1)).long(),
        "instance_ids": torch.from_numpy(instance_ids.reshape(-1)).long(),
        "instance_labels": torch.from_numpy(object_classes[present] - NUM_STUFF_CLASSES).long(),
        "semantic_ids": torch.from_numpy(semantic).long(),
    }


def frame_targets(frame: dict, class_agnostic: bool) -> FrameTargets:
    labels = torch.zeros_like(frame["instance_labels"]) if class_agnostic else frame["instance_labels"]
    superpoints = frame["superpoints"]
    return make_frame_targets(
        frame["instance_ids"], labels, frame["semantic_ids"], superpoints, int(superpoints.max()) + 1,
        NUM_SEMANTIC_CLASSES,
    )


def interleaved_seconds(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every timed call of each step after one warm-up call; the order flips every repeat."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(repeats):
        order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, unit: str, scale: float, decimals: int, times: dict[str, list[float]]) -> None:
    """Median and min of 'full' and 'backbone', and their ratio full model / backbone."""
    print(f"\n{title}")
    for name, label in (("backbone", "backbone alone"), ("full", "full model    ")):
        per_call = ", ".join(f"{scale * t:.{decimals}f}" for t in times[name])
        print(
            f"  {label}: median {scale * statistics.median(times[name]):.{decimals}f} {unit}, "
            f"min {scale * min(times[name]):.{decimals}f} {unit} ({per_call})"
        )
    for name, pick in (("median", statistics.median), ("min", min)):
        print(f"  full model / backbone ({name}): {pick(times['full']) / pick(times['backbone']):.2f}x")


def run(config_name: str, points: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_config([config_name])
    class_agnostic = config.model.class_agnostic
    frame = synthetic_frame(points, seed=0)
    xyz, colors, superpoints = [frame["xyz"]], [frame["colors"]], [frame["superpoints"]]
    targets = [frame_targets(frame, class_agnostic)]
    model = build_single_view_model(config.model)
    criterion = build_criterion(config.model, config.train.loss)
    evaluate = config.evaluate

    def train_full() -> None:
        model.train().zero_grad(set_to_none=True)
        outputs = model(xyz, colors, superpoints, query_fraction=1.0)
        criterion(outputs, targets)["total"].backward()

    def train_backbone() -> None:
        model.train().zero_grad(set_to_none=True)
        features = point_features(model.backbone, xyz, colors, model.voxel_size)
        features[0].square().mean().backward()

    @torch.no_grad()
    def infer_full() -> None:
        final = model.eval()(xyz, colors, superpoints)[0].final
        predict_instances(
            final.class_logits.float(), final.mask_logits.float(), class_agnostic, topk=evaluate.topk,
            score_threshold=evaluate.score_threshold, mask_threshold=evaluate.mask_threshold,
            min_points=evaluate.min_points,
        )

    @torch.no_grad()
    def infer_backbone() -> None:
        point_features(model.eval().backbone, xyz, colors, model.voxel_size)

    voxels, _ = voxelize(frame["xyz"], torch.zeros(points, dtype=torch.long), frame["colors"], model.voxel_size)
    parameters = sum(p.numel() for p in model.parameters())
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    print(
        f"config {config_name}: 1 frame, {points} points, {voxels.num_voxels} voxels at {model.voxel_size} m, "
        f"{int(superpoints[0].max()) + 1} superpoints (all used as queries), {len(frame['instance_labels'])} GT "
        f"instances; {num_instance_classes(config.model)} instance classes; {threads} threads; "
        f"{repeats} repeats after 1 warm-up"
    )
    print(f"parameters: full model {parameters / 1e6:.2f} M, backbone {backbone_parameters / 1e6:.2f} M")
    report("training step (forward + loss + backward), s", "s", 1.0, 2,
           interleaved_seconds({"full": train_full, "backbone": train_backbone}, repeats))
    report("inference (eval, no grad), ms/frame", "ms", 1000.0, 0,
           interleaved_seconds({"full": infer_full, "backbone": infer_backbone}, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="base", help="config whose model/loss/evaluate sections are used")
    parser.add_argument("--points", type=int, default=20000, help="points of the frame (prep.points_per_frame in base)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    run(args.config, args.points, args.repeats, args.threads)


if __name__ == "__main__":
    main()
