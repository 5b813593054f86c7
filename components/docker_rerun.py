"""`bifusion rerun --in-docker`: rerun one stage inside the stage image through the Docker Engine API.

The same image that runs the stage in a KFP pod runs it here, so a failure seen on the cluster can be
reproduced with the cluster's exact libraries. The container runs `bifusion rerun` itself; this module only
builds the container spec and watches it:

- S3 and MLflow settings: every AWS_* and MLFLOW_* variable of the caller, handed to the engine as
  container environment. Only their names are ever logged.
- Local data: every local folder the stage touches (workdir, a local store, file inputs and output, the
  SQLite tracking database's folder) is bind-mounted at the same path, so recorded URIs stay valid.
- GPUs: train, evaluate and clip_precompute stages ask for all GPUs unless `gpus` says otherwise.
- Host networking, so an MLflow server or MinIO on localhost is reachable as on the host.

`docker.from_env()` honours DOCKER_HOST, so a remote engine works the same way. The engine check, the
environment and the mounts are shared with `bifusion pipeline run --local --runner docker`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

from bifusion.components.rerun import (
    ADDRESSED_OUTPUT_STAGES,
    RecordedStage,
    default_tracking_uri,
    fresh_output_uri,
    load_recorded_stage,
    rerun_config,
    stage_call,
)
from bifusion.components.storage import Storage, is_s3_uri, local_path

log = logging.getLogger(__name__)

DEFAULT_STAGE_IMAGE = "ghcr.io/bifusion/bifusion-pipeline:0.1.0"
PASSED_ENV_PREFIXES = ("AWS_", "MLFLOW_")
GPU_STAGE_PREFIXES = ("train_", "evaluate_", "clip_precompute")
# PyTorch data-loader workers share tensors through /dev/shm; Docker's default 64 MB is too small.
SHM_SIZE = "2g"


class DockerEngineError(RuntimeError):
    """No engine, or the container could not be created or started; the message says why and what to do."""


def stage_image() -> str:
    """The stage image: BIFUSION_STAGE_IMAGE (the variable the pipeline components read), else the release."""
    return os.environ.get("BIFUSION_STAGE_IMAGE", DEFAULT_STAGE_IMAGE)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the container is created with. `environment` holds secrets: log `env_names` only."""

    image: str
    command: list[str]  # arguments of `bifusion` (the entrypoint)
    environment: dict[str, str] = field(repr=False)
    volumes: dict[str, dict[str, str]]  # host folder -> {"bind": same path, "mode": "rw"}
    gpus: str  # "all", a count, or "0" for none
    user: str | None
    labels: dict[str, str]

    @property
    def env_names(self) -> list[str]:
        return sorted(self.environment)

    def device_requests(self) -> list[Any]:
        from docker.types import DeviceRequest

        if self.gpus == "0":
            return []
        count = -1 if self.gpus == "all" else int(self.gpus)
        return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def parse_gpus(value: str | None, stage: str) -> str:
    """`--gpus`: all, a positive count or 0; unset means all for GPU stages and none otherwise."""
    if value is None:
        return "all" if stage.startswith(GPU_STAGE_PREFIXES) else "0"
    if value == "all":
        return value
    if value.isdigit():
        return str(int(value))
    raise DockerEngineError(f"--gpus {value!r}: expected 'all', a number of GPUs, or 0 for none")


def local_folder_of(uri: str) -> Path | None:
    """The local folder of a plain path or file:// URI; None for S3 and other remote URIs."""
    if not uri or is_s3_uri(uri) or ("://" in uri and not uri.startswith("file://")):
        return None
    return local_path(uri)


def passed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's S3 and MLflow settings (credentials included) a container needs; never log the values."""
    return {key: value for key, value in environ.items() if key.startswith(PASSED_ENV_PREFIXES)}


def container_user() -> str | None:
    """Run as the caller, so files written into mounted folders belong to them."""
    return f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None


def local_mount_folders(paths: Sequence[Path]) -> list[Path]:
    """The existing ones of `paths` without those inside another; a missing input is left to the stage to
    report (mounting it would make Docker create an empty root-owned folder in its place)."""
    chosen: list[Path] = []
    for path in (p.resolve() for p in paths):
        if path.exists():
            chosen.append(path)
        else:
            log.warning("%s does not exist on this host; not mounted", path)
    unique = sorted(set(chosen), key=lambda p: len(p.parts))
    return [p for i, p in enumerate(unique) if not any(p.is_relative_to(q) for q in unique[:i])]


