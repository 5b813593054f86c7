"""MLflow bookkeeping: one parent run per pipeline run, one child run per stage.

A stage finds its parent through the environment (`BIFUSION_MLFLOW_PARENT_RUN_ID`), so the parent id is
not a task input and KFP caching still works. Run outside a pipeline, a stage records a top-level run.
The tracking server is checked before any work starts, with a short timeout, so an unreachable or
misconfigured server fails a stage in seconds instead of after hours of training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

from bifusion.components.config import flatten, to_tree, to_yaml
from bifusion.components.config_schema import Config, TrackingConfig, config_to_json

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "BIFUSION_MLFLOW_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "bifusion"
RESOLVED_CONFIG_ARTIFACT = "resolved_config.json"
_PARAM_BATCH = 100  # MLflow's per-request limit for params
_PARAM_VALUE_LIMIT = 6000


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking backend cannot be used; the message says which URI and why."""


def resolve_tracking_uri(config: TrackingConfig, workdir: str | Path) -> str:
    """Config value, else MLFLOW_TRACKING_URI, else an SQLite database inside the workdir."""
    if config.uri:
        return config.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def resolve_experiment(config: TrackingConfig) -> str:
    return config.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_tracking_backend(uri: str, timeout_s: float) -> None:
    """Fail fast with a clear message when the tracking backend cannot be reached or written."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        _check_http_server(uri, timeout_s)
    elif parsed.scheme == "sqlite":
        _check_sqlite(uri, timeout_s)
    elif parsed.scheme in ("", "file"):
        raise TrackingUnavailableError(
            f"tracking URI {uri}: MLflow 3 refuses the file store; use sqlite:///path/mlflow.db or an http(s) server"
        )


def _check_http_server(uri: str, timeout_s: float) -> None:
    import requests

    # /health answers 200 even when the server rejects our Host header, so ask a real API endpoint.
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        response = requests.get(probe, timeout=timeout_s)
    except requests.RequestException as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} unreachable within {timeout_s:.0f} s ({type(exc).__name__}); "
            "check tracking.uri / MLFLOW_TRACKING_URI and that the server is running"
        ) from None
    if response.status_code == 403:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} answered 403: it rejects this Host header; start it with "
            "--allowed-hosts (MLFLOW_SERVER_ALLOWED_HOSTS) including this host name"
        )
    if response.status_code == 401:
        raise TrackingUnavailableError(f"MLflow tracking server {uri} answered 401: set MLFLOW_TRACKING_TOKEN")
    if response.status_code >= 400:
        raise TrackingUnavailableError(f"MLflow tracking server {uri} answered HTTP {response.status_code}")


def _check_sqlite(uri: str, timeout_s: float) -> None:
    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if path is None:
        raise TrackingUnavailableError(f"tracking URI {uri}: expected sqlite:///absolute/or/relative/path.db")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as db:
            db.execute("SELECT 1")
    except (OSError, sqlite3.Error) as exc:
        raise TrackingUnavailableError(f"tracking database {path} cannot be opened: {exc}") from None


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """Experiment id for `name`, creating it (artifacts beside an SQLite database) when missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        artifact_location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another stage created it between our lookup and create.
        return client.get_experiment_by_name(name).experiment_id


def _loggable_params(params: Mapping[str, Any]) -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        text = "null" if value is None else str(value)
        flat[key] = text if len(text) <= _PARAM_VALUE_LIMIT else text[: _PARAM_VALUE_LIMIT - 3] + "..."
    return flat


def start_pipeline_run(config: Config, pipeline_run_id: str, run_name: str, tags: Mapping[str, str] = ()) -> str:
    """Open the parent run of one pipeline run (tagged with its id) and leave it running; returns its id."""
    uri = resolve_tracking_uri(config.tracking, config.workdir)
    check_tracking_backend(uri, config.tracking.check_timeout_s)
    client = _client(uri)
    experiment_id = ensure_experiment(client, resolve_experiment(config.tracking), uri)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={"bifusion.pipeline_run_id": pipeline_run_id, "bifusion.kind": "pipeline", **dict(tags)},
    )
    return run.info.run_id


PIPELINE_OUTPUTS_ARTIFACT = "pipeline_outputs.json"
_TAG_VALUE_LIMIT = 5000  # MLflow rejects longer tag values (metrics JSON of a real ScanNet200 run is longer)


