"""BiFusion SV training: from a 3D SV checkpoint, with precomputed CLIP features, consistency loss and gate stats."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch

from bifusion.components.clip_features.stage import run_clip_precompute
from bifusion.components.train.checkpoints import load_checkpoint
from bifusion.components.storage import Storage
from bifusion.components.train.stage import run_train

FUSION = [
    "clip.weights=random", "clip.batch_size=4", "clip.workers=1", "clip.validate_samples=1", "clip.device=cpu",
    "model.fusion.channels=32", "model.fusion.head_hidden_channels=32", "model.fusion.gate_hidden_channels=16",
    "train.fusion.consistency.start_step=1", "train.fusion.consistency.ramp_steps=1",
    "train.fusion.gate_statistics_every=1", "train.fusion.fixed_alpha=0.0", "train.fusion.fixed_alpha_steps=2",
]


@pytest.fixture(scope="module")
def clip_store(tiny_sv_set: str, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> tuple[str, Path]:
    from tests.components.train.conftest import tiny_train_config

    workdir = tmp_path_factory.mktemp("clip")
    config = tiny_train_config(workdir, mlflow_uri, *FUSION)
    return run_clip_precompute(config, [tiny_sv_set]).feature_uri, workdir


def test_bifusion_sv_starts_from_3d_and_logs_gate_statistics(train_config, tiny_sv_set: str, clip_store, mlflow_uri: str) -> None:
    feature_uri, _ = clip_store
    base = train_config("train.max_iterations=2")
    three_d = run_train(base, "3d_sv", tiny_sv_set)
    config = train_config("train.max_iterations=4", *FUSION)
    result = run_train(config, "bifusion_sv", tiny_sv_set, three_d.checkpoint_uri, clip_features_uri=feature_uri)
    assert result.iterations == 4
    checkpoint = load_checkpoint(Storage(config.storage, config.workdir), result.checkpoint_uri)
    assert checkpoint["stage"] == "bifusion_sv"
    assert any(key.startswith("encoder.gate.") for key in checkpoint["model"])
    # The backbone came from the 3D checkpoint (same values before training moved them: compare one BN count).
    initial = load_checkpoint(Storage(base.storage, base.workdir), three_d.checkpoint_uri)["model"]
    shared = [k for k in initial if k.startswith("backbone.") and k.endswith("num_batches_tracked")]
    assert shared and all(checkpoint["model"][k] == initial[k] + 4 for k in shared[:3])

    client = mlflow.MlflowClient(mlflow_uri)
    run = client.search_runs(client.get_experiment_by_name("train-tests").experiment_id,
                             filter_string="tags.`bifusion.stage` = 'train_bifusion_sv'", order_by=["attributes.start_time DESC"])[0]
    alpha = client.get_metric_history(run.info.run_id, "gate/alpha_mean")
    assert [m.step for m in alpha][:2] == [1, 2]
    assert alpha[0].value == 0.0 and alpha[1].value == 0.0  # held at fixed_alpha for the first two steps
    assert not math.isclose(alpha[-1].value, 0.0)  # then the gate decides
    valid = client.get_metric_history(run.info.run_id, "gate/valid_ratio")
    assert all(0.5 < m.value <= 1.0 for m in valid)  # SV points come with their own pixels
    consistency = client.get_metric_history(run.info.run_id, "loss/clip_consistency")
    assert consistency and all(math.isfinite(m.value) for m in consistency)
    assert "init_weights_report.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/gate_statistics.png", "plots/alpha_histogram.png", "plots/loss_curves.png"} <= plots

    # Evaluation: BiFusion's renders include the colour image with the points projected by intrinsics and pose.
    from bifusion.components.evaluate.stage import run_evaluate

    evaluated = run_evaluate(config, result.checkpoint_uri, tiny_sv_set, clip_features_uri=feature_uri)
    assert "scannet200/ap50" in evaluated.metrics
    (evaluation,) = client.search_runs([run.info.experiment_id], f"tags.`bifusion.output_uri` = '{evaluated.output_uri}'")
    renders = {a.path for a in client.list_artifacts(evaluation.info.run_id, "renders")}
    assert any(path.endswith("_projection.png") for path in renders) and any(path.endswith("_instances.png") for path in renders)


def test_bifusion_without_feature_store_is_a_clear_error(train_config, tiny_sv_set: str) -> None:
    with pytest.raises(ValueError, match="clip_features_uri"):
        run_train(train_config(*FUSION), "bifusion_sv", tiny_sv_set)
