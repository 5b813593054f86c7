"""The compiled pipeline is valid KFP IR: it loads back in kfp with the stages and the resolved default config."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import components

from bifusion.components.config_schema import config_from_json, load_config
from bifusion.pipelines.compile import compile_pipeline


def test_compiled_yaml_loads_back_in_kfp(tmp_path: Path) -> None:
    config = load_config(["demo"], ["prep.workers=3"])
    path = compile_pipeline(config, tmp_path / "out" / "pipeline.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "bifusion"
    spec = yaml.safe_load(path.read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"config_json", "raw_uri"}
    assert config_from_json(inputs["config_json"]["defaultValue"]) == config
    executors = spec["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-").rstrip("-2") for name in executors} >= {"synth-component", "prep-component"}
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == {"sv_uri", "mv_uri", "scene_uri"}
