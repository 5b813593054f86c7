"""Config inheritance, overrides and strict schema checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifusion.components.config import ConfigError, fingerprint
from bifusion.components.config_schema import config_from_json, config_to_json, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_defines_every_option() -> None:
    config = load_config(["base"])
    assert config.prep.sv_frame_step == 200
    assert config.prep.mv_frame_step == 40
    assert config.prep.points_per_frame == 20000
    assert config.prep.depth_scale == 1000.0


def test_diff_inherits_base_and_overrides_only_its_keys() -> None:
    demo = load_config(["demo"])
    base = load_config(["base"])
    assert demo.synth.num_scenes == 3
    assert demo.synth.seed == base.synth.seed
    assert demo.prep.mv_frame_step == base.prep.mv_frame_step


def test_chain_of_diffs_and_overlay_keeps_experiment_diffs(tmp_path: Path) -> None:
    write(tmp_path / "sv.yaml", "_base_: base.yaml\nprep:\n  points_per_frame: 1000\n  workers: 3\n")
    write(tmp_path / "mv.yaml", "_base_: sv.yaml\nprep:\n  workers: 4\n")
    write(tmp_path / "profile.yaml", "_base_: base.yaml\nsynth:\n  num_scenes: 1\n")
    config = load_config([tmp_path / "mv.yaml", tmp_path / "profile.yaml"])
    assert config.prep.points_per_frame == 1000  # from sv
    assert config.prep.workers == 4  # mv overrides sv
    assert config.synth.num_scenes == 1  # profile overlay
    # the overlay's own base did not reset the experiment's diffs
    assert config.prep.points_per_frame != load_config(["base"]).prep.points_per_frame


def test_overrides_are_typed_from_yaml() -> None:
    config = load_config(["base"], ["prep.workers=5", "prep.depth_range_m=[0.2, 4]", "tracking.uri=null", "storage.root=s3://b/p"])
    assert config.prep.workers == 5
    assert config.prep.depth_range_m == (0.2, 4.0)
    assert config.tracking.uri is None
    assert config.storage.root == "s3://b/p"


def test_misspelt_override_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'workers'"):
        load_config(["base"], ["prep.worker=2"])


def test_unknown_key_in_a_file_is_an_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "_base_: base\nprep:\n  point_per_frame: 10\n")
    with pytest.raises(ConfigError, match=r"prep: unknown key 'point_per_frame'; did you mean 'points_per_frame'"):
        load_config([bad])


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"prep.points_per_frame: expected an integer"):
        load_config(["base"], ["prep.points_per_frame=many"])
    with pytest.raises(ConfigError, match=r"prep.superpoints.method: 'sam' is not one of"):
        load_config(["base"], ["prep.superpoints.method=sam"])
    with pytest.raises(ConfigError, match=r"prep.depth_range_m: expected 2 items"):
        load_config(["base"], ["prep.depth_range_m=[1, 2, 3]"])


def test_missing_key_is_an_error(tmp_path: Path) -> None:
    partial = write(tmp_path / "partial.yaml", "workdir: x\n")
    with pytest.raises(ConfigError, match="storage: missing"):
        load_config([partial])


def test_inheritance_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config([tmp_path / "a.yaml"])


def test_unknown_config_name_lists_builtins() -> None:
    with pytest.raises(ConfigError, match="built-in configs: .*demo"):
        load_config(["no-such-config"])


def test_yaml_round_trip_and_fingerprint() -> None:
    config = load_config(["demo"], ["prep.workers=1"])
    assert config_from_json(config_to_json(config)) == config
    assert fingerprint(config.prep) == fingerprint(config_from_json(config_to_json(config)).prep)
    assert fingerprint(config.prep) != fingerprint(load_config(["demo"], ["prep.seed=1"]).prep)
