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
    config_json: str, stage: str, data_uri: str, init_checkpoint_uri: str
) -> NamedTuple("TrainOutputs", checkpoint_uri=str, best_checkpoint_uri=str):
    """Train one model stage; `init_checkpoint_uri` empty = start from `train.init_checkpoint`."""
    from collections import namedtuple

    from bifusion.components.config_schema import config_from_json
    from bifusion.components.train.stage import run_train

    result = run_train(config_from_json(config_json), stage, data_uri, init_checkpoint_uri or None)
    best = result.best_checkpoint_uri or result.checkpoint_uri
    return namedtuple("TrainOutputs", "checkpoint_uri best_checkpoint_uri")(result.checkpoint_uri, best)


@dsl.component(base_image=STAGE_IMAGE, install_kfp_package=False)
def evaluate_component(config_json: str, checkpoint_uri: str, data_uri: str) -> NamedTuple("EvaluateOutputs", output_uri=str, metrics_json=str):
    """Score a checkpoint with the ScanNet protocol; returns where the reports are and the flat metrics."""
    import json
    from collections import namedtuple

    from bifusion.components.config_schema import config_from_json
    from bifusion.components.evaluate.stage import run_evaluate

    result = run_evaluate(config_from_json(config_json), checkpoint_uri, data_uri)
    return namedtuple("EvaluateOutputs", "output_uri metrics_json")(result.output_uri, json.dumps(result.metrics))
