"""Compile the pipeline to KFP's IR YAML, with resolved configs as the defaults of its config parameters."""

from __future__ import annotations

from pathlib import Path

from bifusion.pipelines.pipeline import TaskPlacement, build_pipeline, no_placement
from bifusion.pipelines.run_configs import PipelineConfigs


def compile_pipeline(configs: PipelineConfigs, output: Path, placement: TaskPlacement = no_placement) -> Path:
    """Write the compiled pipeline to `output` (parent folders created) and return the path.

    `placement` attaches per-stage cluster settings (resources, node selectors, secrets, retries)."""
    from kfp import compiler

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_pipeline(configs.steps, placement), str(output), pipeline_parameters=configs.arguments()
    )
    return output