def finish_pipeline_run(
    config: Config, run_id: str, status: str, tags: Mapping[str, str] = (), outputs: Mapping[str, str] | None = None
) -> None:
    """Close a parent run with FINISHED, FAILED or KILLED, adding final tags (e.g. cached stages).

    `outputs` (the pipeline's output parameters) are stored whole as `pipeline_outputs.json` (what
    `--reuse-run` reads) and, where short enough, as `bifusion.output.<name>` tags for the MLflow UI."""
    client = _client(resolve_tracking_uri(config.tracking, config.workdir))
    if outputs is not None:
        client.log_dict(run_id, dict(outputs), PIPELINE_OUTPUTS_ARTIFACT)
        tags = {**{f"bifusion.output.{k}": v for k, v in outputs.items() if len(v) <= _TAG_VALUE_LIMIT}, **dict(tags)}
    for key, value in dict(tags).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status)


def pipeline_outputs(config: Config, run_id: str) -> dict[str, str]:
    """The outputs a finished pipeline run recorded (its parent run's `pipeline_outputs.json`)."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    client = _client(resolve_tracking_uri(config.tracking, config.workdir))
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(f"MLflow run {run_id}: not found ({error.message})") from None
    if run.data.tags.get("bifusion.kind") != "pipeline":
        raise ValueError(f"MLflow run {run_id} is not a pipeline run (tag bifusion.kind={run.data.tags.get('bifusion.kind')!r})")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, PIPELINE_OUTPUTS_ARTIFACT, tmp)
        except MlflowException:
            raise ValueError(f"pipeline run {run_id} has no {PIPELINE_OUTPUTS_ARTIFACT}: it did not finish") from None
        return json.loads(Path(path).read_text())


def stage_names_under(config: Config, parent_run_id: str) -> set[str]:
    """Stages that recorded a child run under a pipeline's parent run (cached stages did not)."""
    client = _client(resolve_tracking_uri(config.tracking, config.workdir))
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {run.data.tags.get("bifusion.stage", "") for run in children}


class StageRun:
    """Handle a stage uses to record metrics and small artifacts in its own MLflow run."""

    def __init__(self, client: Any, run_id: str, stage: str):
        self.client = client
        self.run_id = run_id
        self.stage = stage

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file (a plot, a render) to the run, under `artifact_path` when given."""
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))


def _resumable_run(client: Any, run_id: str | None) -> Any:
    """The run to continue after a restart: it must exist and not have finished."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.status != "FINISHED" else None


@contextlib.contextmanager
def stage_run(
    stage: str,
    config: Config,
    sections: Mapping[str, Any],
    tags: Mapping[str, str] = (),
    resume_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Record one stage as an MLflow run (child of the pipeline's run when there is one).

    `sections` is the part of the resolved config the stage uses; it is logged flattened as params and
    whole as `config.yaml`. A stage restarting after a crash passes the run id it saved in its
    checkpoint as `resume_run_id` and keeps logging into that run (metrics continue at their steps).
    The run ends FINISHED, or FAILED/KILLED when the stage raises.
    """
    from mlflow.entities import Param

    uri = resolve_tracking_uri(config.tracking, config.workdir)
    check_tracking_backend(uri, config.tracking.check_timeout_s)
    client = _client(uri)
    resumed = _resumable_run(client, resume_run_id)
    if resumed is not None:
        run_id = resumed.info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("stage %s: resuming MLflow run %s at %s", stage, run_id, uri)
    else:
        experiment_id = ensure_experiment(client, resolve_experiment(config.tracking), uri)
        run_tags = {"bifusion.stage": stage, "bifusion.kind": "stage", **dict(tags)}
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:
            run_tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(experiment_id, run_name=stage, tags=run_tags).info.run_id
        tree = to_tree(dict(sections))
        items = sorted(_loggable_params(flatten(tree)).items())
        for start in range(0, len(items), _PARAM_BATCH):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + _PARAM_BATCH]])
        client.log_text(run_id, to_yaml(tree), "config.yaml")
        # The whole resolved config (not just the stage's sections): `bifusion rerun` rebuilds the stage from it.
        client.log_text(run_id, config_to_json(config), RESOLVED_CONFIG_ARTIFACT)
        log.info("stage %s: MLflow run %s at %s", stage, run_id, uri)
    handle = StageRun(client, run_id, stage)
    try:
        yield handle
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
