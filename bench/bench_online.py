"""Online inference cost per frame (3D network vs merging) and memory growth over a long sequence.

Two measurements in one run, each against a reference measured in the same run:

1. Streaming: `StreamingSegmenter` + `ESAMOnline` (built from the config; untrained weights, timing only) over
   `--network-frames` frames of `--points` world points (a synthetic room seen by a camera sliding along a wall,
   superpoints from the 0.2 m voxel fallback). Reported: ms per frame in `predict_frame` (3D network, memory and
   per-frame post-processing) and in merging, as medians over the frames after the first (warm-up). Untrained
   weights find no instance, so merging is fed the scripted instances of part 2 instead of the network's.
2. Memory: `OnlineInstanceMerger` alone over `--frames` frames with `--instances` instances per frame (ESAM MV:
   20), each covering `--mask-points` points (about what an object covers in a 20,000-point frame), against
   ESAM's dense storage (one bool mask per instance over all points seen so far, re-concatenated every frame;
   same similarity and Hungarian assignment). Reported: stored mask bytes, ms per frame, and process RSS.

    python bench/bench_online.py [--frames 100] [--network-frames 12] [--points 20000] [--model narrow|base]

`narrow` (default, for CPU) is the test profile's Res16UNet34C widths (16-32 channels) and a 32-wide decoder;
`base` is base.yaml's ESAM-sized network (slow on CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from bifusion.components.config_schema import load_config
from bifusion.components.datasets.augment import normalize_colors
from bifusion.components.train.model_factory import build_online_model
from bifusion.model.online_merge import FrameInstances, OnlineInstanceMerger, assign_for_merge, merge_similarity
from bifusion.model.streaming import StreamingSegmenter, voxel_superpoints

NARROW = [
    "model.backbone.planes=[16, 16, 32, 32, 32, 32, 32, 32]", "model.backbone.layers=[1, 1, 1, 1, 1, 1, 1, 1]",
    "model.backbone.stem_channels=16", "model.decoder.d_model=32", "model.decoder.num_heads=2",
    "model.decoder.ffn_channels=64", "model.online.merge_hidden_channels=32", "model.online.merge_channels=16",
]
MiB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def room_frame(index: int, points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) and rgb (N, 3) uint8 of frame `index`: a 3 m wide view of a wall, a floor and three
    boxes, the view sliding 0.1 m along the wall per frame (consecutive frames overlap, as in a scan)."""
    x0 = 0.1 * index
    wall = np.column_stack([rng.uniform(x0, x0 + 3, points // 2), np.full(points // 2, 3.0), rng.uniform(0, 2.5, points // 2)])
    floor = np.column_stack([rng.uniform(x0, x0 + 3, points // 4), rng.uniform(0, 3, points // 4), np.zeros(points // 4)])
    rest = points - len(wall) - len(floor)
    box_x = 1.0 + 2.0 * rng.integers(0, 6, rest) + rng.uniform(0, 0.6, rest)
    boxes = np.column_stack([np.clip(box_x, x0, x0 + 3), rng.uniform(1.0, 1.6, rest), rng.uniform(0, 0.8, rest)])
    xyz = np.concatenate([wall, floor, boxes]).astype(np.float32)
    rgb = np.concatenate([np.full((len(wall), 3), 180), np.full((len(floor), 3), 90), np.full((rest, 3), 30)])
    return xyz, (rgb + rng.integers(0, 20, (points, 3))).astype(np.uint8)


class NetworkWithScriptedInstances:
    """The real network's `predict_frame` (timed by the segmenter), whose instances are replaced by scripted ones:
    untrained weights yield no instance above threshold, which would leave merging nothing to do."""

    def __init__(self, model: torch.nn.Module, scripted: list[FrameInstances]) -> None:
        self.model = model
        self.scripted = scripted

    def reset_memory(self) -> None:
        self.model.reset_memory()

    def predict_frame(self, xyz: torch.Tensor, colors: torch.Tensor, superpoints: torch.Tensor) -> FrameInstances:
        self.model.predict_frame(xyz, colors, superpoints)
        return self.scripted.pop(0)


def bench_streaming(model_profile: str, frames: int, points: int, instances: int, mask_points: int) -> tuple[list[float], list[float], int, int]:
    config = load_config(["experiments/3d_mv"], NARROW if model_profile == "narrow" else [])
    torch.manual_seed(0)
    model = build_online_model(config.model, config.evaluate).eval()
    parameters = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    scripted = [synthetic_frame(i, points, instances, mask_points, rng) for i in range(frames)]
    segmenter = StreamingSegmenter(NetworkWithScriptedInstances(model, scripted), normalize_colors, topk=config.evaluate.topk)
    network, merging = [], []
    for index in range(frames):
        xyz, rgb = room_frame(index, points, rng)
        step = segmenter.add_points(xyz, rgb, voxel_superpoints(xyz, 0.2))
        network.append(step.seconds_network)
        merging.append(step.seconds_merge)
    return network[1:], merging[1:], parameters, segmenter.merger.num_instances


def synthetic_frame(index: int, points: int, instances: int, mask_points: int, rng: np.random.Generator) -> FrameInstances:
    """`instances` instances over `points` points; instance i of frame f is object (f + i) % 60, so each object
    is seen in about `instances` consecutive frames and merges (same merge feature, overlapping boxes)."""
    objects = (index + np.arange(instances)) % 60
    masks = torch.zeros((instances, points), dtype=torch.bool)
    for row in range(instances):
        masks[row, torch.from_numpy(rng.choice(points, mask_points, replace=False))] = True
    features = torch.nn.functional.one_hot(torch.from_numpy(objects), 64).float()
    centres = torch.from_numpy(np.column_stack([objects * 0.5, np.zeros(instances), np.zeros(instances)])).float()
    boxes = torch.cat([centres + torch.from_numpy(rng.normal(0, 0.02, (instances, 3))).float(), torch.full((instances, 3), 0.4)], 1)
    return FrameInstances(masks, torch.from_numpy(rng.uniform(0.3, 1.0, instances)).float(),
                          torch.zeros(instances, dtype=torch.long), features, boxes, torch.zeros((instances, 201)))


class DenseMaskMerger:
    """ESAM's storage, as reference: bool masks (instances, all points so far), extended and re-concatenated
    every frame; instance attributes kept as in `OnlineInstanceMerger` (same similarity and assignment)."""

    def __init__(self) -> None:
        self.masks = torch.zeros((0, 0), dtype=torch.bool)
        self.features = self.boxes = self.labels = None

    def add_frame(self, frame: FrameInstances) -> None:
        count = frame.masks.shape[1]
        if self.features is None:
            self.masks, self.features, self.boxes, self.labels = frame.masks.clone(), frame.merge_features, frame.boxes, frame.labels
            return
        stored, new = assign_for_merge(merge_similarity(self.features, self.boxes, self.labels, frame.merge_features, frame.boxes, frame.labels))
        unmatched = torch.ones(frame.masks.shape[0], dtype=torch.bool)
        unmatched[new] = False
        new_columns = torch.zeros((self.masks.shape[0], count), dtype=torch.bool)
        new_columns[stored] = frame.masks[new]
        grown = torch.cat([self.masks, new_columns], dim=1)
        appended = torch.cat([torch.zeros((int(unmatched.sum()), self.masks.shape[1]), dtype=torch.bool), frame.masks[unmatched]], dim=1)
        self.masks = torch.cat([grown, appended])
        self.features = torch.cat([self.features, frame.merge_features[unmatched]])
        self.boxes = torch.cat([self.boxes, frame.boxes[unmatched]])
        self.labels = torch.cat([self.labels, frame.labels[unmatched]])


def sparse_bytes(merger: OnlineInstanceMerger) -> int:
    return sum(t.numel() * t.element_size() for t in (*merger.mask_owners, *merger.mask_point_indices))


def bench_memory(frames: int, points: int, instances: int, mask_points: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(1)
    sequence = [synthetic_frame(i, points, instances, mask_points, rng) for i in range(frames)]
    result: dict[str, list[float]] = {"ours_ms": [], "dense_ms": [], "ours_bytes": [], "dense_bytes": [], "ours_rss": [], "dense_rss": []}
    merger = OnlineInstanceMerger(topk=100)
    start_rss = rss_bytes()
    for frame in sequence:
        started = time.perf_counter()
        merger.add_frame(frame)
        result["ours_ms"].append(1000 * (time.perf_counter() - started))
        result["ours_bytes"].append(sparse_bytes(merger))
        result["ours_rss"].append(rss_bytes() - start_rss)
    instances_ours = merger.num_instances
    del merger
    dense = DenseMaskMerger()
    start_rss = rss_bytes()
    for frame in sequence:
        started = time.perf_counter()
        dense.add_frame(frame)
        result["dense_ms"].append(1000 * (time.perf_counter() - started))
        result["dense_bytes"].append(dense.masks.numel())
        result["dense_rss"].append(rss_bytes() - start_rss)
    if dense.masks.shape[0] != instances_ours:
        raise RuntimeError(f"reference merged into {dense.masks.shape[0]} instances, ours {instances_ours}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="frames of the merging/memory sequence")
    parser.add_argument("--network-frames", type=int, default=12, help="frames streamed through the network")
    parser.add_argument("--points", type=int, default=20000, help="points per frame (ESAM: 20,000)")
    parser.add_argument("--instances", type=int, default=20, help="instances per frame into merging (ESAM MV topk 20)")
    parser.add_argument("--mask-points", type=int, default=800, help="points per instance mask")
    parser.add_argument("--model", choices=("narrow", "base"), default="narrow")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    network, merging, parameters, merged = bench_streaming(args.model, args.network_frames, args.points, args.instances, args.mask_points)
    net_ms, merge_ms = 1000 * statistics.median(network), 1000 * statistics.median(merging)
    print(f"## Streaming, {args.points} points/frame, {args.model} ESAMOnline ({parameters / 1e6:.2f} M parameters), "
          f"CPU x{torch.get_num_threads()}, median of {len(network)} frames after warm-up, {merged} merged instances at the end")
    print("| part | ms / frame | share |")
    print("|---|---|---|")
    print(f"| 3D network (predict_frame) | {net_ms:.1f} | {net_ms / (net_ms + merge_ms):.1%} |")
    print(f"| merging (OnlineInstanceMerger) | {merge_ms:.2f} | {merge_ms / (net_ms + merge_ms):.1%} |")

    memory = bench_memory(args.frames, args.points, args.instances, args.mask_points)
    print(f"\n## Merging memory over {args.frames} frames x {args.points} points, {args.instances} instances/frame "
          f"of {args.mask_points} points; reference: ESAM dense bool masks")
    print("| after frame | ours mask bytes | dense mask bytes | ours / dense | ours ms | dense ms | ours RSS growth MiB | dense RSS growth MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for frame in sorted({1, 10, 25, 50, args.frames}):
        if frame > args.frames:
            continue
        i = frame - 1
        print(f"| {frame} | {memory['ours_bytes'][i] / MiB:.2f} MiB | {memory['dense_bytes'][i] / MiB:.2f} MiB | "
              f"{memory['ours_bytes'][i] / max(memory['dense_bytes'][i], 1):.3f}x | {memory['ours_ms'][i]:.2f} | "
              f"{memory['dense_ms'][i]:.2f} | {memory['ours_rss'][i] / MiB:.1f} | {memory['dense_rss'][i] / MiB:.1f} |")
    ours, dense = statistics.median(memory["ours_ms"][1:]), statistics.median(memory["dense_ms"][1:])
    print(f"\nmerge ms/frame median: ours {ours:.2f}, dense reference {dense:.2f} ({ours / dense:.2f}x)")


if __name__ == "__main__":
    main()
