"""One small synthetic scene, generated and written once per session."""

from __future__ import annotations

import pytest

from bifusion.components.synth import generate_scene, scene_files
from decoded_raw_scene import DecodedRawScene, small_synth_config


@pytest.fixture(scope="session")
def decoded_scene(tmp_path_factory: pytest.TempPathFactory) -> DecodedRawScene:
    config = small_synth_config()
    scene = generate_scene(config, 0)
    return DecodedRawScene.decode(scene, config, dict(scene_files(scene, config)), tmp_path_factory.mktemp("raw"))
