"""Compile the pipeline to KFP's IR YAML, with a resolved config as the default of `config_json`."""

from __future__ import annotations

from pathlib import Path

from bifusion.components.config_schema import Config, config_to_json


def compile_pipeline(config: Config, output: Path) -> Path:
    """Write the compiled pipeline to `output` (parent folders created) and return the path."""
    from kfp import compiler

    from bifusion.pipelines.pipeline import bifusion_pipeline

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        bifusion_pipeline, str(output), pipeline_parameters={"config_json": config_to_json(config)}
    )
    return output
