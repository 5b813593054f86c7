"""Training-step cost of BiFusion over the 3D-only model, with precomputed CLIP features.

Builds both networks from the same config (`components/train/model_factory.py`): the 3D-only
`ESAMSingleView` (Res16UNet34C backbone + query decoder head) and `BiFusionSingleView` (the same backbone,
`BiFusionEncoder`, and a head over the fused 256-d features). Each frame is a synthetic single view: points
unprojected from random pixels of a 640x480 camera at 1-4 m depth, their source pixels, superpoints from
32x32 pixel blocks, and one stored-style float16 (512, 15, 20) CLIP map. One step = forward + a scalar loss
over every decoder output + backward (no CLIP tower: features are precomputed). The two models alternate
every repeat so that load from other processes favours neither; medians and minima are reported. The
added parts (the encoder alone, the decoder head at the fused width) are also timed on their own: on a
loaded machine the whole-step difference is within the noise of a single step, their sum is not.

    python bench/bench_bifusion_encoder.py [--config base] [--frames 2] [--points 20000] [--repeats 3] [--threads 2]

Target: BiFusion step <= 1.15x the 3D-only step (overhead <= 15 %).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from bifusion.components.config_schema import load_config
from bifusion.components.train.model_factory import build_bifusion_model, build_single_view_model
from bifusion.model.bifusion_encoder import FrameCamera
from bifusion.model.esam_model import point_features

IMAGE_SIZE = (640, 480)  # (W, H) of the ScanNet depth grid the source pixels live on
FOCAL_PX = 577.87
SUPERPOINT_BLOCK_PX = 32


def synthetic_frame(points: int, generator: torch.Generator) -> dict:
    """One single-view frame in camera coordinates (cam_to_world = identity)."""
    width, height = IMAGE_SIZE
    u = torch.randint(0, width, (points,), generator=generator)
    v = torch.randint(0, height, (points,), generator=generator)
    depth = 1.0 + 3.0 * torch.rand(points, generator=generator)
    xyz = torch.stack([(u - width / 2) * depth / FOCAL_PX, (v - height / 2) * depth / FOCAL_PX, depth], dim=1)
    blocks = (v // SUPERPOINT_BLOCK_PX) * (width // SUPERPOINT_BLOCK_PX) + u // SUPERPOINT_BLOCK_PX
    intrinsics = torch.tensor([[FOCAL_PX, 0.0, width / 2], [0.0, FOCAL_PX, height / 2], [0.0, 0.0, 1.0]])
    return {
        "xyz": xyz,
        "colors": torch.rand(points, 3, generator=generator),
        "superpoints": torch.unique(blocks, return_inverse=True)[1],
        "source_pixels": torch.stack([u, v], dim=1).float(),
        "camera": FrameCamera(intrinsics, torch.eye(4), IMAGE_SIZE),
    }


def decoder_loss(outputs: list) -> torch.Tensor:
    """A scalar that depends on every decoder output, so backward reaches every trained parameter."""
    total = torch.zeros(())
    for frame in outputs:
        for level in frame.levels:
            total = total + level.class_logits.float().mean() + level.mask_logits.float().mean()
        total = total + frame.semantic_logits.float().mean()
    return total


def step_seconds(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Every timed step of each model; the models alternate, the order flipping every repeat."""
    for step in steps.values():  # warm-up: allocator, kernel selection
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(repeats):
        order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def run(config_name: str, frames: int, points: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_config([config_name])
    generator = torch.Generator().manual_seed(0)
    batch = [synthetic_frame(points, generator) for _ in range(frames)]
    xyz = [f["xyz"] for f in batch]
    colors = [f["colors"] for f in batch]
    superpoints = [f["superpoints"] for f in batch]
    clip_features = torch.randn(frames, config.model.fusion.clip_channels, 15, 20, generator=generator).half()
    cameras = [f["camera"] for f in batch]
    source_pixels = [f["source_pixels"] for f in batch]

    model_3d = build_single_view_model(config.model).train()
    model_bifusion = build_bifusion_model(config.model).train()

    def step_3d() -> None:
        model_3d.zero_grad(set_to_none=True)
        decoder_loss(model_3d(xyz, colors, superpoints, query_fraction=1.0)).backward()

    def step_bifusion() -> None:
        model_bifusion.zero_grad(set_to_none=True)
        outputs, _ = model_bifusion(xyz, colors, superpoints, xyz, clip_features, cameras, source_pixels, query_fraction=1.0)
        decoder_loss(outputs).backward()

    # The parts BiFusion adds, timed alone on fixed backbone features (short steps, so far less exposed to load
    # from other processes than the whole step): the encoder, and the decoder head reading 256-d fused
    # features instead of the backbone's 96-d ones.
    with torch.no_grad():
        backbone_features = point_features(model_3d.backbone, xyz, colors, model_3d.voxel_size)
    fused_width = config.model.fusion.channels

    def step_encoder() -> None:
        model_bifusion.zero_grad(set_to_none=True)
        inputs = [f.clone().requires_grad_(True) for f in backbone_features]
        outputs = model_bifusion.encoder(inputs, xyz, clip_features, cameras, source_pixels)
        sum(output.fused.sum() for output in outputs).backward()

    def step_head(model: torch.nn.Module, width: int) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            inputs = [torch.ones(len(points), width).requires_grad_(True) for points in xyz]
            decoder_loss(model.head(inputs, xyz, superpoints, query_fraction=1.0)).backward()

        return step

    params_3d = sum(p.numel() for p in model_3d.parameters())
    params_bifusion = sum(p.numel() for p in model_bifusion.parameters())
    print(f"config {config_name}: {frames} frames x {points} points, {threads} threads, {repeats} repeats (median)")
    print(f"parameters: 3D-only {params_3d / 1e6:.2f} M, BiFusion {params_bifusion / 1e6:.2f} M")
    times = step_seconds({
        "3d": step_3d, "bifusion": step_bifusion, "encoder": step_encoder,
        "head_3d": step_head(model_3d, config.model.backbone.planes[7]), "head_bifusion": step_head(model_bifusion, fused_width),
    }, repeats)
    for name, label in (("3d", "3D-only "), ("bifusion", "BiFusion")):
        print(f"{label} forward+backward: median {statistics.median(times[name]):.3f} s/step, min {min(times[name]):.3f} s/step")
    # Other processes only ever add time, so the fastest step is the least disturbed estimate; both are shown.
    for name, pick in (("median", statistics.median), ("min", min)):
        ratio = pick(times["bifusion"]) / pick(times["3d"])
        print(f"overhead ({name}): {100 * (ratio - 1):+.1f} % (ratio {ratio:.3f}x; target <= +15 %)")
    encoder, head_delta = min(times["encoder"]), min(times["head_bifusion"]) - min(times["head_3d"])
    step = min(times["3d"])
    print(
        f"parts (min): encoder forward+backward {encoder:.3f} s, decoder head at {fused_width} vs "
        f"{config.model.backbone.planes[7]} input channels {head_delta:+.3f} s -> overhead "
        f"{100 * (encoder + head_delta) / step:+.1f} % of the 3D-only step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="base", help="config whose model section builds both networks")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--points", type=int, default=20000, help="points per frame (prep.points_per_frame in base)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run(args.config, args.frames, args.points, args.repeats, args.threads)


if __name__ == "__main__":
    main()
