"""KFP components: thin wrappers that rebuild the resolved config and call a stage function.

They are lightweight Python components so `kfp.local`'s SubprocessRunner can run them; the image they
name must have this package installed (it brings kfp with it). Each returns only URIs: data moves
through the store, never through KFP artifacts. (No `from __future__ import annotations` here: KFP reads
the real annotation objects to build component specs.)
"""

import os
from typing import NamedTuple

from kfp import dsl

STAGE_IMAGE = os.environ.get("BIFUSION_STAGE_IMAGE", "ghcr.io/bifusion/bifusion-pipeline:0.1.0")


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def synth_component(config_json: str) -> str:
    """Generate the demo rooms; returns the raw root URI."""
    from bifusion.components.config_schema import config_from_json
    from bifusion.components.synth.stage import run_synth

    return run_synth(config_from_json(config_json)).raw_uri


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def prep_component(config_json: str, raw_uri: str) -> NamedTuple("PrepOutputs", sv_uri=str, mv_uri=str, scene_uri=str):
    """Prepare the SV, MV and scene sets from a raw root; returns their URIs."""
    from collections import namedtuple

    from bifusion.components.config_schema import config_from_json
    from bifusion.components.prep.stage import run_prep

    result = run_prep(config_from_json(config_json), raw_uri)
    return namedtuple("PrepOutputs", "sv_uri mv_uri scene_uri")(result.sv_uri, result.mv_uri, result.scene_uri)


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def train_component(
    config_json: str, stage: str, data_uri: str, init_checkpoint_uri: str, clip_features_uri: str = ""
) -> NamedTuple("TrainOutputs", checkpoint_uri=str, best_checkpoint_uri=str):
    """Train one model stage; `init_checkpoint_uri` empty = start from `train.init_checkpoint`;
    `clip_features_uri` (BiFusion stages) = where clip_precompute wrote the image features."""
    from collections import namedtuple

    from bifusion.components.train.launch import train_in_pod

    # One process here, or torchrun with one process per GPU when the placement gave the pod several.
    result = train_in_pod(config_json, stage, data_uri, init_checkpoint_uri or None, clip_features_uri or None)
    best = result.best_checkpoint_uri or result.checkpoint_uri
    return namedtuple("TrainOutputs", "checkpoint_uri best_checkpoint_uri")(result.checkpoint_uri, best)


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def evaluate_component(
    config_json: str, checkpoint_uri: str, data_uri: str, clip_features_uri: str = ""
) -> NamedTuple("EvaluateOutputs", output_uri=str, metrics_json=str):
    """Score a checkpoint with the ScanNet protocol (SV frames, or whole scenes for MV checkpoints);
    returns where the reports are and the flat metrics."""
    import json
    from collections import namedtuple

    from bifusion.components.config_schema import config_from_json
    from bifusion.components.evaluate.stage import run_evaluate

    result = run_evaluate(config_from_json(config_json), checkpoint_uri, data_uri, clip_features_uri=clip_features_uri or None)
    return namedtuple("EvaluateOutputs", "output_uri metrics_json")(result.output_uri, json.dumps(result.metrics))


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def clip_precompute_component(config_json: str, sv_uri: str, mv_uri: str) -> str:
    """Write the CLIP image features of every frame the SV and MV sets use; returns the feature root URI."""
    from bifusion.components.clip_features.stage import run_clip_precompute
    from bifusion.components.config_schema import config_from_json

    return run_clip_precompute(config_from_json(config_json), [sv_uri, mv_uri]).feature_uri


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def summary_component(
    config_json: str,
    metrics_3d_sv: str = "",
    metrics_3d_mv: str = "",
    metrics_3dtsa_sv: str = "",
    metrics_3dtsa_mv: str = "",
    metrics_bifusion_sv: str = "",
    metrics_bifusion_mv: str = "",
) -> str:
    """The ablation table over every evaluated stage of this run (MLflow artifact); returns it as Markdown."""
    import json

    from bifusion.components.ablation import run_ablation_summary
    from bifusion.components.config_schema import config_from_json

    given = {
        "3d_sv": metrics_3d_sv, "3d_mv": metrics_3d_mv, "3dtsa_sv": metrics_3dtsa_sv,
        "3dtsa_mv": metrics_3dtsa_mv, "bifusion_sv": metrics_bifusion_sv, "bifusion_mv": metrics_bifusion_mv,
    }
    metrics = {stage: json.loads(text) for stage, text in given.items() if text}
    return run_ablation_summary(config_from_json(config_json), metrics).markdown
