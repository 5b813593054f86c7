"""Res16UNet34C forward + backward time and peak memory for every available sparse backend.

Builds a synthetic indoor room (floor, two walls, table, cabinet, sofa, small boxes; surfaces sampled at
~1 cm with 2 mm noise, rgb per surface) voxelised at 2 cm (~100k voxels), then times one training step
per backend: voxelize -> forward -> slice to points -> loss -> backward (kernel maps are built inside the
step, as in training where every scene is new). All backends use the same weights (ESAM's
Res16UNet34C, 37.9 M parameters). Timings are interleaved (backends alternate every repeat) so that load
from other processes favours none; medians are reported.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` over one step; on CPU, each backend runs one step
in a fresh subprocess and reports its peak RSS during the step (VmHWM, reset just before it) minus its RSS
before the step.

    python bench/bench_backbone.py [--voxels 100000] [--repeats 5] [--threads 2] [--device cpu|cuda]

Target on CPU (2 threads): pure PyTorch <= 1.2x spconv's step time.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time

import torch

from bifusion.model.res16unet import res16unet34c
from bifusion.model.sparse import SparseBackend, available_backends, slice_to_points, voxelize

VOXEL_SIZE_M = 0.02
SAMPLE_SPACING_M = 0.01
NOISE_M = 0.002
ROOM_YAW_DEG = 15.0
ROOM_OFFSET_M = (0.31, -0.17, 0.007)


def synthetic_room(target_voxels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points `(N, 3)` metres (z up, room corner at the origin) and rgb `(N, 3)` in [0, 1] of a furnished room
    whose 2 cm voxelisation has about `target_voxels` voxels (the room is scaled to match)."""
    generator = torch.Generator().manual_seed(seed)
    width, depth, height = 3.3, 3.0, 2.4  # ~130k voxels before the horizontal scaling below
    boxes = [  # (min corner xyz, size xyz): table, cabinet, sofa seat + back, small boxes
        ((1.2, 1.0, 0.0), (1.4, 0.8, 0.75)),
        ((0.1, 2.8, 0.0), (0.6, 1.0, 1.8)),
        ((2.6, 0.2, 0.0), (1.8, 0.8, 0.45)),
        ((2.6, 0.2, 0.45), (1.8, 0.2, 0.4)),
    ]
    boxes += [((0.5 + 0.6 * i, 0.3 + 0.25 * (i % 3), 0.0), (0.3, 0.3, 0.3)) for i in range(6)]
    surfaces = [
        ((0.0, 0.0, 0.0), (width, 0.0, 0.0), (0.0, depth, 0.0)),  # floor
        ((0.0, 0.0, 0.0), (width, 0.0, 0.0), (0.0, 0.0, height)),  # wall y = 0
        ((0.0, 0.0, 0.0), (0.0, depth, 0.0), (0.0, 0.0, height)),  # wall x = 0
    ]
    for (x, y, z), (sx, sy, sz) in boxes:
        surfaces += [
            ((x, y, z + sz), (sx, 0.0, 0.0), (0.0, sy, 0.0)),  # top
            ((x, y, z), (sx, 0.0, 0.0), (0.0, 0.0, sz)),  # front / back
            ((x, y + sy, z), (sx, 0.0, 0.0), (0.0, 0.0, sz)),
            ((x, y, z), (0.0, sy, 0.0), (0.0, 0.0, sz)),  # sides
            ((x + sx, y, z), (0.0, sy, 0.0), (0.0, 0.0, sz)),
        ]
    # horizontal scale that gives about target_voxels (floor and furniture tops grow with its square, walls
    # and furniture sides linearly; the exponent was fitted on this layout)
    xy_scale = torch.tensor([1.0, 1.0, 0.0]) * ((target_voxels / 130_000) ** 0.65 - 1.0) + 1.0
    points, colours = [], []
    for origin, edge_u, edge_v in surfaces:
        origin, edge_u, edge_v = (torch.tensor(v, dtype=torch.float32) * xy_scale for v in (origin, edge_u, edge_v))
        steps_u = max(2, int(edge_u.norm() / SAMPLE_SPACING_M))
        steps_v = max(2, int(edge_v.norm() / SAMPLE_SPACING_M))
        u, v = torch.meshgrid(torch.linspace(0, 1, steps_u), torch.linspace(0, 1, steps_v), indexing="ij")
        surface = origin + u.reshape(-1, 1) * edge_u + v.reshape(-1, 1) * edge_v
        surface = surface + NOISE_M * torch.randn(surface.shape, generator=generator)
        base = torch.rand(3, generator=generator)
        rgb = (base + 0.05 * torch.randn(surface.shape, generator=generator)).clamp(0, 1)
        points.append(surface)
        colours.append(rgb)
    # scans are not axis-aligned: turn the room about z and move it off the voxel grid
    angle = math.radians(ROOM_YAW_DEG)
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    return torch.cat(points) @ rotation.T + torch.tensor(ROOM_OFFSET_M), torch.cat(colours)


