"""`bifusion pipeline run --local --runner docker`: the kfp.local DockerRunner is configured for the stage
image, and a missing Docker engine stops the run before anything is recorded. (Running tasks needs a real
engine and the image; that is not exercised here.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kfp import local
from mlflow.tracking import MlflowClient

from bifusion.components.docker_rerun import DockerEngineError
from bifusion.pipelines.cli import build_parser
from bifusion.pipelines.local_run import run_local
from bifusion.pipelines.local_runners import check_runner_available, local_runner, task_folders
from bifusion.pipelines.run_configs import resolve_pipeline_configs


@pytest.fixture
def engine_down(monkeypatch: pytest.MonkeyPatch) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("DOCKER_HOST", host)
    return host


def test_docker_runner_carries_environment_and_mounts(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "raw").mkdir()
    environment = {"BIFUSION_MLFLOW_PARENT_RUN_ID": "abc", "AWS_SECRET_ACCESS_KEY": "s3cret"}

    runner = local_runner("docker", environment, [tmp_path / "work", tmp_path / "raw", tmp_path / "work" / "store"])

    assert isinstance(runner, local.DockerRunner)
    args = runner.container_run_args
    assert args["entrypoint"] == ["/usr/bin/env"]
    assert args["environment"] == environment
    assert args["network_mode"] == "host"
    mounts = sorted((m["Source"], m["Target"], m["Type"]) for m in args["mounts"])
    assert mounts == [(str(tmp_path / "raw"), str(tmp_path / "raw"), "bind"), (str(tmp_path / "work"), str(tmp_path / "work"), "bind")]
    assert isinstance(local_runner("subprocess", environment, []), local.SubprocessRunner)


def test_task_folders_cover_store_raw_root_and_database(make_config, tmp_path: Path) -> None:
    store = tmp_path / "elsewhere" / "store"
    config = make_config(f"storage.root={store.as_uri()}")

    folders = task_folders(config, str(tmp_path / "raw"), f"sqlite:///{tmp_path}/db/mlflow.db")

    assert folders == [Path(config.workdir), store, tmp_path / "raw", tmp_path / "db"]
    assert store.is_dir()  # tasks write there from their containers: it must exist to be mounted
    assert task_folders(make_config("storage.root=s3://bucket/store"), "s3://bucket/raw", "http://mlflow:5000") == [Path(config.workdir)]


def test_missing_engine_and_unknown_runner_are_clear(engine_down: str) -> None:
    with pytest.raises(DockerEngineError, match=f"no Docker engine reachable at {engine_down}"):
        check_runner_available("docker")
    with pytest.raises(ValueError, match="runner 'podman': expected one of subprocess, docker"):
        check_runner_available("podman")
    check_runner_available("subprocess")


def test_run_local_with_docker_fails_before_opening_a_run(engine_down: str, tmp_path: Path, mlflow_uri: str) -> None:
    configs = resolve_pipeline_configs(["demo"], [f"workdir={tmp_path}", f"tracking.uri={mlflow_uri}", "tracking.experiment=docker-runner-down"])
    with pytest.raises(DockerEngineError, match="no Docker engine reachable"):
        run_local(configs, runner="docker")
    experiment = MlflowClient(mlflow_uri).get_experiment_by_name("docker-runner-down")
    assert experiment is None or not MlflowClient(mlflow_uri).search_runs([experiment.experiment_id])


def test_cli_runner_choice() -> None:
    parser = build_parser()
    assert parser.parse_args(["pipeline", "run", "--local"]).runner == "subprocess"
    assert parser.parse_args(["pipeline", "run", "--local", "--runner", "docker"]).runner == "docker"
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "run", "--local", "--runner", "podman"])
