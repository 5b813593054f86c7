"""The bifusion pipeline: declares stage tasks and their wiring only."""


from typing import NamedTuple

from kfp import dsl

from bifusion.pipelines.components import prep_component, synth_component

PIPELINE_NAME = "bifusion"

PipelineOutputs = NamedTuple("PipelineOutputs", sv_uri=str, mv_uri=str, scene_uri=str)


@dsl.pipeline(name=PIPELINE_NAME, description="BiFusion: raw ScanNet (or generated rooms) -> SV/MV training sets")
def bifusion_pipeline(config_json: str, raw_uri: str = "") -> PipelineOutputs:
    """`config_json` is the fully resolved config; `raw_uri` empty means: generate demo rooms first."""
    with dsl.If(raw_uri == "", name="generate-demo-data"):
        synth = synth_component(config_json=config_json).set_display_name("synth")
        prep_generated = prep_component(config_json=config_json, raw_uri=synth.output).set_display_name("prep")
    with dsl.Else(name="use-given-data"):
        prep_given = prep_component(config_json=config_json, raw_uri=raw_uri).set_display_name("prep")
    return PipelineOutputs(
        sv_uri=dsl.OneOf(prep_generated.outputs["sv_uri"], prep_given.outputs["sv_uri"]),
        mv_uri=dsl.OneOf(prep_generated.outputs["mv_uri"], prep_given.outputs["mv_uri"]),
        scene_uri=dsl.OneOf(prep_generated.outputs["scene_uri"], prep_given.outputs["scene_uri"]),
    )
