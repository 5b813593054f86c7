"""The whole pipeline through kfp.local (SubprocessRunner), outputs in a real S3 endpoint, runs in MLflow."""

from __future__ import annotations

import json
import pickle

import pytest
from mlflow.tracking import MlflowClient

from bifusion.components.storage import Storage
from bifusion.pipelines.local_run import run_local

# One generated room whose frames are both the train and the val split: the 3D model must overfit it.
TINY = [
    "synth.num_scenes=1", "synth.num_val_scenes=0", "synth.frames_per_scene=9", "synth.width=160", "synth.height=120",
    "synth.objects_per_room=[5, 6]", "prep.sv_frame_step=40", "prep.points_per_frame=2000", "prep.min_valid_points=500",
    "prep.superpoints.min_size=40", "prep.superpoints.downsample=1",
    "prep.split_files={train: scannetv2_train.txt, val: scannetv2_train.txt}",
    "model.backbone.planes=[16, 16, 32, 32, 32, 32, 32, 32]", "model.backbone.layers=[1, 1, 1, 1, 1, 1, 1, 1]",
    "model.backbone.stem_channels=16", "model.decoder.d_model=64", "model.decoder.num_heads=4", "model.decoder.ffn_channels=128",
    "train.batch_size=2", "train.lr=0.002", "train.epochs=1000", "train.max_iterations=400", "train.checkpoint_every_iterations=200",
    "train.augment.elastic_prob=0.0", "evaluate.min_points=20", "evaluate.render_frames=1",
]
# Every route, each later stage only a few steps (the 3D SV overfit is the learning check; the others check
# the wiring: init from the earlier checkpoint, CLIP features, whole-scene evaluation, the summary).
ALL_ROUTES = [
    "pipeline.routes=[3d, tinysa, bifusion]", "clip.weights=random", "clip.workers=1", "clip.validate_samples=1",
    "model.online.clip_frames=3",
    *(f"{stage}:train.max_iterations=3" for stage in ("3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv")),
    "bifusion_sv:train.fusion.gate_statistics_every=1",
]
STAGES = ["3d_sv", "3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv"]
ALL_TASKS = ["synth", "prep", "clip_precompute", *(f"{kind}_{stage}" for stage in STAGES for kind in ("train", "evaluate")), "summary"]


def pipeline_configs(make_config, *overrides: str):
    from bifusion.pipelines.run_configs import resolve_pipeline_configs

    base = make_config()  # a fresh workdir, tracking store and experiment for this test
    pinned = [f"workdir={base.workdir}", f"tracking.uri={base.tracking.uri}", f"tracking.experiment={base.tracking.experiment}"]
    return resolve_pipeline_configs(["demo"], [*pinned, *TINY, *overrides])


