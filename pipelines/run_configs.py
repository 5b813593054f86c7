"""Resolved configs of one pipeline run: the profile config for data and evaluation stages, and one
config per training stage (its experiment file + the same profile and overrides)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bifusion.components.config_schema import Config, config_to_json, load_config
from bifusion.pipelines.stage_graph import TrainingStep, training_steps


@dataclass(frozen=True)
class PipelineConfigs:
    base: Config  # synth, prep, evaluate (plus storage, tracking, workdir shared by all)
    training: dict[str, Config]  # stage -> experiments/<stage>.yaml merged with the profile

    @property
    def steps(self) -> list[TrainingStep]:
        return training_steps(self.base.pipeline)

    def arguments(self) -> dict[str, str]:
        """Pipeline parameters: each task receives the whole resolved config it runs with (cache keys follow it)."""
        from bifusion.pipelines.pipeline import stage_config_parameter

        arguments = {"config_json": config_to_json(self.base)}
        arguments.update({stage_config_parameter(stage): config_to_json(config) for stage, config in self.training.items()})
        return arguments


def split_stage_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`key=value` applies to every stage; `STAGE:key=value` (e.g. `3d_mv:train.max_iterations=20`) to one
    training stage only."""
    shared: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head and "." not in head:
            per_stage.setdefault(head, []).append(rest)
        else:
            shared.append(item)
    return shared, per_stage


def resolve_pipeline_configs(refs: Sequence[str | Path], overrides: Sequence[str], absolute_workdir: bool = True) -> PipelineConfigs:
    """Resolve every stage's config from the same profile files and overrides (see `split_stage_overrides`).

    With `absolute_workdir`, the workdir is made absolute once, so local tasks (other processes, maybe
    another cwd) agree on it.
    """
    shared, per_stage = split_stage_overrides(overrides)
    overrides = shared
    base = load_config(refs, overrides)
    if absolute_workdir:
        overrides.append(f"workdir={Path(base.workdir).resolve()}")
        base = load_config(refs, overrides)
    steps = training_steps(base.pipeline)
    if "bifusion" in base.pipeline.routes and base.clip.weights is None:
        raise ValueError(
            "pipeline.routes includes bifusion but clip.weights is null: set it to the open_clip ViT-B/16 checkpoint "
            "(file or s3:// URI) the clip_precompute stage loads (or 'random' for a demo without image semantics)"
        )
    unknown = sorted(set(per_stage) - {step.stage for step in steps})
    if unknown:
        raise ValueError(f"stage overrides for {unknown}, which this run does not train (stages: {[s.stage for s in steps]})")
    training = {
        step.stage: load_config([f"experiments/{step.stage}", *refs], [*overrides, *per_stage.get(step.stage, [])]) for step in steps
    }
    return PipelineConfigs(base, training)
