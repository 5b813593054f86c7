"""Cluster settings files and the pod specs they compile to (GPUs, CPU/memory, placement, secrets, retries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bifusion.components.config import ConfigError
from bifusion.components.config_schema import load_config
from bifusion.pipelines.cluster import STAGE_NAMES, load_cluster_settings, placement_for
from bifusion.pipelines.compile import compile_pipeline
from bifusion.pipelines.run_configs import PipelineConfigs
from bifusion.pipelines.stage_graph import training_steps

ALL_ROUTES = "pipeline.routes=[3d, tinysa, bifusion]"


def all_routes_configs() -> PipelineConfigs:
    """Every stage of the DAG; the training configs are the profile itself (placement does not read them)."""
    base = load_config(["demo"], [ALL_ROUTES])
    return PipelineConfigs(base, {step.stage: base for step in training_steps(base.pipeline)})


def compile_with(tmp_path: Path, settings_ref: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline IR, Kubernetes platform spec) of the all-routes pipeline under these settings."""
    path = compile_pipeline(all_routes_configs(), tmp_path / "pipeline.yaml", placement_for(load_cluster_settings(settings_ref)))
    pipeline, platform = yaml.safe_load_all(path.read_text())
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executor_of(pipeline: dict[str, Any], component_prefix: str, stage: str) -> str:
    """Executor name of the task whose display name is `stage` (display names are the stage labels)."""
    components = pipeline["components"]

    def search(dag_tasks: dict[str, Any]) -> str | None:
        for task in dag_tasks.values():
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                found = search(component["dag"]["tasks"])
                if found:
                    return found
            elif task["taskInfo"]["name"] == stage and task["componentRef"]["name"].startswith(component_prefix):
                return component["executorLabel"]
        return None

    found = search(pipeline["root"]["dag"]["tasks"])
    assert found, f"no task named {stage!r}"
    return found


def task_named(pipeline: dict[str, Any], stage: str) -> dict[str, Any]:
    tasks = dict(pipeline["root"]["dag"]["tasks"])
    for component in pipeline["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return next(task for task in tasks.values() if task["taskInfo"]["name"] == stage)


@pytest.fixture(scope="module")
def gpu_heavy(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    return compile_with(tmp_path_factory.mktemp("gpu-heavy"), "cluster/gpu-heavy")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_stage_entries_are_diffs_on_defaults_and_families() -> None:
    settings = load_cluster_settings("cluster/gpu-heavy")
    train = settings.for_stage("train_bifusion_mv")
    assert (train.gpu.count, train.gpu.product, train.cpu_request) == (8, "NVIDIA-H100-80GB-HBM3", "48")
    assert train.timeout_seconds == 345600  # the exact entry refines the train family
    assert settings.for_stage("train_3d_sv").timeout_seconds == 172800  # family value from default.yaml
    assert settings.for_stage("prep").gpu.count == 0
    assert settings.for_stage("summary").caching is False
    assert settings.image.reference == "registry.example.com/ml/bifusion-pipeline:0.1.0"
    assert settings.s3.credentials_secret == "bifusion-s3"  # inherited through _base_


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("defaults.cpu_limt=2", "did you mean 'cpu_limit'"),
        ("stages.train.memory_limit=64 GB", "stages.train.memory_limit: '64 GB' is not a Kubernetes quantity"),
        ("defaults.retry.backoff=soon", "defaults.retry.backoff: 'soon' is not a duration"),
        ("stages.train.gpu.count=-1", "stages.train: gpu.count"),
        ("stages.train.tolerations=[{key: a, operator: Exists, value: b}]", "stages.train.tolerations.0.: operator Exists takes no value"),
        ("stages.train.caching=sometimes", "stages.train.caching: expected true or false"),
    ],
)
def test_bad_settings_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_cluster_settings("cluster/default", [override])


def test_unknown_stage_names_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stages.trian: unknown stage"):
        load_cluster_settings(_write(tmp_path, "_base_: cluster/default\nstages: {trian: {gpu: {count: 2}}}\n"))


def test_every_pipeline_stage_has_settings() -> None:
    settings = load_cluster_settings()
    for stage in STAGE_NAMES:
        assert settings.for_stage(stage).memory_limit
    with pytest.raises(ValueError, match="unknown pipeline stage 'train'"):
        settings.for_stage("train")


def test_compiled_gpu_heavy_pipeline_asks_for_its_gpus_resources_and_nodes(gpu_heavy: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pipeline, platform = gpu_heavy
    executors = pipeline["deploymentSpec"]["executors"]

    train = executors[executor_of(pipeline, "comp-train-component", "train bifusion_mv")]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "8"
    assert train["resources"]["resourceCpuRequest"] == "48"
    assert train["resources"]["resourceMemoryLimit"] == "480Gi"
    assert env_of(train)["BIFUSION_GPUS_PER_POD"] == "8"
    assert train["image"] == "registry.example.com/ml/bifusion-pipeline:0.1.0"

    train_k8s = platform[executor_of(pipeline, "comp-train-component", "train bifusion_mv")]
    assert train_k8s["nodeSelector"]["labels"] == {"pool": "gpu-h100", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in train_k8s["tolerations"]
    assert train_k8s["activeDeadlineSeconds"] == "345600"
    assert train_k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "64Gi"}]
    assert train_k8s["imagePullPolicy"] == "Always"
    assert [secret["secretName"] for secret in train_k8s["imagePullSecret"]] == ["regcred"]

    prep = executors[executor_of(pipeline, "comp-prep-component", "prep")]["container"]
    assert "accelerator" not in prep["resources"]
    assert env_of(prep)["BIFUSION_GPUS_PER_POD"] == "0"
    prep_k8s = platform[executor_of(pipeline, "comp-prep-component", "prep")]
    assert "nodeSelector" not in prep_k8s and "tolerations" not in prep_k8s


def test_every_task_gets_tracking_env_s3_secret_and_the_image(gpu_heavy: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pipeline, platform = gpu_heavy
    executors = pipeline["deploymentSpec"]["executors"]
    assert len(executors) == len(platform) >= 16  # synth, 2 preps, clip, 6 trains, 6 evaluations, summary
    for name, executor in executors.items():
        env = env_of(executor["container"])
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc.cluster.local:5000", name
        assert env["MLFLOW_EXPERIMENT_NAME"] == "bifusion-gpu"
        assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.minio.svc.cluster.local:9000"
        assert executor["container"]["image"] == "registry.example.com/ml/bifusion-pipeline:0.1.0"
        (secret,) = platform[name]["secretAsEnv"]
        assert secret["secretName"] == "bifusion-s3"
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")}


def test_retry_and_caching_policies_per_stage(gpu_heavy: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pipeline, _ = gpu_heavy
    train = task_named(pipeline, "train 3d_sv")
    assert train["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "300s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s"}
    assert train["cachingOptions"] == {}  # caching off: every run logs its training to MLflow
    prep = task_named(pipeline, "prep")
    assert prep["cachingOptions"] == {"enableCache": True}
    assert prep["retryPolicy"]["maxRetryCount"] == 2
    assert task_named(pipeline, "ablation summary")["cachingOptions"] == {}


def test_no_secret_and_no_endpoint_means_no_such_env(tmp_path: Path) -> None:
    _, platform = compile_with(tmp_path, _write(tmp_path, "_base_: cluster/default\ns3: {credentials_secret: ''}\n"))
    assert all("secretAsEnv" not in executor for executor in platform.values())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path
