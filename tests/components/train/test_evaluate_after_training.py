"""The evaluate stage on a freshly trained checkpoint: metrics (AP, coverage), tables, plots and renders in MLflow."""

from __future__ import annotations

import math

from mlflow import MlflowClient
from PIL import Image

from bifusion.components.evaluate.stage import run_evaluate
from bifusion.components.storage import Storage
from bifusion.components.train.stage import run_train


def test_evaluate_logs_metrics_tables_plots_and_renders(train_config, tiny_sv_set: str, mlflow_uri: str, tmp_path) -> None:
    config = train_config("train.max_iterations=2", "evaluate.render_frames=2", "evaluate.benchmarks=[scannet200, scannet200_class_agnostic]")
    trained = run_train(config, "3d_sv", tiny_sv_set)
    result = run_evaluate(config, trained.checkpoint_uri, tiny_sv_set)
    for key in ("scannet200/ap50", "scannet200_class_agnostic/mcov", "scannet200_class_agnostic/mrec50", "semantic/miou"):
        assert key in result.metrics and math.isfinite(result.metrics[key]), key
    assert any(key.startswith("per_class/scannet200/") for key in result.metrics)
    storage = Storage(config.storage, config.workdir)
    assert storage.exists(f"{result.output_uri}/coverage_scannet200.csv")

    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("train-tests").experiment_id], f"tags.`bifusion.output_uri` = '{result.output_uri}'"
    )
    assert "scannet200_class_agnostic/mcov" in run.data.metrics
    assert not any(key.startswith("per_class/") for key in run.data.metrics)  # those live in the CSV tables
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/per_class_ap50_scannet200.png", "plots/semantic_confusion.png"} <= plots
    renders = sorted(a.path for a in client.list_artifacts(run.info.run_id, "renders"))
    assert len(renders) == 2
    image = Image.open(client.download_artifacts(run.info.run_id, renders[0], str(tmp_path)))
    assert image.size == (1200, 600)
