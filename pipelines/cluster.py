"""Cluster settings: where and how each pipeline stage runs on Kubernetes, and the placement that applies them.

A settings file (`configs/cluster/default.yaml`, or a diff on it via `_base_`) names the stage image, the S3
credentials Secret, the MLflow server and, per stage, GPUs, CPU/memory, node selector, tolerations,
caching, retries and a timeout. `stages` entries are diffs on `defaults`; a family key (`train`,
`evaluate`) applies to every stage of that family and an exact key (`train_bifusion_mv`) refines it.
These settings shape the compiled pod specs only, never the results: the stage configs stay the one place
for model and data options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from kfp import dsl, kubernetes

from bifusion.components.config import ConfigError, apply_overrides, build_dataclass, deep_merge, load_tree
from bifusion.components.train.launch import GPUS_PER_POD_ENV
from bifusion.pipelines.pipeline import TaskPlacement
from bifusion.pipelines.stage_graph import ROUTE_STAGES

DEFAULT_CLUSTER_SETTINGS = "cluster/default"
STAGE_FAMILIES = ("train", "evaluate")
TRAIN_STAGE_NAMES = tuple(stage for pair in ROUTE_STAGES.values() for stage in pair)
STAGE_NAMES = (
    "synth", "prep", "clip_precompute", "summary",
    *(f"{family}_{stage}" for family in STAGE_FAMILIES for stage in TRAIN_STAGE_NAMES),
)
# Kubernetes quantities: "4", "500m", "0.5" for CPU; "16Gi", "512Mi", "1G" for memory.
_CPU_QUANTITY = re.compile(r"^\d+(\.\d+)?m?$")
_MEMORY_QUANTITY = re.compile(r"^\d+(\.\d+)?([EPTGMK]i?|k)?$")
_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)$")


@dataclass(frozen=True)
class ImageSettings:
    repository: str
    tag: str
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pull_secrets: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class S3Settings:
    credentials_secret: str  # Kubernetes Secret in the run namespace; empty = the pods use their own role
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"  # keys inside that Secret
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph); empty = AWS


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str
    experiment_name: str


@dataclass(frozen=True)
class GpuSettings:
    count: int = 0  # GPUs per pod; training stages with more than one start one torchrun process per GPU
    resource: str = "nvidia.com/gpu"  # extended resource the device plugin advertises
    product: str = ""  # GPU model as the node label `product_label` spells it; empty = any model
    product_label: str = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


@dataclass(frozen=True)
class RetrySettings:
    count: int = 0  # retries after the first attempt; 0 = fail on the first error
    backoff: str = "60s"
    factor: float = 2.0
    max_backoff: str = "1h"


@dataclass(frozen=True)
class StageSettings:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    gpu: GpuSettings
    node_selector: dict[str, str]
    tolerations: list[Toleration]
    caching: bool
    retry: RetrySettings
    timeout_seconds: int  # 0 = no deadline
    shm_size: str = ""  # RAM-backed /dev/shm for DataLoader workers and NCCL; empty = the runtime's 64 MB


@dataclass(frozen=True)
class ClusterSettings:
    image: ImageSettings
    s3: S3Settings
    mlflow: MlflowSettings
    defaults: StageSettings
    stages: dict[str, StageSettings]  # key (stage or family) -> defaults with that key's diff applied

    def for_stage(self, stage: str) -> StageSettings:
        """The settings of one pipeline stage: its exact entry, else its family's, else the defaults."""
        if stage not in STAGE_NAMES:
            raise ValueError(f"unknown pipeline stage '{stage}'; known: {', '.join(STAGE_NAMES)}")
        family = stage.split("_", 1)[0]
        return self.stages.get(stage) or self.stages.get(family) or self.defaults


def load_cluster_settings(ref: str | Path = DEFAULT_CLUSTER_SETTINGS, overrides: Sequence[str] = ()) -> ClusterSettings:
    """Read a cluster settings file (a path or a built-in name like `cluster/gpu-heavy`) plus `a.b=value`
    overrides; unknown keys, unknown stages and malformed quantities raise ConfigError naming the field."""
    tree = apply_overrides(load_tree([ref]), overrides)
    stage_diffs = tree.pop("stages", None) or {}
    defaults_tree = tree.get("defaults")
    if not isinstance(stage_diffs, dict):
        raise ConfigError(f"{ref}: 'stages' must map stage names to settings, got {stage_diffs!r}")
    if not isinstance(defaults_tree, dict):
        raise ConfigError(f"{ref}: 'defaults' must be a mapping of stage settings")
    settings = build_dataclass(ClusterSettings, {**tree, "stages": {}}, "")
    defaults = _checked(settings.defaults, "defaults")
    known_keys = (*STAGE_FAMILIES, *STAGE_NAMES)
    stages: dict[str, StageSettings] = {}
    for key, diff in stage_diffs.items():
        if key not in known_keys:
            raise ConfigError(f"{ref}: stages.{key}: unknown stage; known: {', '.join(known_keys)}")
        if not isinstance(diff, dict):
            raise ConfigError(f"{ref}: stages.{key}: expected a mapping of stage settings, got {diff!r}")
        family_diff = stage_diffs.get(key.split("_", 1)[0], {}) if key in STAGE_NAMES else {}
        merged = deep_merge(deep_merge(defaults_tree, family_diff), diff)
        stages[key] = _checked(build_dataclass(StageSettings, merged, f"stages.{key}"), f"stages.{key}")
    return ClusterSettings(settings.image, settings.s3, settings.mlflow, defaults, stages)


