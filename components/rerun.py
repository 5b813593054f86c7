"""`bifusion rerun`: execute one stage of a past run again, from what its MLflow run recorded.

A stage run carries everything needed to repeat it: the whole resolved config (`resolved_config.json`),
the URIs it read (`bifusion.input.<name>` tags) and which stage it was (`bifusion.stage`). A rerun rebuilds
that config, applies `--set` overrides and calls the same stage function the CLI and the KFP component call.

Outputs go to a fresh folder by default (`<storage.root>/reruns/<stage>/<time>-<run id>`): stage outputs
are named by a fingerprint of config and inputs, and a stage finding finished work there returns it (a
finished training is simply reported again). Pass the recorded output URI as `output_uri` to resume in place.
The exception is clip_precompute: its features are a cache addressed by the CLIP weights and the raw root,
so it always writes to that address (`--set clip.feature_root=...` moves it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bifusion.components.config import apply_overrides, build_dataclass
from bifusion.components.config_schema import Config, load_config
from bifusion.components.storage import Storage, join_uri
from bifusion.components.tracking import (
    RESOLVED_CONFIG_ARTIFACT,
    check_tracking_backend,
    resolve_experiment,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)

INPUT_TAG_PREFIX = "bifusion.input."
RERUN_OF_TAG = "bifusion.rerun_of"
# Stages whose output location follows from config and inputs alone (no output argument).
ADDRESSED_OUTPUT_STAGES = ("clip_precompute",)


class RerunError(RuntimeError):
    """A recorded run cannot be rerun; the message names the run and the missing or wrong piece."""


@dataclass(frozen=True)
class RecordedStage:
    """What a stage's MLflow run recorded: enough to call the stage function again."""

    run_id: str
    stage: str  # the `bifusion.stage` tag: synth, prep, train_3d_sv, evaluate_3d_sv, ...
    config_tree: dict[str, Any]  # the whole resolved config as logged, before overrides
    inputs: dict[str, str]  # `bifusion.input.<name>` tags, by name
    output_uri: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RerunResult:
    source_run_id: str
    stage: str
    output_uri: str
    run_id: str | None  # the new MLflow run, None if it could not be found after the stage finished
    result: Any  # the stage function's own result (SynthResult, PrepResult, TrainResult, ...)


def default_tracking_uri() -> str:
    """Where to look for the run when no URI is given: the same default every stage uses."""
    base = load_config(["base"])
    return resolve_tracking_uri(base.tracking, base.workdir)


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def load_recorded_stage(run_id: str, tracking_uri: str) -> RecordedStage:
    """Read a stage run's tags and resolved config; raise RerunError naming what is missing."""
    from mlflow.exceptions import MlflowException

    check_tracking_backend(tracking_uri, load_config(["base"]).tracking.check_timeout_s)
    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RerunError(f"MLflow run '{run_id}' not found at {tracking_uri}; check the id and --tracking-uri") from None
    tags = dict(run.data.tags)
    stage = tags.get("bifusion.stage")
    if tags.get("bifusion.kind") != "stage" or not stage:
        raise RerunError(_not_a_stage_message(client, run, tracking_uri))
    try:
        local = client.download_artifacts(run_id, RESOLVED_CONFIG_ARTIFACT)
    except (MlflowException, OSError):
        raise RerunError(
            f"run {run_id} ({stage}) has no {RESOLVED_CONFIG_ARTIFACT} artifact; it was recorded before reruns "
            "were possible, or its artifact store is not reachable from here"
        ) from None
    output_uri = tags.get("bifusion.output_uri", "")
    inputs = {key[len(INPUT_TAG_PREFIX):]: value for key, value in tags.items() if key.startswith(INPUT_TAG_PREFIX)}
    return RecordedStage(run_id, stage, json.loads(Path(local).read_text()), inputs, output_uri, tags)


def _not_a_stage_message(client: Any, run: Any, tracking_uri: str) -> str:
    run_id = run.info.run_id
    if run.data.tags.get("bifusion.kind") == "pipeline":
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        listing = ", ".join(f"{c.data.tags.get('bifusion.stage', '?')}={c.info.run_id}" for c in children) or "none"
        return f"run {run_id} is a pipeline run, not a stage; rerun one of its stage runs: {listing}"
    return f"run {run_id} at {tracking_uri} has no bifusion.stage tag: it was not recorded by a bifusion stage"


def rerun_config(recorded: RecordedStage, tracking_uri: str, overrides: Sequence[str]) -> Config:
    """The recorded config with the new run tracked where the old one was, then the user's overrides."""
    tree = json.loads(json.dumps(recorded.config_tree))
    tree["tracking"]["uri"] = tracking_uri
    return build_dataclass(Config, apply_overrides(tree, overrides))


