"""MLflow run structure and the fail-fast tracking check."""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from mlflow.tracking import MlflowClient

from bifusion.components.config_schema import load_config
from bifusion.components.tracking import (
    PARENT_RUN_ENV,
    TrackingUnavailableError,
    check_tracking_backend,
    finish_pipeline_run,
    resolve_tracking_uri,
    stage_names_under,
    stage_run,
    start_pipeline_run,
)


def test_stage_run_records_params_config_and_status(make_config, mlflow_uri: str) -> None:
    config = make_config("prep.workers=3")
    with stage_run("prep", config, {"prep": config.prep}) as run:
        run.log_metrics({"frames": 7}, step=1)
        run.log_dict({"ok": True}, "summary.json")
    client = MlflowClient(mlflow_uri)
    recorded = client.get_run(run.run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.params["prep.workers"] == "3"
    assert recorded.data.params["prep.superpoints.method"] == "felzenszwalb"
    assert recorded.data.params["prep.depth_range_m"] == "[0.1, 10.0]"
    assert recorded.data.metrics["frames"] == 7
    assert recorded.data.tags["bifusion.stage"] == "prep"
    artifacts = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "summary.json"} <= artifacts
    config_text = Path(client.download_artifacts(run.run_id, "config.yaml")).read_text()
    assert "workers: 3" in config_text


def test_failing_stage_marks_run_failed(make_config, mlflow_uri: str) -> None:
    config = make_config()
    with pytest.raises(ValueError):
        with stage_run("prep", config, {"prep": config.prep}) as run:
            raise ValueError("boom")
    assert MlflowClient(mlflow_uri).get_run(run.run_id).info.status == "FAILED"


def test_stage_becomes_child_of_pipeline_run(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config()
    parent = start_pipeline_run(config, "kfp-run-123", "pipeline kfp-run-123")
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    with stage_run("synth", config, {"synth": config.synth}) as run:
        pass
    finish_pipeline_run(config, parent, "FINISHED", {"bifusion.cached_stages": "none"})
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["bifusion.pipeline_run_id"] == "kfp-run-123"
    assert parent_run.info.status == "FINISHED"
    assert stage_names_under(config, parent) == {"synth"}


def test_credentials_never_reach_params(make_config, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    config = make_config("storage.root=s3://bucket/prefix")
    with stage_run("prep", config, {"storage": config.storage, "prep": config.prep}) as run:
        pass
    recorded = MlflowClient(mlflow_uri).get_run(run.run_id)
    values = " ".join(list(recorded.data.params.values()) + list(recorded.data.tags.values()))
    assert "super-secret-value" not in values
    assert recorded.data.params["storage.root"] == "s3://bucket/prefix"


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_config(["base"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(base.tracking, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(base.tracking, tmp_path) == "http://tracking:5000"
    explicit = load_config(["base"], ["tracking.uri=http://other:5000"])
    assert resolve_tracking_uri(explicit.tracking, tmp_path) == "http://other:5000"


def test_unreachable_server_fails_within_seconds() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=f"127.0.0.1:{port} unreachable"):
        check_tracking_backend(f"http://127.0.0.1:{port}", timeout_s=2.0)
    assert time.monotonic() - started < 5.0


@pytest.fixture
def forbidding_server() -> Iterator[str]:
    """An HTTP server that answers 403 on the API, like MLflow 3 for a Host header it does not allow."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200 if self.path == "/health" else 403)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_host_header_rejection_is_explained(forbidding_server: str) -> None:
    with pytest.raises(TrackingUnavailableError, match="--allowed-hosts"):
        check_tracking_backend(forbidding_server, timeout_s=2.0)


def test_file_store_and_unwritable_sqlite_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnavailableError, match="refuses the file store"):
        check_tracking_backend(f"file://{tmp_path}/mlruns", timeout_s=1.0)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(TrackingUnavailableError, match="cannot be opened"):
        check_tracking_backend(f"sqlite:///{blocker}/mlflow.db", timeout_s=1.0)


def test_stage_fails_fast_when_tracking_is_down(make_config) -> None:
    config = make_config("tracking.uri=http://127.0.0.1:9", "tracking.check_timeout_s=1.0")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError):
        with stage_run("prep", config, {}):
            pytest.fail("the stage body must not run")
    assert time.monotonic() - started < 5.0
    assert os.environ.get(PARENT_RUN_ENV) is None
