"""Which stages run again from a given stage, and which outputs are taken from the earlier run."""

from __future__ import annotations

import pytest

from bifusion.pipelines.reuse import downstream_stages, parse_reuse_items, resolve_reuse
from bifusion.pipelines.run_configs import resolve_pipeline_configs

STEPS = resolve_pipeline_configs(["demo"], [], absolute_workdir=False).steps  # every route
RECORDED = {
    "sv_uri": "s3://b/sv", "mv_uri": "s3://b/mv", "scene_uri": "s3://b/scene", "clip_features_uri": "s3://b/clip",
    **{f"{kind}_{step.stage}": f"s3://b/{kind}/{step.stage}" for step in STEPS for kind in ("checkpoint", "metrics")},
}


def test_downstream_follows_the_init_chain() -> None:
    assert downstream_stages(STEPS, "3d_sv") == {"3d_sv", "3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv"}
    assert downstream_stages(STEPS, "3d_mv") == {"3d_mv"}
    assert downstream_stages(STEPS, "clip_precompute") == {"clip_precompute", "bifusion_sv", "bifusion_mv"}
    with pytest.raises(ValueError, match="from-stage"):
        downstream_stages(STEPS, "train_3d_sv")


def test_from_stage_reuses_everything_upstream_and_aside() -> None:
    reuse = resolve_reuse(STEPS, "bifusion_sv", RECORDED, {})
    assert reuse["clip_features_uri"] == "s3://b/clip" and reuse["sv_uri"] == "s3://b/sv"
    assert "checkpoint_bifusion_sv" not in reuse and "checkpoint_bifusion_mv" not in reuse
    assert reuse["checkpoint_3dtsa_mv"] == "s3://b/checkpoint/3dtsa_mv"
    explicit = resolve_reuse(STEPS, "bifusion_sv", RECORDED, {"clip_features_uri": "file:///new"})
    assert explicit["clip_features_uri"] == "file:///new"


def test_gaps_are_reported() -> None:
    with pytest.raises(ValueError, match="checkpoint_3d_sv"):
        resolve_reuse(STEPS, "3d_mv", {k: v for k, v in RECORDED.items() if k != "checkpoint_3d_sv"}, {})
    with pytest.raises(ValueError, match="all of"):
        resolve_reuse(STEPS, None, {}, {"sv_uri": "s3://b/sv"})
    with pytest.raises(ValueError, match="unknown output"):
        resolve_reuse(STEPS, None, {}, {"checkpoint_4d": "x"})
    with pytest.raises(ValueError, match="NAME=URI"):
        parse_reuse_items(["checkpoint_3d_sv"])
