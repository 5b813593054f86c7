"""The two `kfp.local` runners of `bifusion pipeline run --local`: subprocesses here, or the stage image.

`subprocess` runs each task in this Python environment (quick, nothing to build). `docker` runs each task in
the stage image (BIFUSION_STAGE_IMAGE) as the cluster would, through the Docker engine DOCKER_HOST names.
A task container then needs what a subprocess inherits for free: the launcher's environment (MLflow parent
run, tracking URI, AWS/MLflow settings) and the local folders the stages read and write, mounted at the
same paths so URIs recorded by one task stay valid for the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from bifusion.components.config_schema import Config

RUNNERS = ("subprocess", "docker")


def check_runner_available(kind: str) -> None:
    """Fail before the pipeline run is opened: an unknown runner, or no Docker engine for `docker`."""
    if kind not in RUNNERS:
        raise ValueError(f"runner '{kind}': expected one of {', '.join(RUNNERS)}")
    if kind == "docker":
        from bifusion.components.docker_rerun import docker_engine

        docker_engine().close()


def task_folders(config: Config, raw_uri: str, tracking_uri: str) -> list[Path]:
    """Local folders the tasks read or write: workdir, a local store (made now, tasks write there), a local
    raw root and the folder of an SQLite tracking database."""
    from bifusion.components.docker_rerun import local_folder_of
    from bifusion.components.storage import Storage

    folders = [Path(config.workdir)]
    store = local_folder_of(Storage(config.storage, config.workdir).root)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        folders.append(store)
    raw = local_folder_of(raw_uri)
    if raw is not None:
        folders.append(raw)
    if tracking_uri.startswith("sqlite:///"):
        folders.append(Path(tracking_uri[len("sqlite:///"):]).parent)
    return folders


def local_runner(kind: str, environment: Mapping[str, str], local_folders: Sequence[Path]) -> Any:
    """The kfp.local runner object; `environment` and `local_folders` matter to `docker` only."""
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise ValueError(f"runner '{kind}': expected one of {', '.join(RUNNERS)}")
    import docker

    from bifusion.components.docker_rerun import SHM_SIZE, container_user, local_mount_folders

    mounts = [
        docker.types.Mount(target=str(folder), source=str(folder), type="bind")
        for folder in local_mount_folders(local_folders)
    ]
    return local.DockerRunner(
        # The image's ENTRYPOINT is `bifusion`, and KFP's task command starts with `sh -c`: `env` runs it as given.
        entrypoint=["/usr/bin/env"],
        environment=dict(environment),
        mounts=mounts,
        network_mode="host",  # an MLflow server or MinIO on localhost answers as it does for the launcher
        user=container_user(),
        shm_size=SHM_SIZE,
    )
