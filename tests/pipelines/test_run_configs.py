"""Per-stage overrides and the training steps of the chosen routes."""

from __future__ import annotations

import pytest

from bifusion.pipelines.run_configs import resolve_pipeline_configs, split_stage_overrides


def test_stage_prefixed_overrides_apply_to_that_stage_only() -> None:
    configs = resolve_pipeline_configs(
        ["demo"], ["train.lr=0.01", "3d_mv:train.max_iterations=7", "storage.root=s3://bucket/x"], absolute_workdir=False
    )
    assert configs.training["3d_mv"].train.max_iterations == 7
    assert configs.training["3d_sv"].train.max_iterations == 300
    assert all(config.train.lr == 0.01 for config in configs.training.values())
    assert configs.base.storage.root == "s3://bucket/x"  # a colon inside a value is not a stage prefix
    assert [step.stage for step in configs.steps] == ["3d_sv", "3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv"]
    assert {step.stage: step.init_from for step in configs.steps}["3dtsa_sv"] == "3d_sv"


def test_overrides_for_a_stage_outside_the_routes_are_rejected() -> None:
    with pytest.raises(ValueError, match="bifusion_sv"):
        resolve_pipeline_configs(["demo"], ["pipeline.routes=[3d]", "bifusion_sv:train.lr=1"], absolute_workdir=False)


def test_split_keeps_values_with_colons_shared() -> None:
    shared, per_stage = split_stage_overrides(["prep.split_files={train: a.txt}", "3d_sv:train.lr=1"])
    assert shared == ["prep.split_files={train: a.txt}"] and per_stage == {"3d_sv": ["train.lr=1"]}