def _checked(stage: StageSettings, where: str) -> StageSettings:
    """Reject values Kubernetes or Argo would only refuse at run time, hours into a pipeline."""
    for name, pattern in (("cpu_request", _CPU_QUANTITY), ("cpu_limit", _CPU_QUANTITY),
                          ("memory_request", _MEMORY_QUANTITY), ("memory_limit", _MEMORY_QUANTITY)):
        value = getattr(stage, name)
        if value and not pattern.match(value):
            raise ConfigError(f"{where}.{name}: '{value}' is not a Kubernetes quantity (e.g. '4', '500m', '16Gi')")
    if stage.shm_size and not _MEMORY_QUANTITY.match(stage.shm_size):
        raise ConfigError(f"{where}.shm_size: '{stage.shm_size}' is not a memory quantity (e.g. '16Gi')")
    if stage.gpu.count < 0 or stage.retry.count < 0 or stage.timeout_seconds < 0:
        raise ConfigError(f"{where}: gpu.count, retry.count and timeout_seconds must be >= 0")
    for name in ("backoff", "max_backoff"):
        if not _DURATION.match(getattr(stage.retry, name)):
            raise ConfigError(f"{where}.retry.{name}: '{getattr(stage.retry, name)}' is not a duration like '30s', '5m', '1h'")
    for i, toleration in enumerate(stage.tolerations):
        if toleration.operator == "Exists" and toleration.value:
            raise ConfigError(f"{where}.tolerations[{i}]: operator Exists takes no value")
    return stage


def placement_for(settings: ClusterSettings) -> TaskPlacement:
    """A placement that gives every task the image, env, secrets and its stage's resources and policies."""

    def place(task: dsl.PipelineTask, stage: str) -> None:
        stage_settings = settings.for_stage(stage)
        task.set_container_image(settings.image.reference)
        kubernetes.set_image_pull_policy(task, settings.image.pull_policy)
        if settings.image.pull_secrets:
            kubernetes.set_image_pull_secrets(task, settings.image.pull_secrets)
        _attach_services(task, settings)
        _attach_resources(task, stage_settings)
        _attach_scheduling(task, stage_settings)
        task.set_caching_options(enable_caching=stage_settings.caching)
        if stage_settings.retry.count:
            retry = stage_settings.retry
            task.set_retry(retry.count, backoff_duration=retry.backoff, backoff_factor=retry.factor,
                           backoff_max_duration=retry.max_backoff)
        if stage_settings.timeout_seconds:
            kubernetes.set_timeout(task, stage_settings.timeout_seconds)

    return place


def _attach_services(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    # Stages read tracking.uri first, then these: the env fills in what a cluster-neutral config leaves empty.
    task.set_env_variable("MLFLOW_TRACKING_URI", settings.mlflow.tracking_uri)
    task.set_env_variable("MLFLOW_EXPERIMENT_NAME", settings.mlflow.experiment_name)
    if settings.s3.endpoint_url:
        # boto3 reads AWS_ENDPOINT_URL, MLflow's artifact client MLFLOW_S3_ENDPOINT_URL.
        task.set_env_variable("AWS_ENDPOINT_URL", settings.s3.endpoint_url)
        task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", settings.s3.endpoint_url)
    if settings.s3.credentials_secret:
        kubernetes.use_secret_as_env(task, settings.s3.credentials_secret, {
            settings.s3.access_key_id_key: "AWS_ACCESS_KEY_ID",
            settings.s3.secret_access_key_key: "AWS_SECRET_ACCESS_KEY",
        })


def _attach_resources(task: dsl.PipelineTask, stage: StageSettings) -> None:
    if stage.cpu_request:
        task.set_cpu_request(stage.cpu_request)
    if stage.cpu_limit:
        task.set_cpu_limit(stage.cpu_limit)
    if stage.memory_request:
        task.set_memory_request(stage.memory_request)
    if stage.memory_limit:
        task.set_memory_limit(stage.memory_limit)
    task.set_env_variable(GPUS_PER_POD_ENV, str(stage.gpu.count))
    if stage.gpu.count:
        task.set_accelerator_type(stage.gpu.resource).set_accelerator_limit(stage.gpu.count)
    if stage.shm_size:
        kubernetes.empty_dir_mount(task, "dshm", "/dev/shm", medium="Memory", size_limit=stage.shm_size)


def _attach_scheduling(task: dsl.PipelineTask, stage: StageSettings) -> None:
    labels = dict(stage.node_selector)
    if stage.gpu.count and stage.gpu.product:
        labels[stage.gpu.product_label] = stage.gpu.product
    for key, value in labels.items():
        kubernetes.add_node_selector(task, key, value)
    for toleration in stage.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                  value=toleration.value or None, effect=toleration.effect or None)