def training_step(model: torch.nn.Module, points: torch.Tensor, colours: torch.Tensor) -> tuple[float, float]:
    """One voxelize -> forward -> slice -> loss -> backward; returns (forward s, backward s)."""
    device = points.device
    start = time.perf_counter()
    batch = torch.zeros(len(points), dtype=torch.long, device=device)
    voxels, point_to_voxel = voxelize(points, batch, colours, VOXEL_SIZE_M)
    point_features = slice_to_points(model(voxels), point_to_voxel)
    loss = point_features.square().mean()
    _synchronise(device)
    middle = time.perf_counter()
    loss.backward()
    _synchronise(device)
    return middle - start, time.perf_counter() - middle


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(backend: SparseBackend, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)  # same initial weights for every backend
    return res16unet34c(backend=backend).to(device).train()


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM: peak RSS of this process image) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cpu_peak_memory_child(backend_value: str, target_voxels: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    points, colours = synthetic_room(target_voxels, seed=0)
    model = build_model(SparseBackend(backend_value), torch.device("cpu"))
    # reset VmHWM to the current RSS so that only the step counts (getrusage's ru_maxrss would also carry the
    # parent's size across fork + exec)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_bytes("VmRSS")
    training_step(model, points, colours)
    queue.put(_status_bytes("VmHWM") - before)


def cpu_peak_memory(backend: SparseBackend, target_voxels: int, threads: int) -> int:
    """Peak RSS growth (bytes) of one training step in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_cpu_peak_memory_child, args=(backend.value, target_voxels, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def cuda_peak_memory(model: torch.nn.Module, points: torch.Tensor, colours: torch.Tensor) -> int:
    model.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats(points.device)
    baseline = torch.cuda.memory_allocated(points.device)
    training_step(model, points, colours)
    return torch.cuda.max_memory_allocated(points.device) - baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=100_000, help="approximate voxels of the scene")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends = available_backends()
    points, colours = synthetic_room(args.voxels, seed=0)
    points, colours = points.to(device), colours.to(device)
    voxels, _ = voxelize(points, torch.zeros(len(points), dtype=torch.long, device=device), colours, VOXEL_SIZE_M)
    print(
        f"scene: {len(points)} points, {voxels.num_voxels} voxels at {VOXEL_SIZE_M} m; device {device}, "
        f"{torch.get_num_threads()} threads; backends: {', '.join(b.value for b in backends)}"
    )
    models = {backend: build_model(backend, device) for backend in backends}
    times: dict[SparseBackend, list[tuple[float, float]]] = {backend: [] for backend in backends}
    for repeat in range(args.warmup + args.repeats):
        order = backends if repeat % 2 == 0 else backends[::-1]
        for backend in order:
            models[backend].zero_grad(set_to_none=True)
            step = training_step(models[backend], points, colours)
            if repeat >= args.warmup:
                times[backend].append(step)
    peaks = {}
    if not args.skip_memory:
        for backend in backends:
            if device.type == "cuda":
                peaks[backend] = cuda_peak_memory(models[backend], points, colours)
            else:
                peaks[backend] = cpu_peak_memory(backend, args.voxels, args.threads)
    print(f"\n| backend | forward s | backward s | step s (median of {args.repeats}) | min step s | peak memory MiB |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for backend in backends:
        forward = statistics.median(t[0] for t in times[backend])
        backward = statistics.median(t[1] for t in times[backend])
        medians[backend] = statistics.median(t[0] + t[1] for t in times[backend])
        fastest = min(t[0] + t[1] for t in times[backend])
        peak = f"{peaks[backend] / 2**20:.0f}" if backend in peaks else "-"
        print(f"| {backend.value} | {forward:.2f} | {backward:.2f} | {medians[backend]:.2f} | {fastest:.2f} | {peak} |")
    if SparseBackend.SPCONV in medians:
        ratio = medians[SparseBackend.TORCH] / medians[SparseBackend.SPCONV]
        print(f"\npure PyTorch / spconv step time: {ratio:.2f}x (target <= 1.2x on CPU)")


if __name__ == "__main__":
    main()
