"""The compiled pipeline is valid KFP IR: it loads back in kfp with the stages and the resolved default config."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import components

from bifusion.components.config_schema import config_from_json
from bifusion.pipelines.compile import compile_pipeline
from bifusion.pipelines.run_configs import resolve_pipeline_configs


def test_compiled_yaml_loads_back_in_kfp(tmp_path: Path) -> None:
    configs = resolve_pipeline_configs(["demo"], ["prep.workers=3", "pipeline.routes=[3d, bifusion]"], absolute_workdir=False)
    path = compile_pipeline(configs, tmp_path / "out" / "pipeline.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "bifusion"
    spec = yaml.safe_load(path.read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    stages = ["3d_sv", "3d_mv", "bifusion_sv", "bifusion_mv"]
    assert set(inputs) == {"config_json", "raw_uri", *(f"train_{stage}_config_json" for stage in stages)}
    assert config_from_json(inputs["config_json"]["defaultValue"]) == configs.base
    assert config_from_json(inputs["train_3d_sv_config_json"]["defaultValue"]) == configs.training["3d_sv"]
    executors = spec["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-").rstrip("-2") for name in executors} >= {
        "synth-component", "prep-component", "train-component", "evaluate-component", "clip-precompute-component",
        "summary-component",
    }
    outputs = {"sv_uri", "mv_uri", "scene_uri", "clip_features_uri", "ablation_markdown"}
    outputs |= {f"{kind}_{stage}" for stage in stages for kind in ("checkpoint", "metrics")}
    assert set(spec["root"]["outputDefinitions"]["parameters"]) == outputs
    tasks = spec["root"]["dag"]["tasks"]
    # bifusion_sv starts from 3d_sv's best checkpoint, bifusion_mv from bifusion_sv's.
    init = tasks["train-component-3"]["inputs"]["parameters"]["init_checkpoint_uri"]["taskOutputParameter"]
    assert init == {"producerTask": "train-component", "outputParameterKey": "best_checkpoint_uri"}


def test_routes_without_the_init_route_are_rejected() -> None:
    import pytest

    with pytest.raises(ValueError, match="bifusion_init"):
        resolve_pipeline_configs(["demo"], ["pipeline.routes=[bifusion]"], absolute_workdir=False)
    with pytest.raises(ValueError, match="clip.weights"):
        resolve_pipeline_configs(["base"], ["pipeline.routes=[3d, bifusion]"], absolute_workdir=False)
