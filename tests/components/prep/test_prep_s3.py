"""synth and prep against a real S3 endpoint (moto server): raw data and outputs live in a bucket."""

from __future__ import annotations

import io
import pickle

import numpy as np

from bifusion.components.prep.stage import run_prep
from bifusion.components.storage import Storage
from bifusion.components.synth.stage import run_synth


def test_synth_and_prep_through_s3(prep_config, s3_endpoint: str, s3_bucket: str) -> None:
    config = prep_config(
        f"storage.root=s3://{s3_bucket}/store", f"storage.endpoint_url={s3_endpoint}",
        "synth.num_scenes=1", "synth.num_val_scenes=0", "prep.split_files={train: scannetv2_train.txt}", "prep.workers=2",
    )
    raw = run_synth(config)
    assert raw.raw_uri.startswith(f"s3://{s3_bucket}/store/synth/")
    result = run_prep(config, raw.raw_uri)
    storage = Storage(config.storage, config.workdir)
    infos = pickle.loads(storage.read_bytes(f"{result.sv_uri}/scannet200_sv_oneformer3d_infos_train.pkl"))
    record = infos["data_list"][0]
    assert record["img_path"].startswith(f"s3://{s3_bucket}/")
    points = np.frombuffer(storage.read_bytes(f"{result.sv_uri}/points/{record['lidar_points']['lidar_path']}"), "<f4")
    assert points.size == 2000 * 6
    assert storage.info(f"{result.sv_uri}/points/{record['lidar_points']['lidar_path']}").sha256 is not None
    assert storage.exists(f"{result.output_uri}/_scenes/scene9000_00.json")
    mv = pickle.loads(storage.read_bytes(f"{result.mv_uri}/scannet200_mv_oneformer3d_infos_train.pkl"))["data_list"][0]
    alignment = np.load(io.BytesIO(storage.read_bytes(f"{result.mv_uri}/axis_align_matrix/scene9000_00.npy")))
    np.testing.assert_allclose(alignment, np.asarray(mv["axis_align_matrix"]))
