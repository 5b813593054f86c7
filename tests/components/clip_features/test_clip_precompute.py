"""`bifusion clip-precompute`: every referenced image stored once, resume, validation, info files, weights errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from mlflow.tracking import MlflowClient

from bifusion.components.clip_features.features import (
    encode_feature_file,
    feature_file_uri,
    image_relpath,
)
from bifusion.components.clip_features.stage import ClipPrecomputeError, ClipValidationError, run_clip_precompute
from bifusion.components.clip_features.weights import ClipWeightsError
from bifusion.components.prep.esam_format import read_infos
from bifusion.components.scannet_raw import decode_color
from bifusion.components.storage import Storage, local_path
from bifusion.model.clip_branch import clip_image_features, load_clip_visual
from bifusion.pipelines.cli import main
from tests.components.clip_features.conftest import NUM_IMAGES, TINY_INPUT, TINY_MODEL

SV_INFO = "scannet200_sv_oneformer3d_infos_train.pkl"
MV_INFO = "scannet200_mv_oneformer3d_infos_train.pkl"


def referenced_images(prepared) -> tuple[str, list[str]]:
    """Raw root and every image path (relative to it) that the SV and MV infos reference."""
    sv = pickle.loads((Path(prepared.sv_uri) / SV_INFO).read_bytes())
    mv = pickle.loads((Path(prepared.mv_uri) / MV_INFO).read_bytes())
    raw_root = sv["metainfo"]["raw_uri"]
    paths = [r["img_path"] for r in sv["data_list"]] + [p for r in mv["data_list"] for p in r["img_paths"]]
    return raw_root, sorted({image_relpath(p, raw_root) for p in paths})


def feature_files(feature_uri: str) -> dict[str, Path]:
    root = local_path(feature_uri) / "features"
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*.npy") if not p.name.startswith(".")}


def test_precompute_stores_features_of_every_referenced_image(clip_config, one_scene_prepared, tiny_weights: Path) -> None:
    config = clip_config()
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri, one_scene_prepared.mv_uri])

    raw_root, relpaths = referenced_images(one_scene_prepared)
    assert len(relpaths) == NUM_IMAGES == result.images_total == result.computed
    assert result.skipped == 0 and result.validated == 3 and 0.0 <= result.max_l2 < 1e-3
    stored = feature_files(result.feature_uri)
    assert sorted(stored) == [f"{p}.npy" for p in relpaths]
    assert all(p.startswith("2D/scene9000_00/color/") and p.endswith(".jpg") for p in relpaths)

    visual = load_clip_visual(TINY_MODEL, str(tiny_weights), TINY_INPUT)
    first = np.load(stored[f"{relpaths[0]}.npy"])
    image = decode_color((Path(raw_root) / relpaths[0]).read_bytes(), relpaths[0]).copy()
    assert first.dtype == np.float16 and first.shape == (24, 3, 4)
    np.testing.assert_allclose(first.astype(np.float32), clip_image_features(visual, image)[0].float().numpy(), atol=1e-3, rtol=0)
    assert not np.array_equal(first, np.load(stored[f"{relpaths[1]}.npy"]))

    manifest = json.loads((local_path(result.feature_uri) / "manifest.json").read_text())
    assert manifest["raw_root"] == raw_root and manifest["weights_id"].startswith("sha256:")
    runs = MlflowClient(config.tracking.uri).search_runs(
        [MlflowClient(config.tracking.uri).get_experiment_by_name(config.tracking.experiment).experiment_id]
    )
    (run,) = [r for r in runs if r.data.tags.get("bifusion.stage") == "clip_precompute"]
    assert run.data.tags["bifusion.output_uri"] == result.feature_uri
    assert run.data.tags["bifusion.input.set_uris"] == f"{one_scene_prepared.sv_uri},{one_scene_prepared.mv_uri}"
    assert run.data.metrics["computed"] == NUM_IMAGES and run.info.status == "FINISHED"


def test_second_run_skips_every_stored_image_and_a_cut_run_resumes(clip_config, one_scene_prepared) -> None:
    config = clip_config()
    sets = [one_scene_prepared.sv_uri, one_scene_prepared.mv_uri]
    first = run_clip_precompute(config, sets)
    stored = feature_files(first.feature_uri)
    mtimes = {name: path.stat().st_mtime_ns for name, path in stored.items()}

    again = run_clip_precompute(config, sets)
    assert (again.feature_uri, again.computed, again.skipped) == (first.feature_uri, 0, NUM_IMAGES)
    assert {name: path.stat().st_mtime_ns for name, path in stored.items()} == mtimes

    # A run cut short: three files never published, one temp file left behind by the atomic writer.
    lost = sorted(stored)[2:5]
    expected = {name: np.load(stored[name]) for name in lost}
    for name in lost:
        stored[name].unlink()
    (stored[lost[0]].parent / f".{Path(lost[0]).name}.tmp-deadbeef").write_bytes(b"partial")
    resumed = run_clip_precompute(config, sets)
    assert (resumed.computed, resumed.skipped) == (3, NUM_IMAGES - 3)
    for name in lost:
        np.testing.assert_array_equal(np.load(stored[name]), expected[name])


def test_only_the_sv_set_covers_only_sv_images(clip_config, one_scene_prepared) -> None:
    result = run_clip_precompute(clip_config("clip.write_infos=false"), [one_scene_prepared.sv_uri])
    assert result.computed == 3 and result.info_uris == {}  # SV frames 0, 100, 200


def test_written_infos_name_each_record_s_feature_files(clip_config, one_scene_prepared) -> None:
    config = clip_config()
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri, one_scene_prepared.mv_uri])
    storage = Storage(config.storage, config.workdir)

    (sv_info_uri,) = result.info_uris[one_scene_prepared.sv_uri]
    (mv_info_uri,) = result.info_uris[one_scene_prepared.mv_uri]
    assert sv_info_uri.endswith(SV_INFO) and sv_info_uri.startswith(f"{result.feature_uri}/infos/sv-")
    sv, mv = read_infos(storage, sv_info_uri), read_infos(storage, mv_info_uri)
    original = read_infos(storage, f"{one_scene_prepared.sv_uri}/{SV_INFO}")
    assert sv["metainfo"]["set_uri"] == one_scene_prepared.sv_uri and sv["metainfo"]["clip_feature_uri"] == result.feature_uri
    assert len(sv["data_list"]) == len(original["data_list"]) == 3
    for record, before in zip(sv["data_list"], original["data_list"]):
        assert {k: v for k, v in record.items() if k != "clip_feature_path"} == before
        assert record["clip_feature_path"] == feature_file_uri(result.feature_uri, image_relpath(record["img_path"], sv["metainfo"]["raw_uri"]))
        assert Path(record["clip_feature_path"]).is_file()
    (scene,) = mv["data_list"]
    assert len(scene["clip_feature_paths"]) == len(scene["img_paths"]) == 6
    assert all(Path(p).is_file() for p in scene["clip_feature_paths"])
    assert "clip_feature_path" not in original["data_list"][0]  # prep's own files stay as prep wrote them


def test_validation_fails_when_a_stored_file_does_not_match_a_recomputation(clip_config, one_scene_prepared) -> None:
    config = clip_config(f"clip.validate_samples={NUM_IMAGES}")
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri])
    storage = Storage(config.storage, config.workdir)
    victim = sorted(feature_files(result.feature_uri))[1]
    uri = f"{result.feature_uri}/features/{victim}"
    tampered = np.load(local_path(uri)).copy()
    tampered[0, 0, 0] += np.float16(0.25)
    storage.write_bytes(uri, encode_feature_file(tampered))  # a valid file (checksum and all) with other values

    with pytest.raises(ClipValidationError, match=rf"{victim[:-4]}.*L2 0\.2[45].*clip\.max_l2_tolerance=0\.001"):
        run_clip_precompute(config, [one_scene_prepared.sv_uri])


def test_other_weights_get_another_store(clip_config, one_scene_prepared, tmp_path: Path) -> None:
    torch.manual_seed(7)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(TINY_MODEL, force_image_size=TINY_INPUT).state_dict(), other)
    first = run_clip_precompute(clip_config(), [one_scene_prepared.sv_uri])
    second = run_clip_precompute(clip_config(f"clip.weights={other}"), [one_scene_prepared.sv_uri])
    assert first.feature_uri != second.feature_uri and second.computed == 3


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("null", r"clip\.weights is null"),
        ("/nowhere/clip.pt", r"clip\.weights='/nowhere/clip\.pt': no such file"),
        ("GARBAGE", r"clip\.weights=.*garbage\.pt is not a loadable bifusion-test-tiny-clip-features open_clip checkpoint"),
    ],
)
def test_unusable_weights_are_reported_with_the_option(clip_config, one_scene_prepared, tmp_path: Path, weights: str, message: str) -> None:
    if weights == "GARBAGE":
        weights = str(tmp_path / "garbage.pt")
        Path(weights).write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsError, match=message):
        run_clip_precompute(clip_config(f"clip.weights={weights}"), [one_scene_prepared.sv_uri])


def test_random_weights_are_seeded(clip_config, one_scene_prepared) -> None:
    first = run_clip_precompute(clip_config("clip.weights=random", "clip.feature_root=a"), [one_scene_prepared.sv_uri])
    second = run_clip_precompute(clip_config("clip.weights=random", "clip.feature_root=b"), [one_scene_prepared.sv_uri])
    assert first.feature_uri.rsplit("/", 1)[-1] == second.feature_uri.rsplit("/", 1)[-1]
    a, b = feature_files(first.feature_uri), feature_files(second.feature_uri)
    assert all(np.array_equal(np.load(a[name]), np.load(b[name])) for name in a)


def test_command_line(clip_config, one_scene_prepared, tiny_weights: Path, tmp_path: Path) -> None:
    config = clip_config()
    overrides = [
        f"workdir={config.workdir}", f"tracking.uri={config.tracking.uri}", f"tracking.experiment={config.tracking.experiment}",
        f"clip.model_name={TINY_MODEL}", f"clip.weights={tiny_weights}", "clip.input_size=[24, 32]", "clip.device=cpu",
        "prep.split_files={train: scannetv2_train.txt}",
    ]
    main(["clip-precompute", "--set-uri", one_scene_prepared.sv_uri, "--result-json", str(tmp_path / "r.json"),
          *[arg for o in overrides for arg in ("--set", o)]])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["computed"] == 3 and result["feature_uri"].startswith(str(config.workdir))


def test_features_go_to_s3(clip_config, one_scene_prepared, s3_endpoint: str, s3_bucket: str) -> None:
    config = clip_config(f"storage.root=s3://{s3_bucket}/store", f"storage.endpoint_url={s3_endpoint}")
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri])
    assert result.feature_uri.startswith(f"s3://{s3_bucket}/store/clip_features/")
    storage = Storage(config.storage, config.workdir)
    assert len([u for u in storage.list(result.feature_uri) if u.endswith(".npy")]) == 3
    assert run_clip_precompute(config, [one_scene_prepared.sv_uri]).skipped == 3


def test_a_set_without_sv_or_mv_infos_is_reported(clip_config, one_scene_prepared) -> None:
    with pytest.raises(ClipPrecomputeError, match=r"scene: no SV/MV info files \(looked for \['scannet200_sv_oneformer3d_infos_train\.pkl'"):
        run_clip_precompute(clip_config(), [one_scene_prepared.scene_uri])
