"""Upload and submit against a local stub of the KFP REST API (tests/deploy/kfp_stub.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from kfp_stub import KfpStub

from bifusion.pipelines.cli import main
from bifusion.pipelines.submit import connect, package_digest, submit_run, upload_pipeline


@pytest.fixture
def stub() -> Iterator[KfpStub]:
    with KfpStub() as server:
        yield server


def write_package(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_first_upload_creates_pipeline_and_marks_its_default_version(stub: KfpStub, tmp_path: Path) -> None:
    package = write_package(tmp_path / "p.yaml", "pipelineInfo: {name: bifusion}\n")
    version = upload_pipeline(connect(stub.url), package, "bifusion", "BiFusion")
    assert version.created
    assert version.digest == package_digest(package)
    (pipeline,) = stub.state.pipelines.values()
    assert pipeline["display_name"] == "bifusion"
    assert f"content-sha256: {version.digest}" in pipeline["description"]
    assert stub.state.packages[version.version_id] == package.read_bytes()
    assert len(stub.calls("POST", "/pipelines/upload")) == 1
    assert stub.calls("POST", "/pipelines/upload")[0].query["name"] == "bifusion"


def test_unchanged_upload_creates_nothing_and_changed_upload_adds_a_version(stub: KfpStub, tmp_path: Path) -> None:
    client = connect(stub.url)
    package = write_package(tmp_path / "p.yaml", "a: 1\n")
    first = upload_pipeline(client, package, "bifusion", "BiFusion", version_prefix="0.1.0")
    again = upload_pipeline(client, package, "bifusion", "BiFusion", version_prefix="0.1.0")
    assert not again.created
    assert again.version_id == first.version_id
    assert stub.calls("POST", "/pipelines/upload_version") == []

    write_package(package, "a: 2\n")
    changed = upload_pipeline(client, package, "bifusion", "BiFusion", version_prefix="0.1.0")
    assert changed.created
    assert changed.version_name == f"0.1.0-{package_digest(package)}"
    assert changed.version_id != first.version_id
    (call,) = stub.calls("POST", "/pipelines/upload_version")
    assert call.query["pipelineid"] == first.pipeline_id
    assert len(stub.state.pipelines) == 1
    assert [v["display_name"] for v in stub.state.versions[first.pipeline_id]] == ["bifusion", changed.version_name]

    back = upload_pipeline(client, write_package(package, "a: 1\n"), "bifusion", "BiFusion", version_prefix="0.1.0")
    assert back.version_id == first.version_id and not back.created  # an older version is found, not re-uploaded


def test_upload_of_a_missing_package_names_the_file(stub: KfpStub, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.yaml"):
        upload_pipeline(connect(stub.url), tmp_path / "nothing.yaml", "bifusion", "BiFusion")


def test_submit_runs_the_uploaded_version_in_a_new_or_existing_experiment(stub: KfpStub, tmp_path: Path) -> None:
    client = connect(stub.url)
    version = upload_pipeline(client, write_package(tmp_path / "p.yaml", "a: 1\n"), "bifusion", "BiFusion")
    first = submit_run(client, version, "ablation", "run one", {"config_json": "{}", "raw_uri": ""}, "https://kfp.example.com/")
    second = submit_run(client, version, "ablation", "run two", {"config_json": "{}", "raw_uri": "s3://raw"}, "https://kfp.example.com")
    assert first.url == f"https://kfp.example.com/#/runs/details/{first.run_id}"
    assert len(stub.state.experiments) == 1  # the second run found the experiment
    run = stub.state.runs[second.run_id]
    assert run["experiment_id"] == next(iter(stub.state.experiments))
    assert run["display_name"] == "run two"
    assert run["pipeline_version_reference"] == {"pipeline_id": version.pipeline_id, "pipeline_version_id": version.version_id}
    assert run["runtime_config"]["parameters"] == {"config_json": "{}", "raw_uri": "s3://raw"}


def test_cli_upload_of_a_compiled_package_is_idempotent(stub: KfpStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = write_package(tmp_path / "p.yaml", "a: 1\n")
    args = ["pipeline", "upload", "--host", stub.url, "--package", str(package), "--version-prefix", "0.1.0"]
    main(args)
    main(args)
    out = capsys.readouterr().out
    assert "unchanged, already uploaded as bifusion " in out
    assert len(stub.calls("POST", "/pipelines/upload")) == 1
    assert stub.calls("GET", "/healthz")


def test_cli_submit_compiles_with_overrides_and_prints_run_id_and_link(
    stub: KfpStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([
        "pipeline", "submit", "--host", stub.url, "--experiment", "ablation", "--config", "demo",
        "--set", "prep.workers=3", "--cluster", "cluster/default", "--raw-uri", "s3://data/scannet",
    ])
    out = capsys.readouterr().out
    (run_id,) = stub.state.runs
    assert f"run id: {run_id}" in out
    assert f"{stub.url}/#/runs/details/{run_id}" in out
    parameters = stub.state.runs[run_id]["runtime_config"]["parameters"]
    assert parameters["raw_uri"] == "s3://data/scannet"
    assert json.loads(parameters["config_json"])["prep"]["workers"] == 3
    (version_id,) = stub.state.packages
    compiled = list(yaml.safe_load_all(stub.state.packages[version_id]))
    images = {e["container"]["image"] for e in compiled[0]["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/bifusion/bifusion-pipeline:0.1.0"}


def test_cli_default_pipeline_name_is_the_compiled_one() -> None:
    from bifusion.pipelines import cli, pipeline

    assert cli.PIPELINE_NAME == pipeline.PIPELINE_NAME
