"""The bifusion pipeline: declares stage tasks and their wiring only."""

from typing import NamedTuple

from kfp import dsl

from bifusion.pipelines.components import evaluate_component, prep_component, synth_component, train_component

PIPELINE_NAME = "bifusion"

PipelineOutputs = NamedTuple(
    "PipelineOutputs", sv_uri=str, mv_uri=str, scene_uri=str, checkpoint_3d_sv=str, metrics_3d_sv=str
)


@dsl.pipeline(name=PIPELINE_NAME, description="BiFusion: raw ScanNet (or generated rooms) -> prepared sets -> trained and evaluated models")
def bifusion_pipeline(config_json: str, train_3d_sv_config_json: str, raw_uri: str = "") -> PipelineOutputs:
    """Each `*config_json` is a fully resolved config; `raw_uri` empty means: generate demo rooms first."""
    with dsl.If(raw_uri == "", name="generate-demo-data"):
        synth = synth_component(config_json=config_json).set_display_name("synth")
        prep_generated = prep_component(config_json=config_json, raw_uri=synth.output).set_display_name("prep")
    with dsl.Else(name="use-given-data"):
        prep_given = prep_component(config_json=config_json, raw_uri=raw_uri).set_display_name("prep")
    sv_uri = dsl.OneOf(prep_generated.outputs["sv_uri"], prep_given.outputs["sv_uri"])
    mv_uri = dsl.OneOf(prep_generated.outputs["mv_uri"], prep_given.outputs["mv_uri"])
    scene_uri = dsl.OneOf(prep_generated.outputs["scene_uri"], prep_given.outputs["scene_uri"])

    train_3d_sv = train_component(
        config_json=train_3d_sv_config_json, stage="3d_sv", data_uri=sv_uri, init_checkpoint_uri=""
    ).set_display_name("train 3d_sv")
    evaluate_3d_sv = evaluate_component(
        config_json=config_json, checkpoint_uri=train_3d_sv.outputs["best_checkpoint_uri"], data_uri=sv_uri
    ).set_display_name("evaluate 3d_sv")
    return PipelineOutputs(
        sv_uri=sv_uri, mv_uri=mv_uri, scene_uri=scene_uri,
        checkpoint_3d_sv=train_3d_sv.outputs["best_checkpoint_uri"], metrics_3d_sv=evaluate_3d_sv.outputs["metrics_json"],
    )
