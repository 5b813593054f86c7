"""The whole pipeline through kfp.local (SubprocessRunner), outputs in a real S3 endpoint, runs in MLflow."""

from __future__ import annotations

import pickle

import pytest
from mlflow.tracking import MlflowClient

from bifusion.components.storage import Storage
from bifusion.pipelines.local_run import run_local

TINY = [
    "synth.num_scenes=2", "synth.num_val_scenes=1", "synth.frames_per_scene=6", "synth.width=160", "synth.height=120",
    "synth.objects_per_room=[4, 5]", "prep.sv_frame_step=100", "prep.points_per_frame=1500",
    "prep.min_valid_points=300", "prep.superpoints.min_size=60", "prep.superpoints.downsample=1",
]


@pytest.mark.slow
def test_local_pipeline_end_to_end_with_s3_store_and_cache(make_config, mlflow_uri: str, s3_endpoint: str, s3_bucket: str) -> None:
    config = make_config(f"storage.root=s3://{s3_bucket}/store", f"storage.endpoint_url={s3_endpoint}", *TINY, refs=("demo",))
    first = run_local(config)
    assert first.cached_stages == []
    storage = Storage(config.storage, config.workdir)
    for key in ("sv_uri", "mv_uri", "scene_uri"):
        assert first.outputs[key].startswith(f"s3://{s3_bucket}/store/prep/")
    infos = pickle.loads(storage.read_bytes(first.outputs["sv_uri"] + "/scannet200_sv_oneformer3d_infos_train.pkl"))
    assert len(infos["data_list"]) == 2  # frames 0 and 100 of the train scene

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(first.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["bifusion.pipeline_run_id"] == first.pipeline_run_id
    assert parent.data.tags["bifusion.output.sv_uri"] == first.outputs["sv_uri"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {run.data.tags["bifusion.stage"]: run for run in children}
    assert set(by_stage) == {"synth", "prep"}
    assert by_stage["prep"].data.params["prep.points_per_frame"] == "1500"
    assert by_stage["prep"].data.metrics["frames_prepared"] == 2 * 4  # per scene: MV 0, 40, 80 and SV 0, 100
    assert all(run.info.status == "FINISHED" for run in children)

    second = run_local(config)
    assert second.cached_stages == ["synth", "prep"]
    assert second.outputs == first.outputs
    assert client.get_run(second.mlflow_parent_run_id).data.tags["bifusion.cached_stages"] == "synth,prep"


def test_pipeline_on_given_raw_data_skips_synth(make_config, mlflow_uri: str, tmp_path) -> None:
    from bifusion.components.synth.stage import run_synth

    config = make_config(*TINY, "synth.num_scenes=1", "synth.num_val_scenes=0", "prep.split_files={train: scannetv2_train.txt}")
    raw = run_synth(config, str(tmp_path / "raw"))
    result = run_local(config, raw_uri=raw.raw_uri, enable_caching=False)
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [run.data.tags["bifusion.stage"] for run in children] == ["prep"]
    assert children[0].data.tags["bifusion.input.raw_uri"] == raw.raw_uri


def test_failing_stage_fails_the_pipeline_run(make_config, mlflow_uri: str, tmp_path) -> None:
    config = make_config(*TINY)
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_local(config, raw_uri=str(tmp_path / "no-such-raw-root"), enable_caching=False)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.kind` = 'pipeline'")
    assert parent.info.status == "FAILED"
    (child,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.kind` = 'stage'")
    assert child.info.status == "FAILED"
