"""Run the pipeline on this machine with `kfp.local` (SubprocessRunner, caching on by default).

The launcher owns the pipeline run: it opens the MLflow parent run, hands its id to the stage tasks
through the environment (not as a task input, which would defeat KFP's cache), and closes it with the
final status, noting which stages were served from the cache.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from bifusion.pipelines.stage_graph import TrainingStep
from bifusion.pipelines.run_configs import PipelineConfigs
from bifusion.components.tracking import (
    PARENT_RUN_ENV,
    check_tracking_backend,
    finish_pipeline_run,
    resolve_tracking_uri,
    start_pipeline_run,
    stage_names_under,
)


@dataclass(frozen=True)
class LocalRunResult:
    pipeline_run_id: str
    mlflow_parent_run_id: str
    tracking_uri: str
    store_uri: str
    outputs: dict[str, str]
    cached_stages: list[str]


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def expected_stages(steps: list[TrainingStep], given_raw_data: bool, reuse: Mapping[str, str] = {}) -> list[str]:
    """MLflow stage names one pipeline run records when nothing comes from the cache (reused ones never run)."""
    names = [] if "sv_uri" in reuse else ["prep"] if given_raw_data else ["synth", "prep"]
    if any(step.stage.startswith("bifusion") for step in steps) and "clip_features_uri" not in reuse:
        names.append("clip_precompute")
    for step in steps:
        if f"checkpoint_{step.stage}" not in reuse:
            names += [f"train_{step.stage}", step.evaluation_stage]
    return [*names, "summary"]


def run_local(
    configs: PipelineConfigs, raw_uri: str = "", enable_caching: bool = True, runner: str = "subprocess",
    reuse: Mapping[str, str] = {},
) -> LocalRunResult:
    """Run the whole pipeline locally; `raw_uri` empty generates demo rooms, else prepares that raw root.

    `runner` is `subprocess` (this Python environment) or `docker` (each task in the stage image). `reuse`:
    outputs of an earlier run to take instead of running their tasks (`reuse.resolve_reuse`)."""
    from kfp import local

    from bifusion.components.docker_rerun import passed_environment
    from bifusion.components.storage import Storage
    from bifusion.pipelines.local_runners import check_runner_available, local_runner, task_folders
    from bifusion.pipelines.pipeline import build_pipeline

    config = configs.base
    workdir = Path(config.workdir)
    if not workdir.is_absolute():
        raise ValueError(f"workdir must be absolute for local runs (tasks run in other processes), got {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(config.tracking, workdir)
    check_tracking_backend(tracking_uri, config.tracking.check_timeout_s)
    check_runner_available(runner)
    pipeline_run_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    runner_tag = "kfp.local" if runner == "subprocess" else f"kfp.local.{runner}"
    parent = start_pipeline_run(config, pipeline_run_id, f"pipeline {pipeline_run_id}", {"bifusion.runner": runner_tag})
    task_environment = {**passed_environment(os.environ), PARENT_RUN_ENV: parent, "MLFLOW_TRACKING_URI": tracking_uri}
    local.init(
        runner=local_runner(runner, task_environment, task_folders(config, raw_uri, tracking_uri)),
        pipeline_root=str(workdir / "kfp"),
        enable_caching=enable_caching,
        raise_on_error=True,
    )
    try:
        with _environment(**{PARENT_RUN_ENV: parent, "MLFLOW_TRACKING_URI": tracking_uri}):
            task = build_pipeline(configs.steps, reuse=reuse)(**configs.arguments(), raw_uri=raw_uri)
    except BaseException:
        finish_pipeline_run(config, parent, "FAILED")
        raise
    outputs = {name: str(value) for name, value in task.outputs.items()}
    ran = stage_names_under(config, parent)
    cached = [stage for stage in expected_stages(configs.steps, bool(raw_uri), reuse) if stage not in ran]
    finish_pipeline_run(config, parent, "FINISHED", {"bifusion.cached_stages": ",".join(cached) or "none"}, outputs)
    store = Storage(config.storage, workdir).root
    return LocalRunResult(pipeline_run_id, parent, tracking_uri, store, outputs, cached)
