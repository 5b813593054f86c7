"""`bifusion synth`: write procedural demo rooms in the raw ScanNet layout to the store.

Scenes are generated in worker processes; each finished scene publishes `_synth/<scene>.json` last, so a
re-run skips finished scenes. The split files, which downstream stages read first, are published after
every scene is complete.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from bifusion.components.config import fingerprint
from bifusion.components.config_schema import Config, StorageConfig, SynthConfig
from bifusion.components.parallel import Progress, run_jobs
from bifusion.components.storage import Storage, join_uri
from bifusion.components.synth import generate_scene, scene_files, scene_name, split_files
from bifusion.components.tracking import stage_run


@dataclass(frozen=True)
class SynthResult:
    raw_uri: str
    scenes: list[str]
    summary: dict[str, Any]


@dataclass(frozen=True)
class SynthJob:
    storage: StorageConfig
    workdir: str
    output_uri: str
    synth: SynthConfig
    index: int
    config_fingerprint: str


def synth_fingerprint(synth: SynthConfig) -> str:
    """Identity of a generated data set: every option except the worker count."""
    return fingerprint(dataclasses.replace(synth, workers=0))


def _marker_uri(output_uri: str, scene: str) -> str:
    return join_uri(output_uri, "_synth", f"{scene}.json")


def write_scene(job: SynthJob, progress: Progress) -> dict[str, Any]:
    """Generate one scene and publish its files, the completion marker last (runs in a worker)."""
    storage = Storage(job.storage, job.workdir)
    scene = generate_scene(job.synth, job.index)
    name = scene_name(job.index)
    files = 0
    for relative, data in scene_files(scene, job.synth):
        storage.write_bytes(join_uri(job.output_uri, relative), data)
        files += 1
        if relative.endswith(".jpg"):
            progress.put(1)
    record = {"scene": name, "fingerprint": job.config_fingerprint, "files": files}
    storage.write_json(_marker_uri(job.output_uri, name), record)
    return record


def run_synth(config: Config, output_uri: str | None = None) -> SynthResult:
    """Generate `synth.num_scenes` rooms (skipping finished ones) into `output_uri` (default: by fingerprint)."""
    synth = config.synth
    storage = Storage(config.storage, config.workdir)
    config_fingerprint = synth_fingerprint(synth)
    output_uri = storage.resolve(output_uri or join_uri(storage.root, "synth", config_fingerprint))
    sections = {"workdir": config.workdir, "storage": config.storage, "synth": synth}
    with stage_run("synth", config, sections, {"bifusion.output_uri": output_uri}) as run:
        started = time.monotonic()
        scenes = [scene_name(i) for i in range(synth.num_scenes)]
        jobs = []
        for index, scene in enumerate(scenes):
            marker = _marker_uri(output_uri, scene)
            if storage.exists(marker) and storage.read_json(marker).get("fingerprint") == config_fingerprint:
                continue
            jobs.append(SynthJob(config.storage, str(storage.workdir), output_uri, synth, index, config_fingerprint))
        records: list[dict[str, Any]] = []

        def collect(record: dict[str, Any]) -> None:
            records.append(record)
            run.log_metrics({"scenes_done": len(records)}, step=len(records))

        run_jobs(write_scene, jobs, synth.workers, len(jobs) * synth.frames_per_scene, "synth frames", collect)
        for name, data in split_files(synth).items():
            storage.write_bytes(join_uri(output_uri, name), data)
        seconds = time.monotonic() - started
        summary = {
            "scenes": len(scenes),
            "scenes_generated": len(jobs),
            "frames_per_scene": synth.frames_per_scene,
            "seconds": round(seconds, 3),
            "frames_per_second": round(len(jobs) * synth.frames_per_scene / seconds, 3) if jobs else 0.0,
        }
        run.log_metrics({k: v for k, v in summary.items() if k != "frames_per_scene"})
        run.log_dict(summary, "summary.json")
        storage.write_json(join_uri(output_uri, "summary.json"), summary)
    return SynthResult(output_uri, scenes, summary)
