"""Compile the pipeline to KFP's IR YAML, with resolved configs as the defaults of its config parameters."""

from __future__ import annotations

from pathlib import Path

from bifusion.pipelines.run_configs import PipelineConfigs


def compile_pipeline(configs: PipelineConfigs, output: Path) -> Path:
    """Write the compiled pipeline to `output` (parent folders created) and return the path."""
    from kfp import compiler

    from bifusion.pipelines.pipeline import bifusion_pipeline

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        bifusion_pipeline, str(output), pipeline_parameters=configs.arguments()
    )
    return output
