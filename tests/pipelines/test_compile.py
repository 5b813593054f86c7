"""The compiled pipeline is valid KFP IR: it loads back in kfp with the stages and the resolved default config."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import components

from bifusion.components.config_schema import config_from_json
from bifusion.pipelines.compile import compile_pipeline
from bifusion.pipelines.run_configs import resolve_pipeline_configs


def test_compiled_yaml_loads_back_in_kfp(tmp_path: Path) -> None:
    configs = resolve_pipeline_configs(["demo"], ["prep.workers=3"], absolute_workdir=False)
    path = compile_pipeline(configs, tmp_path / "out" / "pipeline.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "bifusion"
    spec = yaml.safe_load(path.read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"config_json", "train_3d_sv_config_json", "raw_uri"}
    assert config_from_json(inputs["config_json"]["defaultValue"]) == configs.base
    assert config_from_json(inputs["train_3d_sv_config_json"]["defaultValue"]) == configs.training["3d_sv"]
    executors = spec["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-").rstrip("-2") for name in executors} >= {
        "synth-component", "prep-component", "train-component", "evaluate-component"
    }
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == {"sv_uri", "mv_uri", "scene_uri", "checkpoint_3d_sv", "metrics_3d_sv"}