@pytest.mark.slow
def test_local_pipeline_end_to_end_with_s3_store_and_cache(make_config, mlflow_uri: str, s3_endpoint: str, s3_bucket: str) -> None:
    """synth -> prep -> train 3d_sv -> evaluate on one room, store in S3: the model overfits its frames
    (AP50 >= 0.5; an untrained model scores near 0), every stage is an MLflow child run, and a second run
    is served from the KFP cache."""
    configs = pipeline_configs(make_config, f"storage.root=s3://{s3_bucket}/store", f"storage.endpoint_url={s3_endpoint}", *ALL_ROUTES)
    config = configs.base
    first = run_local(configs)
    assert first.cached_stages == []
    storage = Storage(config.storage, config.workdir)
    for key in ("sv_uri", "mv_uri", "scene_uri"):
        assert first.outputs[key].startswith(f"s3://{s3_bucket}/store/prep/")
    infos = pickle.loads(storage.read_bytes(first.outputs["sv_uri"] + "/scannet200_sv_oneformer3d_infos_train.pkl"))
    assert len(infos["data_list"]) == 5  # frames 0, 40, ..., 160
    metrics = json.loads(first.outputs["metrics_3d_sv"])
    assert metrics["scannet200/ap50"] >= 0.5, metrics
    assert first.outputs["checkpoint_3d_sv"].startswith(f"s3://{s3_bucket}/store/train/3d_sv/")

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(first.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["bifusion.pipeline_run_id"] == first.pipeline_run_id
    assert parent.data.tags["bifusion.output.sv_uri"] == first.outputs["sv_uri"]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {run.data.tags["bifusion.stage"]: run for run in children}
    assert set(by_stage) == set(ALL_TASKS)
    assert by_stage["prep"].data.params["prep.points_per_frame"] == "2000"
    assert by_stage["prep"].data.metrics["frames_prepared"] == 5  # MV 0, 40, ..., 160 (SV frames are among them)
    assert by_stage["train_3d_sv"].data.params["train.max_iterations"] == "400"
    assert by_stage["train_3d_mv"].data.params["train.max_iterations"] == "3"
    assert by_stage["evaluate_3d_sv"].data.metrics["scannet200/ap50"] == metrics["scannet200/ap50"]
    assert all(run.info.status == "FINISHED" for run in children)
    # Each stage started from the checkpoint the DAG says, and BiFusion read the precomputed features.
    tags = {stage: by_stage[f"train_{stage}"].data.tags for stage in STAGES}
    assert tags["3d_mv"]["bifusion.input.init_checkpoint_uri"] == first.outputs["checkpoint_3d_sv"]
    assert tags["3dtsa_mv"]["bifusion.input.init_checkpoint_uri"] == first.outputs["checkpoint_3dtsa_sv"]
    assert tags["bifusion_sv"]["bifusion.input.init_checkpoint_uri"] == first.outputs["checkpoint_3d_sv"]
    assert tags["bifusion_mv"]["bifusion.input.init_checkpoint_uri"] == first.outputs["checkpoint_bifusion_sv"]
    assert tags["bifusion_sv"]["bifusion.input.clip_features_uri"].startswith(f"s3://{s3_bucket}/store/")
    assert "gate/alpha_mean" in by_stage["train_bifusion_sv"].data.metrics
    for stage in STAGES:  # MV stages are scored on whole scenes
        assert "scannet200/ap50" in json.loads(first.outputs[f"metrics_{stage}"]), stage
    assert "| bifusion_sv | 3d_sv |" in first.outputs["ablation_markdown"]
    assert {a.path for a in client.list_artifacts(by_stage["summary"].info.run_id)} >= {"ablation.md", "ablation.json"}

    second = run_local(configs)
    assert second.cached_stages == ALL_TASKS
    assert second.outputs == first.outputs
    assert client.get_run(second.mlflow_parent_run_id).data.tags["bifusion.cached_stages"] == ",".join(ALL_TASKS)


def test_pipeline_on_given_raw_data_skips_synth(make_config, mlflow_uri: str, tmp_path) -> None:
    from bifusion.components.synth.stage import run_synth

    configs = pipeline_configs(make_config, "train.max_iterations=2", "pipeline.routes=[3d]", "model.online.clip_frames=3")
    raw = run_synth(configs.base, str(tmp_path / "raw"))
    result = run_local(configs, raw_uri=raw.raw_uri, enable_caching=False)
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {run.data.tags["bifusion.stage"]: run for run in children}
    assert set(by_stage) == {"prep", "train_3d_sv", "evaluate_3d_sv", "train_3d_mv", "evaluate_3d_mv", "summary"}
    assert by_stage["prep"].data.tags["bifusion.input.raw_uri"] == raw.raw_uri

    # From 3d_mv on: prep and 3d_sv come from the run above by URI, only 3d_mv (and the summary) run again.
    from bifusion.components.tracking import pipeline_outputs
    from bifusion.pipelines.reuse import resolve_reuse

    reuse = resolve_reuse(configs.steps, "3d_mv", pipeline_outputs(configs.base, result.mlflow_parent_run_id), {})
    assert reuse["checkpoint_3d_sv"] == result.outputs["checkpoint_3d_sv"]
    again = run_local(configs, enable_caching=False, reuse=reuse)
    parent = client.get_run(again.mlflow_parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {run.data.tags["bifusion.stage"]: run for run in children}
    assert set(by_stage) == {"train_3d_mv", "evaluate_3d_mv", "summary"}
    assert by_stage["train_3d_mv"].data.tags["bifusion.input.init_checkpoint_uri"] == result.outputs["checkpoint_3d_sv"]
    assert by_stage["train_3d_mv"].data.tags["bifusion.input.data_uri"] == result.outputs["mv_uri"]


def test_failing_stage_fails_the_pipeline_run(make_config, mlflow_uri: str, tmp_path) -> None:
    configs = pipeline_configs(make_config)
    config = configs.base
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_local(configs, raw_uri=str(tmp_path / "no-such-raw-root"), enable_caching=False)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.kind` = 'pipeline'")
    assert parent.info.status == "FAILED"
    (child,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.kind` = 'stage'")
    assert child.info.status == "FAILED"
