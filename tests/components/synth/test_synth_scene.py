"""Scenes are a pure function of (seed, index): identical bytes when regenerated, different rooms otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from bifusion.components.synth import generate_scene, scene_files, scene_name
from decoded_raw_scene import DecodedRawScene, small_synth_config


def test_same_seed_and_index_give_identical_bytes(decoded_scene: DecodedRawScene) -> None:
    regenerated = list(scene_files(generate_scene(decoded_scene.config, 0), decoded_scene.config))
    assert regenerated == list(decoded_scene.files.items())
    assert len(regenerated) == 6 + 3 * decoded_scene.config.frames_per_scene


def test_different_seed_or_index_gives_a_different_scene() -> None:
    config = small_synth_config()
    reference = generate_scene(config, 0)
    other_seed = generate_scene(small_synth_config("synth.seed=1"), 0)
    other_index = generate_scene(config, 1)
    for other in (other_seed, other_index):
        assert other.room.size != reference.room.size
        assert not np.allclose(other.room_to_world, reference.room_to_world)
        assert not np.allclose(other.camera.poses(4), reference.camera.poses(4))
    assert other_index.name == "scene9001_00" and other_seed.name == reference.name == "scene9000_00"


def test_scene_names_are_scannet_like_and_outside_the_real_id_range() -> None:
    assert [scene_name(i) for i in (0, 1, 42)] == ["scene9000_00", "scene9001_00", "scene9042_00"]
    with pytest.raises(ValueError, match="index"):
        scene_name(1000)


def test_axis_alignment_inverts_the_random_room_placement() -> None:
    scene = generate_scene(small_synth_config(), 3)
    np.testing.assert_allclose(scene.axis_alignment @ scene.room_to_world, np.eye(4), atol=1e-12)
    rotation = scene.room_to_world[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert rotation[2, 2] == pytest.approx(1.0)  # a yaw about +z: the floor stays horizontal
    assert not np.allclose(rotation, np.eye(3), atol=1e-3)  # ... but the raw frame is not axis-aligned
