"""The bifusion pipeline: declares stage tasks and their wiring only.

The DAG depends on the chosen model routes (`pipeline.routes`), so the pipeline function is built for a
list of training steps: prep -> [clip_precompute] -> each route's SV stage -> its MV stage, every trained
stage evaluated (SV stages on frames, MV stages on whole scenes), then one ablation summary over all of
them. `placement` lets the cluster build attach resources, node selectors, secrets and retries per stage
(the local run attaches nothing).
"""

import inspect
from typing import Any, Callable, Mapping, NamedTuple

from kfp import dsl

from bifusion.pipelines.components import (
    clip_precompute_component,
    evaluate_component,
    prep_component,
    summary_component,
    synth_component,
    train_component,
)
from bifusion.pipelines.stage_graph import TrainingStep

PIPELINE_NAME = "bifusion"
PIPELINE_DESCRIPTION = "BiFusion: raw ScanNet (or generated rooms) -> prepared sets -> trained and evaluated models"

TaskPlacement = Callable[[dsl.PipelineTask, str], None]  # (task, stage name) -> attaches cluster settings


def no_placement(task: dsl.PipelineTask, stage: str) -> None:
    """Local runs: kfp.local ignores resources and Kubernetes settings."""


def stage_config_parameter(stage: str) -> str:
    return f"train_{stage}_config_json"


def output_names(steps: list[TrainingStep], reuse: Mapping[str, str] = {}) -> list[str]:
    """The pipeline's outputs: what its tasks produce (reused values are inputs, not outputs)."""
    names = ["sv_uri", "mv_uri", "scene_uri"]
    if any(step.stage.startswith("bifusion") for step in steps):
        names.append("clip_features_uri")
    for step in steps:
        names += [f"checkpoint_{step.stage}", f"metrics_{step.stage}"]
    return [name for name in names if name not in reuse] + ["ablation_markdown"]


def build_pipeline(steps: list[TrainingStep], placement: TaskPlacement = no_placement, reuse: Mapping[str, str] = {}) -> Any:
    """A KFP pipeline function for these training steps (see `stage_graph.training_steps`).

    `reuse` (see `reuse.resolve_reuse`): outputs of an earlier run taken as they are; their tasks are left out."""
    outputs_type = NamedTuple("PipelineOutputs", [(name, str) for name in output_names(steps, reuse)])
    with_clip = any(step.stage.startswith("bifusion") for step in steps)

    def body(config_json: str, raw_uri: str = "", **stage_configs: str):
        def placed(task: dsl.PipelineTask, stage: str, display: str) -> dsl.PipelineTask:
            task.set_display_name(display)
            placement(task, stage)
            return task

        results: dict[str, Any] = {}
        if "sv_uri" in reuse:
            sets: dict[str, Any] = {name: reuse[name] for name in ("sv_uri", "mv_uri", "scene_uri")}
        else:
            with dsl.If(raw_uri == "", name="generate-demo-data"):
                synth = placed(synth_component(config_json=config_json), "synth", "synth")
                prep_generated = placed(prep_component(config_json=config_json, raw_uri=synth.output), "prep", "prep")
            with dsl.Else(name="use-given-data"):
                prep_given = placed(prep_component(config_json=config_json, raw_uri=raw_uri), "prep", "prep")
            sets = {name: dsl.OneOf(prep_generated.outputs[name], prep_given.outputs[name]) for name in ("sv_uri", "mv_uri", "scene_uri")}
            results.update(sets)
        clip_features_uri: Any = reuse.get("clip_features_uri", "")
        if with_clip and "clip_features_uri" not in reuse:
            clip = clip_precompute_component(config_json=config_json, sv_uri=sets["sv_uri"], mv_uri=sets["mv_uri"])
            clip_features_uri = results["clip_features_uri"] = placed(clip, "clip_precompute", "clip precompute").output

        checkpoints: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        for step in steps:
            if f"checkpoint_{step.stage}" in reuse:
                checkpoints[step.stage] = reuse[f"checkpoint_{step.stage}"]
                metrics[step.stage] = reuse[f"metrics_{step.stage}"]
                continue
            uses_clip = step.stage.startswith("bifusion")
            train = train_component(
                config_json=stage_configs[stage_config_parameter(step.stage)],
                stage=step.stage,
                data_uri=sets["mv_uri"] if step.multi_view else sets["sv_uri"],
                init_checkpoint_uri=checkpoints[step.init_from] if step.init_from else "",
                clip_features_uri=clip_features_uri if uses_clip else "",
            )
            placed(train, f"train_{step.stage}", f"train {step.stage}")
            checkpoints[step.stage] = train.outputs["best_checkpoint_uri"]
            evaluate = evaluate_component(
                config_json=config_json,
                checkpoint_uri=checkpoints[step.stage],
                data_uri=sets["scene_uri"] if step.multi_view else sets["sv_uri"],
                clip_features_uri=clip_features_uri if uses_clip else "",
            )
            placed(evaluate, step.evaluation_stage, f"evaluate {step.stage}")
            metrics[step.stage] = evaluate.outputs["metrics_json"]
            results[f"checkpoint_{step.stage}"] = checkpoints[step.stage]
            results[f"metrics_{step.stage}"] = metrics[step.stage]
        summary = summary_component(config_json=config_json, **{f"metrics_{stage}": value for stage, value in metrics.items()})
        results["ablation_markdown"] = placed(summary, "summary", "ablation summary").output
        return outputs_type(**results)

    # KFP reads the parameters from the signature: one resolved config per training stage.
    parameters = [
        inspect.Parameter("config_json", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
        *(inspect.Parameter(stage_config_parameter(step.stage), inspect.Parameter.KEYWORD_ONLY, annotation=str) for step in steps),
        inspect.Parameter("raw_uri", inspect.Parameter.KEYWORD_ONLY, default="", annotation=str),
    ]

    def pipeline_function(*args: str, **kwargs: str) -> outputs_type:  # type: ignore[valid-type]
        # The compiler passes every parameter positionally in signature order; kfp.local passes keywords.
        named = dict(zip((p.name for p in parameters), args)) | kwargs
        return body(named.pop("config_json"), named.pop("raw_uri", ""), **named)

    pipeline_function.__signature__ = inspect.Signature(parameters, return_annotation=outputs_type)  # type: ignore[attr-defined]
    pipeline_function.__annotations__ = {p.name: str for p in parameters} | {"return": outputs_type}
    pipeline_function.__name__ = "bifusion_pipeline"
    pipeline_function.__doc__ = "Each `*config_json` is a fully resolved config; `raw_uri` empty means: generate demo rooms first."
    return dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)(pipeline_function)
