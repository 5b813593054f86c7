"""Run the pipeline from a given stage on, taking everything upstream from an earlier run by URI.

`--from-stage 3d_mv --reuse-run RUN` re-runs 3d_mv (and whatever starts from its checkpoint) and takes the
prepared sets, the CLIP features and the other stages' checkpoints and metrics from the pipeline run RUN
recorded; `--reuse NAME=URI` names or replaces single outputs (names as the pipeline's outputs:
sv_uri, mv_uri, scene_uri, clip_features_uri, checkpoint_<stage>, metrics_<stage>).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from bifusion.components.cli import parse_name_uri
from bifusion.pipelines.stage_graph import TrainingStep

DATA_OUTPUTS = ("sv_uri", "mv_uri", "scene_uri")
CLIP_STAGE = "clip_precompute"


def downstream_stages(steps: Sequence[TrainingStep], stage: str) -> set[str]:
    """`stage` and every training stage that starts, directly or not, from its checkpoint (or its features)."""
    names = {step.stage for step in steps}
    if stage == CLIP_STAGE:
        chosen = {CLIP_STAGE} | {name for name in names if name.startswith("bifusion")}
    elif stage in names:
        chosen = {stage}
    else:
        raise ValueError(f"--from-stage {stage!r}: expected {CLIP_STAGE} or one of this run's stages {sorted(names)}")
    for step in steps:  # dependency order: an init stage comes before the stages it initialises
        if step.init_from in chosen:
            chosen.add(step.stage)
    return chosen


def parse_reuse_items(items: Sequence[str]) -> dict[str, str]:
    return parse_name_uri(list(items), "--reuse", "checkpoint_3d_sv=s3://bucket/store/train/3d_sv/.../best.pt")


def resolve_reuse(
    steps: Sequence[TrainingStep], from_stage: str | None, recorded: Mapping[str, str], explicit: Mapping[str, str]
) -> dict[str, str]:
    """The outputs to take instead of running their tasks, checked to leave no gap in the DAG."""
    known = {*DATA_OUTPUTS, "clip_features_uri", *(f"{kind}_{step.stage}" for step in steps for kind in ("checkpoint", "metrics"))}
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise ValueError(f"--reuse: unknown output name(s) {unknown}; known: {sorted(known)}")
    wanted: set[str] = set()
    if from_stage is not None:
        rerun = downstream_stages(steps, from_stage)
        wanted |= set(DATA_OUTPUTS)
        if CLIP_STAGE not in rerun and any(step.stage.startswith("bifusion") for step in steps):
            wanted.add("clip_features_uri")
        for step in steps:
            if step.stage not in rerun:
                wanted |= {f"checkpoint_{step.stage}", f"metrics_{step.stage}"}
    missing = sorted(name for name in wanted if name not in explicit and name not in recorded)
    if missing:
        raise ValueError(f"--from-stage {from_stage}: the reused run recorded no {missing}; pass them with --reuse NAME=URI")
    reuse = {name: recorded[name] for name in wanted if name not in explicit}
    reuse.update(explicit)
    check_reuse(steps, reuse)
    return reuse


def check_reuse(steps: Sequence[TrainingStep], reuse: Mapping[str, str]) -> None:
    """Data is all-or-nothing, and a stage that runs has its init checkpoint run or reused."""
    given = [name for name in DATA_OUTPUTS if name in reuse]
    if given and len(given) != len(DATA_OUTPUTS):
        raise ValueError(f"--reuse: give all of {list(DATA_OUTPUTS)} (one prep output) or none; got {given}")
    for step in steps:
        if f"checkpoint_{step.stage}" in reuse and f"metrics_{step.stage}" not in reuse:
            raise ValueError(f"--reuse checkpoint_{step.stage} needs metrics_{step.stage} too (the ablation summary reads it)")
