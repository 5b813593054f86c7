"""`bifusion rerun`: a recorded stage run is executed again with its logged config and inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bifusion.components.config_schema import Config
from bifusion.components.rerun import RERUN_OF_TAG, RerunError, load_recorded_stage, rerun_stage
from bifusion.components.tracking import ensure_experiment, resolve_experiment, start_pipeline_run, stage_run
from bifusion.pipelines.cli import main

TINY_SYNTH = [
    "synth.num_scenes=1", "synth.num_val_scenes=0", "synth.frames_per_scene=2", "synth.width=64", "synth.height=48",
    "synth.objects_per_room=[1, 2]", "synth.workers=1",
]


def _record_stage(config: Config, stage: str, tags: dict[str, str]) -> str:
    """A finished stage run as a stage function would leave it (tags, config.yaml, resolved_config.json)."""
    with stage_run(stage, config, {"train": config.train}, tags) as run:
        pass
    return run.run_id


class _Recorder:
    """Stands in for a heavy stage function (torch training) and keeps the arguments it was called with."""

    def __init__(self, result: Any) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result


def test_rerun_synth_runs_again_with_overrides_into_a_fresh_folder(make_config, mlflow_uri: str) -> None:
    from bifusion.components.synth.stage import run_synth

    config = make_config(*TINY_SYNTH)
    first = run_synth(config)
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (original,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.stage` = 'synth'")

    rerun = rerun_stage(original.info.run_id, ["synth.seed=7"], tracking_uri=mlflow_uri)

    assert rerun.stage == "synth"
    assert rerun.output_uri != first.raw_uri
    assert rerun.output_uri.startswith(str(Path(config.workdir) / "store" / "reruns" / "synth"))
    assert rerun.result.summary["scenes_generated"] == 1  # really generated, not found finished
    assert (Path(rerun.output_uri) / "scans" / first.scenes[0]).is_dir()
    new_run = client.get_run(rerun.run_id)
    assert new_run.data.tags[RERUN_OF_TAG] == original.info.run_id
    assert new_run.data.tags["bifusion.output_uri"] == rerun.output_uri
    assert new_run.data.params["synth.seed"] == "7"
    assert new_run.data.params["synth.width"] == "64"  # the rest of the recorded config carried over
    assert new_run.info.experiment_id == experiment.experiment_id


def test_rerun_train_passes_the_logged_inputs_and_overrides(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import bifusion.components.train.stage as train_stage

    config = make_config("train.lr=0.01")
    run_id = _record_stage(config, "train_bifusion_sv", {
        "bifusion.input.data_uri": "s3://bucket/prep/abc/sv",
        "bifusion.input.init_checkpoint_uri": "s3://bucket/train/3d_sv/def/final.pt",
        "bifusion.input.clip_features_uri": "s3://bucket/clip/123",
        "bifusion.train_stage": "bifusion_sv",
        "bifusion.output_uri": "s3://bucket/train/bifusion_sv/old",
    })
    recorder = _Recorder(result={"checkpoint_uri": "s3://bucket/x/final.pt"})
    monkeypatch.setattr(train_stage, "run_train", recorder)

    rerun = rerun_stage(run_id, ["train.lr=0.002"], tracking_uri=mlflow_uri)

    ((args, kwargs),) = recorder.calls
    rerun_config, stage, data_uri, init, output_uri = args
    assert (stage, data_uri, init) == ("bifusion_sv", "s3://bucket/prep/abc/sv", "s3://bucket/train/3d_sv/def/final.pt")
    assert kwargs == {"clip_features_uri": "s3://bucket/clip/123"}
    assert rerun_config.train.lr == 0.002
    assert rerun_config.workdir == config.workdir
    assert rerun_config.tracking.uri == mlflow_uri
    assert output_uri == rerun.output_uri
    assert output_uri.startswith(str(Path(config.workdir) / "store" / "reruns" / "train_bifusion_sv"))
    assert rerun.result == {"checkpoint_uri": "s3://bucket/x/final.pt"}


def test_rerun_train_leaves_a_config_init_checkpoint_to_the_config(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import bifusion.components.train.stage as train_stage

    config = make_config("train.init_checkpoint=/ckpt/esam.pth")
    run_id = _record_stage(config, "train_3d_sv", {
        "bifusion.input.data_uri": "/data/sv", "bifusion.input.init_checkpoint_uri": "/ckpt/esam.pth",
    })
    recorder = _Recorder(result=None)
    monkeypatch.setattr(train_stage, "run_train", recorder)

    rerun_stage(run_id, ["train.init_checkpoint=/ckpt/other.pth"], output_uri="/out/here", tracking_uri=mlflow_uri)

    ((args, kwargs),) = recorder.calls
    assert args[1:] == ("3d_sv", "/data/sv", None, "/out/here")  # the stage reads train.init_checkpoint itself
    assert args[0].train.init_checkpoint == "/ckpt/other.pth"
    assert kwargs == {"clip_features_uri": None}


def test_rerun_evaluate_with_a_replaced_input(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import bifusion.components.evaluate.stage as evaluate_stage

    config = make_config()
    run_id = _record_stage(config, "evaluate_3d_sv", {
        "bifusion.input.checkpoint_uri": "/ckpt/final.pt", "bifusion.input.data_uri": "/data/sv",
    })
    recorder = _Recorder(result=None)
    monkeypatch.setattr(evaluate_stage, "run_evaluate", recorder)

    rerun = rerun_stage(run_id, ["evaluate.split=train"], tracking_uri=mlflow_uri, inputs={"data_uri": "/data/other_sv"})

    ((args, kwargs),) = recorder.calls
    assert args[1:] == ("/ckpt/final.pt", "/data/other_sv", rerun.output_uri)
    assert args[0].evaluate.split == "train"
    assert kwargs == {"clip_features_uri": None}


def test_unknown_run_id_is_named(mlflow_uri: str) -> None:
    with pytest.raises(RerunError, match="MLflow run '0123456789abcdef' not found"):
        load_recorded_stage("0123456789abcdef", mlflow_uri)


def test_pipeline_run_is_refused_with_its_stage_runs_listed(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config()
    parent = start_pipeline_run(config, "local-1", "pipeline local-1")
    monkeypatch.setenv("BIFUSION_MLFLOW_PARENT_RUN_ID", parent)
    child = _record_stage(config, "prep", {"bifusion.input.raw_uri": "/raw"})
    with pytest.raises(RerunError, match=f"is a pipeline run, not a stage; rerun one of its stage runs: prep={child}"):
        rerun_stage(parent, tracking_uri=mlflow_uri)


def test_missing_input_tag_names_the_tag(make_config, mlflow_uri: str) -> None:
    run_id = _record_stage(make_config(), "prep", {})
    with pytest.raises(RerunError, match=r"lacks the tag bifusion\.input\.raw_uri; pass --input raw_uri=URI"):
        rerun_stage(run_id, tracking_uri=mlflow_uri)


def test_missing_resolved_config_is_explained(make_config, mlflow_uri: str) -> None:
    config = make_config()
    client = MlflowClient(mlflow_uri)
    experiment_id = ensure_experiment(client, resolve_experiment(config.tracking), mlflow_uri)
    run = client.create_run(experiment_id, tags={"bifusion.kind": "stage", "bifusion.stage": "prep"})
    with pytest.raises(RerunError, match="has no resolved_config.json artifact"):
        load_recorded_stage(run.info.run_id, mlflow_uri)


def test_summary_stage_and_unknown_inputs_are_refused(make_config, mlflow_uri: str) -> None:
    config = make_config()
    summary = _record_stage(config, "summary", {})
    with pytest.raises(RerunError, match="rerun the pipeline instead"):
        rerun_stage(summary, tracking_uri=mlflow_uri)
    prep = _record_stage(config, "prep", {"bifusion.input.raw_uri": "/raw"})
    with pytest.raises(RerunError, match=r"has no input \['data_uri'\]; its inputs: raw_uri"):
        rerun_stage(prep, tracking_uri=mlflow_uri, inputs={"data_uri": "/x"})


def test_clip_precompute_keeps_its_addressed_output(make_config, mlflow_uri: str) -> None:
    run_id = _record_stage(make_config(), "clip_precompute", {"bifusion.input.set_uris": "/p/sv,/p/mv"})
    with pytest.raises(RerunError, match="clip.feature_root"):
        rerun_stage(run_id, output_uri="/elsewhere", tracking_uri=mlflow_uri)


def test_cli_rerun_prints_the_result(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    import bifusion.components.prep.stage as prep_stage

    run_id = _record_stage(make_config(), "prep", {"bifusion.input.raw_uri": "/raw"})
    recorder = _Recorder(result={"sv_uri": "/new/sv"})
    monkeypatch.setattr(prep_stage, "run_prep", recorder)

    main(["rerun", "--mlflow-run", run_id, "--tracking-uri", mlflow_uri, "--set", "prep.workers=3",
          "--output-uri", str(tmp_path / "out"), "--result-json", str(tmp_path / "result.json")])

    ((args, _),) = recorder.calls
    assert args[1:] == ("/raw", str(tmp_path / "out"))
    assert args[0].prep.workers == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["source_run_id"] == run_id
    assert printed["result"] == {"sv_uri": "/new/sv"}
    assert json.loads((tmp_path / "result.json").read_text()) == printed
    with pytest.raises(SystemExit, match="expected NAME=URI"):
        main(["rerun", "--mlflow-run", run_id, "--tracking-uri", mlflow_uri, "--input", "data_uri"])
