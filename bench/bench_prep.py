"""Prep throughput: frames/s with 1 and 2 worker processes on the same generated raw set, in one run.

    python bench/bench_prep.py [--scenes 4] [--frames 30] [--width 640 --height 480]

Generates ScanNet-sized frames (640x480, 20,000 points per frame by default) once, then prepares them
from scratch with each worker count and prints frames/s and the speed-up over one worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bifusion.components.config_schema import load_config
from bifusion.components.prep.stage import run_prep
from bifusion.components.synth.stage import run_synth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=30, help="exported frames per scene (MV keeps every 2nd)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        common = [
            f"workdir={workdir}", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
            f"synth.num_scenes={args.scenes}", "synth.num_val_scenes=1", f"synth.frames_per_scene={args.frames}",
            f"synth.width={args.width}", f"synth.height={args.height}", "synth.workers=2",
        ]
        raw = run_synth(load_config(["base"], common), str(workdir / "raw")).raw_uri
        rows = []
        for workers in args.workers:
            config = load_config(["base"], [*common, f"prep.workers={workers}"])
            started = time.perf_counter()
            result = run_prep(config, raw, str(workdir / f"prep-{workers}"))
            seconds = time.perf_counter() - started
            rows.append((workers, result.summary["frames_prepared"], seconds))

    base_rate = rows[0][1] / rows[0][2]
    print(f"\nprep: {args.scenes} scenes, {args.width}x{args.height}, 20,000 points/frame (stage wall time incl. start-up)")
    print(f"{'workers':>8} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'vs 1 worker':>12}")
    for workers, frames, seconds in rows:
        rate = frames / seconds
        print(f"{workers:>8} {frames:>7} {seconds:>8.1f} {rate:>9.2f} {rate / base_rate:>11.2f}x")


if __name__ == "__main__":
    main()
