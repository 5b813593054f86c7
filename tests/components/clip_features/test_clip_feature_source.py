"""`ClipFeatureSource`: what the BiFusion loaders read; stored files first, online recomputation for missing ones."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from bifusion.components.clip_features.features import ClipFeatureSource, feature_file_uri, image_relpath
from bifusion.components.clip_features.stage import run_clip_precompute
from bifusion.components.storage import NotFoundError, Storage, local_path
from bifusion.model.clip_branch import load_clip_visual
from tests.components.clip_features.conftest import TINY_INPUT, TINY_MODEL

SV_INFO = "scannet200_sv_oneformer3d_infos_train.pkl"


@pytest.fixture
def precomputed(clip_config, one_scene_prepared):
    config = clip_config()
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri])
    info = pickle.loads((Path(one_scene_prepared.sv_uri) / SV_INFO).read_bytes())
    return config, result, [record["img_path"] for record in info["data_list"]]


def test_stored_features_are_read_and_missing_ones_computed_online(precomputed, tiny_weights: Path, tmp_path: Path, caplog) -> None:
    config, result, image_paths = precomputed
    storage = Storage(config.storage, config.workdir)
    visual = load_clip_visual(TINY_MODEL, str(tiny_weights), TINY_INPUT)
    source = ClipFeatureSource(storage, result.feature_uri, tmp_path / "cache", online_encoder=visual)
    raw_root = storage.read_json(f"{result.feature_uri}/manifest.json")["raw_root"]
    files = [local_path(feature_file_uri(result.feature_uri, image_relpath(p, raw_root))) for p in image_paths]
    stored = [np.load(path) for path in files]

    for path, expected in zip(image_paths, stored):
        np.testing.assert_array_equal(source.features_for(path), expected)
    np.testing.assert_array_equal(source.features_for(image_relpath(image_paths[0], raw_root)), stored[0])  # relative form
    assert source.missing_count == 0

    files[0].unlink()
    files[2].unlink()
    with caplog.at_level(logging.WARNING):
        online = [source.features_for(image_paths[0]), source.features_for(image_paths[2]), source.features_for(image_paths[0])]
    assert source.missing_count == 3
    assert len([r for r in caplog.records if "computing them online" in r.getMessage()]) == 1
    assert online[0].dtype == np.float16 and online[0].shape == stored[0].shape
    np.testing.assert_allclose(online[0].astype(np.float32), stored[0].astype(np.float32), atol=1e-3, rtol=0)
    np.testing.assert_allclose(online[1].astype(np.float32), stored[2].astype(np.float32), atol=1e-3, rtol=0)


def test_a_missing_file_without_an_online_encoder_is_an_error(precomputed, tmp_path: Path) -> None:
    config, result, image_paths = precomputed
    storage = Storage(config.storage, config.workdir)
    source = ClipFeatureSource(storage, result.feature_uri, tmp_path / "cache")
    relpath = image_relpath(image_paths[1], source.raw_root)
    local_path(feature_file_uri(result.feature_uri, relpath)).unlink()
    with pytest.raises(NotFoundError, match=rf"{relpath}.*run `bifusion clip-precompute`"):
        source.features_for(image_paths[1])
    with pytest.raises(ValueError, match="not under the raw root"):
        source.features_for("/elsewhere/2D/scene9000_00/color/0.jpg")


def test_a_store_on_s3_is_cached_locally(clip_config, one_scene_prepared, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    config = clip_config(f"storage.root=s3://{s3_bucket}/store", f"storage.endpoint_url={s3_endpoint}")
    result = run_clip_precompute(config, [one_scene_prepared.sv_uri])
    storage = Storage(config.storage, config.workdir)
    info = pickle.loads((Path(one_scene_prepared.sv_uri) / SV_INFO).read_bytes())
    source = ClipFeatureSource(storage, result.feature_uri, tmp_path / "cache")
    features = source.features_for(info["data_list"][0]["img_path"])
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 1 and features.shape == (24, 3, 4)
    np.testing.assert_array_equal(np.load(cached[0]), features)