def fresh_output_uri(config: Config, recorded: RecordedStage) -> str:
    """A new folder per rerun, so a finished output with the same fingerprint is not silently reused."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return join_uri(Storage(config.storage, config.workdir).root, "reruns", recorded.stage, f"{stamp}-{recorded.run_id[:8]}")


def _require(recorded: RecordedStage, name: str) -> str:
    value = recorded.inputs.get(name)
    if not value:
        raise RerunError(f"run {recorded.run_id} ({recorded.stage}) lacks the tag {INPUT_TAG_PREFIX}{name}; pass --input {name}=URI")
    return value


def _run_synth(config: Config, recorded: RecordedStage, output_uri: str | None) -> Any:
    from bifusion.components.synth.stage import run_synth

    return run_synth(config, output_uri)


def _run_prep(config: Config, recorded: RecordedStage, output_uri: str | None) -> Any:
    from bifusion.components.prep.stage import run_prep

    return run_prep(config, _require(recorded, "raw_uri"), output_uri)


def _run_clip_precompute(config: Config, recorded: RecordedStage, output_uri: str | None) -> Any:
    from bifusion.components.clip_features.stage import run_clip_precompute

    return run_clip_precompute(config, _require(recorded, "set_uris").split(","))


def _run_train(config: Config, recorded: RecordedStage, output_uri: str | None) -> Any:
    from bifusion.components.train.stage import run_train

    stage = recorded.tags.get("bifusion.train_stage") or recorded.stage[len("train_"):]
    # The tag holds the checkpoint the stage started from, explicit or from train.init_checkpoint. Only an
    # explicit one is passed again, so `--set train.init_checkpoint=...` still takes effect.
    init = recorded.inputs.get("init_checkpoint_uri") or None
    if init is not None and init == recorded.config_tree.get("train", {}).get("init_checkpoint"):
        init = None
    return run_train(
        config, stage, _require(recorded, "data_uri"), init, output_uri,
        clip_features_uri=recorded.inputs.get("clip_features_uri") or None,
    )


def _run_evaluate(config: Config, recorded: RecordedStage, output_uri: str | None) -> Any:
    from bifusion.components.evaluate.stage import run_evaluate

    return run_evaluate(
        config, _require(recorded, "checkpoint_uri"), _require(recorded, "data_uri"), output_uri,
        clip_features_uri=recorded.inputs.get("clip_features_uri") or None,
    )


StageCall = Callable[[Config, RecordedStage, "str | None"], Any]


def stage_call(stage: str) -> StageCall:
    """The function that reruns a recorded stage name (train_* and evaluate_* cover every model stage)."""
    if stage == "synth":
        return _run_synth
    if stage == "prep":
        return _run_prep
    if stage == "clip_precompute":
        return _run_clip_precompute
    if stage.startswith("train_"):
        return _run_train
    if stage.startswith("evaluate_"):
        return _run_evaluate
    if stage == "summary":
        raise RerunError("the summary stage reads the metrics of a whole pipeline run; rerun the pipeline instead")
    raise RerunError(f"stage '{stage}' cannot be rerun; rerunnable: synth, prep, clip_precompute, train_*, evaluate_*")


def _find_new_run(config: Config, stage: str, output_uri: str) -> tuple[Any, str | None]:
    """The MLflow client of the rerun's store and the run the stage just recorded there."""
    client = _client(resolve_tracking_uri(config.tracking, config.workdir))
    experiment = client.get_experiment_by_name(resolve_experiment(config.tracking))
    if experiment is None:
        return client, None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`bifusion.stage` = '{stage}' and tags.`bifusion.output_uri` = '{output_uri}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return client, (runs[0].info.run_id if runs else None)


def rerun_stage(
    run_id: str,
    overrides: Sequence[str] = (),
    output_uri: str | None = None,
    tracking_uri: str | None = None,
    inputs: Mapping[str, str] = (),
) -> RerunResult:
    """Run the stage recorded in MLflow run `run_id` again, with config overrides and replaced inputs.

    `inputs` replaces recorded input URIs by name (`data_uri`, `raw_uri`, ...). The new run is tagged
    `bifusion.rerun_of=<run_id>` so the two can be compared.
    """
    tracking_uri = tracking_uri or default_tracking_uri()
    recorded = load_recorded_stage(run_id, tracking_uri)
    unknown = set(dict(inputs)) - set(recorded.inputs) - {"init_checkpoint_uri", "clip_features_uri"}
    if unknown:
        known = ", ".join(sorted(recorded.inputs)) or "none"
        raise RerunError(f"run {run_id} ({recorded.stage}) has no input {sorted(unknown)}; its inputs: {known}")
    recorded = dataclasses.replace(recorded, inputs={**recorded.inputs, **dict(inputs)})
    call = stage_call(recorded.stage)
    config = rerun_config(recorded, tracking_uri, overrides)
    if recorded.stage in ADDRESSED_OUTPUT_STAGES:
        if output_uri:
            raise RerunError(f"{recorded.stage} writes to an address derived from its config; move it with --set clip.feature_root=... instead of --output-uri")
    else:
        output_uri = Storage(config.storage, config.workdir).resolve(output_uri or fresh_output_uri(config, recorded))
    log.info("rerun of %s (%s): inputs %s, output %s", run_id, recorded.stage, recorded.inputs, output_uri or "by address")
    result = call(config, recorded, output_uri)
    if output_uri is None:
        output_uri = result.feature_uri
    client, new_run_id = _find_new_run(config, recorded.stage, output_uri)
    if new_run_id is not None:
        client.set_tag(new_run_id, RERUN_OF_TAG, run_id)
    return RerunResult(run_id, recorded.stage, output_uri, new_run_id, result)
