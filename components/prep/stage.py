"""`bifusion prep`: raw ScanNet layout (generated or real) -> SV, MV and scene sets in ESAM's format.

Work is split by scene over worker processes. Each finished scene publishes `_scenes/<scene>.json`
last; a re-run with the same config skips those scenes, so an interrupted prep resumes where it stopped.
Info files are written only when every scene is done and the share of skipped frames is acceptable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from bifusion.components.config import fingerprint, to_yaml
from bifusion.components.config_schema import Config, PrepConfig, StorageConfig
from bifusion.components.labels import label_table
from bifusion.components.parallel import Progress, run_jobs
from bifusion.components.prep.esam_format import mv_record, write_infos, write_mv_frame, write_scene, write_sv_sample
from bifusion.components.prep.frame_sample import sample_frame
from bifusion.components.prep.frames import FrameSkipped, list_frames, load_depth_intrinsics, load_frame, sample_frames
from bifusion.components.prep.scene_labels import load_scene_annotation
from bifusion.components.prep.superpoints import combine_with_fallback, felzenszwalb_segments, load_mask_image
from bifusion.components.scannet_raw import SceneLayout, decode_split
from bifusion.components.storage import NotFoundError, Storage, join_uri
from bifusion.components.tracking import stage_run

log = logging.getLogger(__name__)


class PrepError(RuntimeError):
    """The prep stage cannot produce a usable data set; the message says why."""


@dataclass(frozen=True)
class PrepResult:
    output_uri: str
    sv_uri: str
    mv_uri: str
    scene_uri: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class SceneJob:
    """Everything a worker process needs to prepare one scene (picklable)."""

    storage: StorageConfig
    workdir: str
    raw_uri: str
    output_uri: str
    scene: str
    sv_frames: tuple[int, ...]
    mv_frames: tuple[int, ...]
    prep: PrepConfig
    config_fingerprint: str


def prep_fingerprint(prep: PrepConfig, raw_uri: str) -> str:
    """Identity of a prep output: the options that change its content and the input (not the worker count)."""
    return fingerprint(dataclasses.replace(prep, workers=0), raw_uri)


def default_output_uri(storage: Storage, prep: PrepConfig, raw_uri: str) -> str:
    return join_uri(storage.root, "prep", prep_fingerprint(prep, raw_uri))


def read_splits(storage: Storage, raw_uri: str, prep: PrepConfig) -> dict[str, list[str]]:
    """Split name -> scenes, from the split files (paths relative to the raw root, or URIs)."""
    splits = {}
    for split, name in prep.split_files.items():
        uri = name if "://" in name or name.startswith("/") else join_uri(raw_uri, name)
        try:
            splits[split] = decode_split(storage.read_bytes(uri))
        except NotFoundError:
            raise PrepError(f"split file {uri} not found (prep.split_files.{split}); it lists the scenes of the {split} split") from None
    if not any(splits.values()):
        raise PrepError(f"the split files {list(prep.split_files.values())} under {raw_uri} list no scenes")
    return splits


def _segment_image(storage: Storage, layout: SceneLayout, frame: Any, intrinsics: np.ndarray, prep: PrepConfig) -> np.ndarray:
    fallback = felzenszwalb_segments(frame.color, frame.depth_m, intrinsics, prep.superpoints)
    if prep.superpoints.method == "felzenszwalb":
        return fallback
    masks = load_mask_image(storage, layout, prep.superpoints.masks_dir, frame.number, frame.depth_m.shape)
    return combine_with_fallback(masks, fallback)


def prepare_scene(job: SceneJob, progress: Progress) -> dict[str, Any]:
    """Prepare one scene's SV samples, MV sequence and reconstructed scene; publish its record last.

    Runs in a worker process. Bad frames are skipped and reported in the record; malformed scene
    files (mesh, aggregation, segments) raise, naming the file and field.
    """
    storage = Storage(job.storage, job.workdir)
    prep = job.prep
    layout = SceneLayout(job.raw_uri, job.scene, prep.frames_dir)
    frames = sorted(set(job.sv_frames) | set(job.mv_frames))
    record: dict[str, Any] = {
        "scene": job.scene, "fingerprint": job.config_fingerprint, "frames_total": len(frames),
        "skipped": [], "sv": [], "mv": None, "scene_record": None,
    }

    missing = [uri for uri in (layout.mesh, layout.aggregation, layout.segments, layout.meta) if not storage.exists(uri)]
    if missing:
        record["skipped"] = [{"uri": missing[0], "reason": "missing scene file; whole scene skipped"}] * len(frames)
        for _ in frames:
            progress.put(1)
        return _publish_record(storage, job, record)
    annotation = load_scene_annotation(storage, layout, label_table())

    sv_uri, mv_uri, scene_uri = (join_uri(job.output_uri, name) for name in ("sv", "mv", "scene"))
    intrinsics = None
    image_size = (0, 0)
    mv_frames = []
    for number in frames:
        try:
            frame = load_frame(storage, layout, number, prep.depth_scale)
            if intrinsics is None:
                height, width = frame.depth_m.shape
                image_size = (width, height)
                try:
                    intrinsics = load_depth_intrinsics(storage, layout, prep.intrinsics, (width, height))
                except NotFoundError:
                    raise FrameSkipped(layout.intrinsic_depth, "missing file") from None
            segments = _segment_image(storage, layout, frame, intrinsics, prep)
            sample = sample_frame(frame, job.scene, intrinsics, annotation, segments, prep, layout.depth(number))
        except FrameSkipped as skipped:
            record["skipped"].append({"uri": skipped.uri, "reason": skipped.reason})
            progress.put(1)
            continue
        if "sv" in prep.sets and number in job.sv_frames:
            record["sv"].append(
                write_sv_sample(storage, sv_uri, layout, sample, intrinsics, prep.depth_scale, annotation.axis_alignment, image_size)
            )
        if "mv" in prep.sets and number in job.mv_frames:
            mv_frames.append(write_mv_frame(storage, mv_uri, layout, sample))
        progress.put(1)
    if "mv" in prep.sets and mv_frames:
        record["mv"] = mv_record(storage, mv_uri, layout, mv_frames, intrinsics, prep.depth_scale, annotation.axis_alignment, image_size)
    if "scene" in prep.sets:
        record["scene_record"] = write_scene(storage, scene_uri, layout, annotation)
    return _publish_record(storage, job, record)


def _record_uri(output_uri: str, scene: str) -> str:
    return join_uri(output_uri, "_scenes", f"{scene}.json")


def _publish_record(storage: Storage, job: SceneJob, record: dict[str, Any]) -> dict[str, Any]:
    storage.write_json(_record_uri(job.output_uri, job.scene), record)
    return record


def _finished_record(storage: Storage, output_uri: str, scene: str, config_fingerprint: str) -> dict[str, Any] | None:
    uri = _record_uri(output_uri, scene)
    if not storage.exists(uri):
        return None
    record = storage.read_json(uri)
    return record if record.get("fingerprint") == config_fingerprint else None


def _summarise(records: list[dict[str, Any]], splits: dict[str, list[str]], seconds: float) -> dict[str, Any]:
    skipped = [entry for record in records for entry in record["skipped"]]
    frames_total = sum(record["frames_total"] for record in records)
    return {
        "scenes": len(records),
        "frames_total": frames_total,
        "frames_prepared": frames_total - len(skipped),
        "frames_skipped": len(skipped),
        "skipped_by_reason": dict(Counter(entry["reason"].split(" (")[0] for entry in skipped)),
        "skipped": skipped,
        "sv_samples": sum(len(record["sv"]) for record in records),
        "mv_scenes": sum(record["mv"] is not None for record in records),
        "split_sizes": {split: len(scenes) for split, scenes in splits.items()},
        "seconds": round(seconds, 3),
    }


def run_prep(config: Config, raw_uri: str, output_uri: str | None = None) -> PrepResult:
    """Prepare the SV, MV and scene sets of every scene listed in the split files under `raw_uri`."""
    prep = config.prep
    storage = Storage(config.storage, config.workdir)
    raw_uri = storage.resolve(raw_uri)
    config_fingerprint = prep_fingerprint(prep, raw_uri)
    output_uri = storage.resolve(output_uri or default_output_uri(storage, prep, raw_uri))
    sections = {"workdir": config.workdir, "storage": config.storage, "prep": prep}
    tags = {"bifusion.input.raw_uri": raw_uri, "bifusion.output_uri": output_uri}
    with stage_run("prep", config, sections, tags) as run:
        started = time.monotonic()
        splits = read_splits(storage, raw_uri, prep)
        scenes = sorted({scene for members in splits.values() for scene in members})
        storage.write_text(join_uri(output_uri, "config.yaml"), to_yaml(sections))

        records: dict[str, dict[str, Any]] = {}
        jobs = []
        for scene in scenes:
            finished = _finished_record(storage, output_uri, scene, config_fingerprint)
            if finished is not None:
                records[scene] = finished
                continue
            layout = SceneLayout(raw_uri, scene, prep.frames_dir)
            numbers = list_frames(storage, layout)
            jobs.append(SceneJob(
                config.storage, str(storage.workdir), raw_uri, output_uri, scene,
                tuple(sample_frames(numbers, prep.sv_frame_step)) if "sv" in prep.sets else (),
                tuple(sample_frames(numbers, prep.mv_frame_step)) if "mv" in prep.sets else (),
                prep, config_fingerprint,
            ))
        if records:
            log.info("prep: %d of %d scenes already prepared in %s, skipping them", len(records), len(scenes), output_uri)
        total_frames = sum(len(set(job.sv_frames) | set(job.mv_frames)) for job in jobs)

        def collect(record: dict[str, Any]) -> None:
            records[record["scene"]] = record
            for entry in record["skipped"]:
                log.warning("prep skipped %s: %s", entry["uri"], entry["reason"])
            run.log_metrics({"scenes_done": len(records)}, step=len(records))

        run_jobs(prepare_scene, jobs, prep.workers, total_frames, "prep frames", collect)
        ordered = [records[scene] for scene in scenes]
        summary = _summarise(ordered, splits, time.monotonic() - started)
        summary["frames_per_second"] = round(total_frames / summary["seconds"], 3) if summary["seconds"] else 0.0
        bad_fraction = summary["frames_skipped"] / max(summary["frames_total"], 1)
        run.log_metrics({k: summary[k] for k in ("frames_total", "frames_prepared", "frames_skipped", "sv_samples", "mv_scenes")})
        run.log_metrics({"bad_fraction": bad_fraction, "frames_per_second": summary["frames_per_second"]})
        run.log_dict(summary, "summary.json")
        storage.write_json(join_uri(output_uri, "summary.json"), summary)
        if bad_fraction > prep.max_bad_fraction or summary["frames_prepared"] == 0:
            first = "; ".join(f"{e['uri']}: {e['reason']}" for e in summary["skipped"][:3])
            raise PrepError(
                f"{summary['frames_skipped']} of {summary['frames_total']} frames ({bad_fraction:.0%}) were skipped, "
                f"more than prep.max_bad_fraction={prep.max_bad_fraction:.0%}; first: {first}. "
                f"Prepared scenes are kept in {output_uri}; see summary.json there."
            )

        meta = {"bifusion_prep_fingerprint": config_fingerprint, "raw_uri": raw_uri}
        for split, members in splits.items():
            chosen = [records[scene] for scene in members]
            if "sv" in prep.sets:
                write_infos(storage, join_uri(output_uri, "sv"), "sv", split, [r for c in chosen for r in c["sv"]], meta)
            if "mv" in prep.sets:
                write_infos(storage, join_uri(output_uri, "mv"), "mv", split, [c["mv"] for c in chosen if c["mv"]], meta)
            if "scene" in prep.sets:
                write_infos(storage, join_uri(output_uri, "scene"), "scene", split, [c["scene_record"] for c in chosen if c["scene_record"]], meta)
        run.set_tags({"bifusion.output.sv_uri": join_uri(output_uri, "sv"), "bifusion.output.mv_uri": join_uri(output_uri, "mv")})
    return PrepResult(output_uri, join_uri(output_uri, "sv"), join_uri(output_uri, "mv"), join_uri(output_uri, "scene"), summary)
