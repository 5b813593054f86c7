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
