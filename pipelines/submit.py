"""Put the compiled pipeline on a Kubeflow Pipelines server and start runs of it, through `kfp.Client`.

Uploading is idempotent: a pipeline version is identified by the SHA-256 of the compiled YAML, kept in its
name (`<prefix>-<digest>`) and in its description (`content-sha256: <digest>`, which also marks the
default version KFP creates with a new pipeline). Uploading unchanged YAML finds that version and creates
nothing; changed YAML becomes a new version of the same pipeline. A submitted run references such a
version, so every run in the KFP UI links to the exact pipeline it ran.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

logger = logging.getLogger(__name__)

DIGEST_LENGTH = 16  # hex characters of the SHA-256 kept in version names; collisions are not a practical concern


@dataclass(frozen=True)
class UploadedVersion:
    pipeline_id: str
    version_id: str
    version_name: str
    digest: str
    created: bool  # False when this exact YAML was already on the server


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    url: str
    version: UploadedVersion


def package_digest(package: Path) -> str:
    """Content hash of a compiled pipeline file (what decides whether a new version is needed)."""
    return hashlib.sha256(package.read_bytes()).hexdigest()[:DIGEST_LENGTH]


def description_marker(digest: str) -> str:
    return f"content-sha256: {digest}"


def connect(host: str, token: str | None = None, namespace: str | None = None) -> Any:
    """A kfp.Client for `host` (e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888); it checks /healthz."""
    import kfp

    return kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")


def _versions(client: Any, pipeline_id: str) -> Iterator[Any]:
    page_token = ""
    while True:
        response = client.list_pipeline_versions(pipeline_id, page_token=page_token, page_size=100)
        yield from response.pipeline_versions or []
        page_token = response.next_page_token or ""
        if not page_token:
            return


def _find_version(client: Any, pipeline_id: str, digest: str) -> Any | None:
    for version in _versions(client, pipeline_id):
        if digest in (version.display_name or "") or description_marker(digest) in (version.description or ""):
            return version
    return None


def upload_pipeline(client: Any, package: Path, name: str, description: str, version_prefix: str = "") -> UploadedVersion:
    """Make sure pipeline `name` has a version holding exactly `package`; create pipeline/version as needed."""
    if not package.is_file():
        raise FileNotFoundError(f"compiled pipeline {package} does not exist (bifusion pipeline compile writes it)")
    digest = package_digest(package)
    marked = f"{description} ({description_marker(digest)})"
    version_name = f"{version_prefix or name}-{digest}"
    pipeline_id = client.get_pipeline_id(name)
    new_pipeline = pipeline_id is None
    if new_pipeline:
        # KFP creates the pipeline with a default version (named like the pipeline) holding this YAML.
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=name, description=marked).pipeline_id
        logger.info("created pipeline %s (%s)", name, pipeline_id)
    existing = _find_version(client, pipeline_id, digest)
    if existing is not None:
        return UploadedVersion(pipeline_id, existing.pipeline_version_id, existing.display_name, digest, created=new_pipeline)
    try:
        version = client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id, description=marked)
    except Exception as exc:  # kfp_server_api.ApiException; another uploader may have won the race
        existing = _find_version(client, pipeline_id, digest)
        if existing is None:
            raise RuntimeError(f"uploading version {version_name} of pipeline {name} failed: {exc}") from exc
        return UploadedVersion(pipeline_id, existing.pipeline_version_id, existing.display_name, digest, created=False)
    return UploadedVersion(pipeline_id, version.pipeline_version_id, version_name, digest, created=True)


def submit_run(
    client: Any, version: UploadedVersion, experiment: str, run_name: str, arguments: Mapping[str, str], ui_host: str,
) -> SubmittedRun:
    """Start a run of an uploaded version in `experiment` (created if missing); returns its id and UI link."""
    experiment_id = client.create_experiment(experiment).experiment_id
    run = client.run_pipeline(
        experiment_id, run_name, pipeline_id=version.pipeline_id, version_id=version.version_id, params=dict(arguments),
    )
    return SubmittedRun(run.run_id, f"{ui_host.rstrip('/')}/#/runs/details/{run.run_id}", version)
