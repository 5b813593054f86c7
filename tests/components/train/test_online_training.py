"""Multi-view (3d_mv, 3dtsa_mv) and TinySA (3dtsa_sv) training stages on a tiny prepared MV set: from a 3d_sv
checkpoint, box and merge losses logged, incompatible init refused with the key report, kill and resume, and
positional embeddings without weight decay."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bifusion.components.config import to_yaml
from bifusion.components.config_schema import Config, load_config
from bifusion.components.prep.stage import PrepResult, run_prep
from bifusion.components.storage import Storage
from bifusion.components.synth.stage import run_synth
from bifusion.components.train.checkpoints import load_checkpoint
from bifusion.components.train.model_factory import build_single_view_model
from bifusion.components.train.recipes import recipe_for
from bifusion.components.train.stage import run_train
from tests.components.train.conftest import TINY_DATA, TINY_MODEL

TINY_MV = [
    "prep.sets=[sv, mv, scene]", "prep.mv_frame_step=40", "model.online.clip_frames=3", "model.online.merge_hidden_channels=32",
    "model.online.merge_channels=16", "model.tinysa.ffn_channels=32", "model.tinysa.center_cell_size_m=0.1",
    "train.batch_size=1",
]


def tiny_config(experiment: str, workdir: Path, mlflow_uri: str, *overrides: str) -> Config:
    return load_config(
        [f"experiments/{experiment}"],
        [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", "tracking.experiment=train-tests", *TINY_DATA, *TINY_MODEL,
         *TINY_MV, *overrides],
    )


@pytest.fixture(scope="module")
def tiny_mv_sets(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> PrepResult:
    """SV, MV (frames 0, 40, ..., 160 of one room) and scene sets; train and val are the same room."""
    workdir = tmp_path_factory.mktemp("tiny-mv")
    config = tiny_config("3d_mv", workdir, mlflow_uri)
    raw = run_synth(config, str(workdir / "raw")).raw_uri
    return run_prep(config, raw)


@pytest.fixture(scope="module")
def sv_checkpoint(tiny_mv_sets: PrepResult, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> str:
    """A 3d_sv checkpoint of the same widths (one step), as a local file path."""
    workdir = tmp_path_factory.mktemp("tiny-sv-init")
    config = tiny_config("3d_sv", workdir, mlflow_uri, "train.max_iterations=1")
    result = run_train(config, "3d_sv", tiny_mv_sets.sv_uri)
    return result.checkpoint_uri


def metric_history(client: MlflowClient, output_uri: str, key: str) -> list:
    experiment = client.get_experiment_by_name("train-tests").experiment_id
    (run,) = client.search_runs([experiment], f"tags.`bifusion.output_uri` = '{output_uri}'")
    return client.get_metric_history(run.info.run_id, key)


def test_mv_training_from_a_3d_sv_checkpoint_logs_box_and_merge_losses(
    tiny_mv_sets: PrepResult, sv_checkpoint: str, tmp_path: Path, mlflow_uri: str
) -> None:
    config = tiny_config("3d_mv", tmp_path, mlflow_uri, "train.max_iterations=2")
    assert config.model.online.memory and config.train.batch_size == 1
    result = run_train(config, "3d_mv", tiny_mv_sets.mv_uri, init_checkpoint_uri=sv_checkpoint)
    assert result.iterations == 2
    storage = Storage(config.storage, config.workdir)
    final = load_checkpoint(storage, result.checkpoint_uri)
    assert final["stage"] == "3d_mv"
    assert any(k.startswith("memory.") for k in final["model"]) and any(k.startswith("merge_head.") for k in final["model"])
    initial = load_checkpoint(storage, sv_checkpoint)["model"]
    tracked = "backbone.bn0.bn.num_batches_tracked"
    # Loaded from the SV checkpoint, then 2 steps x 3 frames (one backbone pass per frame step) + validation (eval).
    assert final["model"][tracked] == initial[tracked] + 2 * 3
    client = MlflowClient(mlflow_uri)
    for key in ("loss/total", "loss/box", "loss/merge", "loss/instance"):
        history = metric_history(client, result.output_uri, key)
        assert [m.step for m in history] == [1, 2], key
        assert all(math.isfinite(m.value) for m in history), key
    assert all(m.value > 0 for m in metric_history(client, result.output_uri, "loss/box"))
    assert "scannet200/ap50" in result.metrics


def test_incompatible_init_checkpoint_is_refused_with_the_key_report(tiny_mv_sets: PrepResult, tmp_path: Path, mlflow_uri: str) -> None:
    other = tiny_config("3d_sv", tmp_path, mlflow_uri, "model.decoder.d_model=16", "model.decoder.ffn_channels=32")
    checkpoint = tmp_path / "other_widths.pt"
    torch.save({"model": build_single_view_model(other.model).state_dict(), "stage": "3d_sv"}, checkpoint)
    config = tiny_config("3d_mv", tmp_path, mlflow_uri, "train.max_iterations=1")
    with pytest.raises(ValueError, match="does not fit the 3d_mv model") as error:
        run_train(config, "3d_mv", tiny_mv_sets.mv_uri, init_checkpoint_uri=str(checkpoint))
    assert "shape mismatch (not loaded): head.decoder." in str(error.value)


def test_killed_mv_training_resumes_from_the_last_snapshot(tiny_mv_sets: PrepResult, tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config("3d_mv", tmp_path, mlflow_uri, "train.max_iterations=8", "train.checkpoint_every_iterations=2")
    config_file = tmp_path / "resolved.yaml"
    config_file.write_text(to_yaml(config))
    command = [sys.executable, "-m", "bifusion.pipelines.cli", "train", "--stage", "3d_mv", "--data", tiny_mv_sets.mv_uri,
               "--config", str(config_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        pointers = list(Path(config.workdir).glob("store/train/3d_mv/*/checkpoints/latest.json"))
        if pointers and json.loads(pointers[0].read_text())["iteration"] >= 2:
            pointer = pointers[0]
            break
        time.sleep(0.1)
    if pointer is None:
        process.kill()
        pytest.fail(f"no snapshot before the run ended: {process.stderr.read().decode()[-2000:]}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["iteration"]
    assert killed_at < 8
    snapshot = load_checkpoint(Storage(config.storage, config.workdir), json.loads(pointer.read_text())["uri"])
    run_id = snapshot["progress"]["mlflow_run_id"]

    result = run_train(config, "3d_mv", tiny_mv_sets.mv_uri)
    assert result.iterations == 8
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss/merge")]
    assert steps[-1] == 8 and set(range(killed_at + 1, 9)) <= set(steps)


def test_tinysa_positional_embeddings_get_no_weight_decay(tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config("3dtsa_sv", tmp_path, mlflow_uri)
    recipe = recipe_for(config, "3dtsa_sv")
    model = recipe.build_model()
    groups = recipe.parameter_groups(model)
    names = {id(p): name for name, p in model.named_parameters()}
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0
    no_decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert no_decay and all(".pos_embed." in name and name.startswith("neck.") for name in no_decay)
    expected = sorted(n for n in names.values() if ".pos_embed." in n)
    assert no_decay == expected
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="model.tinysa.enabled=true"):
        recipe_for(tiny_config("3d_sv", tmp_path, mlflow_uri), "3dtsa_sv")


def test_tinysa_mv_trains_from_a_3d_sv_checkpoint(tiny_mv_sets: PrepResult, sv_checkpoint: str, tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config("3dtsa_mv", tmp_path, mlflow_uri, "train.max_iterations=1")
    assert config.model.tinysa.enabled and config.model.online.memory
    result = run_train(config, "3dtsa_mv", tiny_mv_sets.mv_uri, init_checkpoint_uri=sv_checkpoint)
    final = load_checkpoint(Storage(config.storage, config.workdir), result.checkpoint_uri)
    assert final["stage"] == "3dtsa_mv" and any(k.startswith("neck.layers.0.pos_embed.") for k in final["model"])


def test_bifusion_mv_trains_from_bifusion_sv_with_clip_features(
    tiny_mv_sets: PrepResult, sv_checkpoint: str, tmp_path: Path, mlflow_uri: str
) -> None:
    from bifusion.components.clip_features.stage import run_clip_precompute

    fusion = [
        "clip.weights=random", "clip.workers=1", "clip.validate_samples=1", "clip.device=cpu",
        "model.fusion.channels=32", "model.fusion.head_hidden_channels=32", "model.fusion.gate_hidden_channels=16",
        "train.fusion.consistency.start_step=0", "train.fusion.gate_statistics_every=1", "train.max_iterations=2",
    ]
    sv_config = tiny_config("bifusion_sv", tmp_path / "sv", mlflow_uri, *fusion)
    features = run_clip_precompute(sv_config, [tiny_mv_sets.sv_uri, tiny_mv_sets.mv_uri]).feature_uri
    sv = run_train(sv_config, "bifusion_sv", tiny_mv_sets.sv_uri, sv_checkpoint, clip_features_uri=features)
    mv_config = tiny_config("bifusion_mv", tmp_path / "mv", mlflow_uri, *fusion)
    result = run_train(mv_config, "bifusion_mv", tiny_mv_sets.mv_uri, sv.checkpoint_uri, clip_features_uri=features)
    assert result.iterations == 2
    final = load_checkpoint(Storage(mv_config.storage, mv_config.workdir), result.checkpoint_uri)["model"]
    initial = load_checkpoint(Storage(sv_config.storage, sv_config.workdir), sv.checkpoint_uri)["model"]
    gate = "encoder.gate.mlp.0.weight" if "encoder.gate.mlp.0.weight" in initial else next(k for k in initial if k.startswith("encoder.gate"))
    assert gate in final and final[gate].shape == initial[gate].shape  # the encoder came from bifusion_sv
    client = MlflowClient(mlflow_uri)
    for key in ("loss/merge", "loss/box", "loss/clip_consistency", "gate/alpha_mean", "gate/valid_ratio"):
        history = metric_history(client, result.output_uri, key)
        assert history and all(math.isfinite(m.value) for m in history), key
    assert all(m.value > 0.5 for m in metric_history(client, result.output_uri, "gate/valid_ratio"))
    # Whole-scene evaluation streams the scene with each frame's stored CLIP features.
    from bifusion.components.evaluate.stage import run_evaluate

    evaluated = run_evaluate(mv_config, result.checkpoint_uri, tiny_mv_sets.scene_uri, clip_features_uri=features)
    assert "scannet200_class_agnostic/ap50" in evaluated.metrics and evaluated.frames == 1  # one scene
