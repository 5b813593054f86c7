"""Resolved configs of one pipeline run: the profile config for data and evaluation stages, and one
config per training stage (its experiment file + the same profile and overrides)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bifusion.components.config_schema import Config, config_to_json, load_config
from bifusion.components.train.stages import TRAIN_STAGES


@dataclass(frozen=True)
class PipelineConfigs:
    base: Config  # synth, prep, evaluate (plus storage, tracking, workdir shared by all)
    training: dict[str, Config]  # stage -> experiments/<stage>.yaml merged with the profile

    def arguments(self) -> dict[str, str]:
        """Pipeline parameters: each task receives the whole resolved config it runs with (cache keys follow it)."""
        arguments = {"config_json": config_to_json(self.base)}
        arguments.update({f"train_{stage}_config_json": config_to_json(config) for stage, config in self.training.items()})
        return arguments


def resolve_pipeline_configs(refs: Sequence[str | Path], overrides: Sequence[str], absolute_workdir: bool = True) -> PipelineConfigs:
    """Resolve every stage's config from the same profile files and overrides.

    With `absolute_workdir`, the workdir is made absolute once, so local tasks (other processes, maybe
    another cwd) agree on it.
    """
    overrides = list(overrides)
    base = load_config(refs, overrides)
    if absolute_workdir:
        overrides.append(f"workdir={Path(base.workdir).resolve()}")
        base = load_config(refs, overrides)
    training = {stage: load_config([f"experiments/{stage}", *refs], overrides) for stage in TRAIN_STAGES}
    return PipelineConfigs(base, training)