def container_spec(
    recorded: RecordedStage,
    tracking_uri: str,
    overrides: Sequence[str] = (),
    output_uri: str | None = None,
    inputs: Mapping[str, str] = (),
    image: str | None = None,
    gpus: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ContainerSpec:
    """The container that reruns `recorded` with `bifusion rerun` inside the stage image.

    The output location is decided here, on the host, so the host and the container agree on it and a
    local output folder exists (owned by the caller) before the container writes into it.
    """
    config = rerun_config(recorded, tracking_uri, overrides)
    storage = Storage(config.storage, config.workdir)
    if recorded.stage not in ADDRESSED_OUTPUT_STAGES:
        output_uri = storage.resolve(output_uri or fresh_output_uri(config, recorded))
    workdir = Path(config.workdir).resolve()
    given = [storage.root, *dict(inputs).values(), *(u for value in recorded.inputs.values() for u in value.split(","))]
    local = [workdir, *(p for p in map(local_folder_of, given) if p)]
    output_folder = local_folder_of(output_uri) if output_uri else None
    if output_folder is not None:
        output_folder.mkdir(parents=True, exist_ok=True)
        local.append(output_folder)
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):]).resolve()
        tracking_uri = f"sqlite:///{database}"  # the container starts in another folder
        local.append(database.parent)  # the database and its mlartifacts/
    workdir.mkdir(parents=True, exist_ok=True)

    command = ["rerun", "--mlflow-run", recorded.run_id, "--tracking-uri", tracking_uri]
    if output_uri:
        command += ["--output-uri", output_uri]
    # The recorded workdir may be relative to where the run started; inside the container it must be this one.
    command += ["--set", f"workdir={workdir}"]
    for override in overrides:
        command += ["--set", override]
    for name, uri in dict(inputs).items():
        command += ["--input", f"{name}={uri}"]
    environment = passed_environment(environ)
    volumes = {str(folder): {"bind": str(folder), "mode": "rw"} for folder in local_mount_folders(local)}
    return ContainerSpec(
        image=image or stage_image(),
        command=command,
        environment=environment,
        volumes=volumes,
        gpus=parse_gpus(gpus, recorded.stage),
        user=container_user(),
        labels={"bifusion.rerun_of": recorded.run_id, "bifusion.stage": recorded.stage},
    )


def docker_engine() -> Any:
    """A Docker SDK client (DOCKER_HOST or the default socket), or a clear error when no engine answers."""
    import docker

    where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise DockerEngineError(
            f"no Docker engine reachable at {where}: {exc}. Start Docker, or point DOCKER_HOST at an engine"
        ) from None


def _gpu_runtime_missing(message: str) -> bool:
    text = message.lower()
    return "could not select device driver" in text or "nvidia" in text


def _api_error(exc: Any, spec: ContainerSpec) -> DockerEngineError:
    message = str(getattr(exc, "explanation", None) or exc)
    if spec.gpus != "0" and _gpu_runtime_missing(message):
        return DockerEngineError(
            f"the Docker engine cannot give this container GPUs ({message}). Install the NVIDIA Container "
            "Toolkit and restart Docker, or rerun on CPU with --gpus 0"
        )
    return DockerEngineError(f"the Docker engine refused the container: {message}")


def run_container(spec: ContainerSpec, client: Any | None = None, stream: BinaryIO | None = None) -> int:
    """Create and start the container, stream its log to `stream` (stdout), return its exit code.

    The container is removed afterwards whatever happens, Ctrl-C included (removal with force stops it).
    """
    import docker

    client = client or docker_engine()
    stream = stream or sys.stdout.buffer
    log.info(
        "rerun in %s: bifusion %s; environment %s (values not shown); mounts %s; gpus %s",
        spec.image, " ".join(spec.command), ", ".join(spec.env_names) or "none", ", ".join(spec.volumes) or "none", spec.gpus,
    )
    try:
        container = client.containers.create(
            spec.image,
            spec.command,
            entrypoint=["bifusion"],
            environment=spec.environment,
            volumes=spec.volumes,
            device_requests=spec.device_requests(),
            user=spec.user,
            labels=spec.labels,
            network_mode="host",
            shm_size=SHM_SIZE,
            detach=True,
        )
    except docker.errors.ImageNotFound:
        raise DockerEngineError(
            f"image {spec.image} is not on the Docker engine: build it with `make images` or fetch it with "
            f"`docker pull {spec.image}` (or choose another with --image / BIFUSION_STAGE_IMAGE)"
        ) from None
    except docker.errors.APIError as exc:
        raise _api_error(exc, spec) from None
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise _api_error(exc, spec) from None
        for chunk in container.logs(stream=True, follow=True):
            stream.write(chunk)
            stream.flush()
        return int(container.wait()["StatusCode"])
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError as exc:
            log.warning("could not remove container %s: %s", container.id, exc)


def rerun_in_docker(
    run_id: str,
    overrides: Sequence[str] = (),
    output_uri: str | None = None,
    tracking_uri: str | None = None,
    inputs: Mapping[str, str] = (),
    image: str | None = None,
    gpus: str | None = None,
) -> int:
    """Rerun a recorded stage in its container; returns the container's exit code."""
    tracking_uri = tracking_uri or default_tracking_uri()
    recorded = load_recorded_stage(run_id, tracking_uri)
    stage_call(recorded.stage)  # a stage that cannot be rerun fails here, before any container starts
    spec = container_spec(recorded, tracking_uri, overrides, output_uri, inputs, image, gpus)
    return run_container(spec)
