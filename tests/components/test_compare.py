"""`bifusion compare` on runs recorded in the session's test MLflow store."""

from __future__ import annotations

import argparse
import csv
import io
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from bifusion.components.compare import add_compare_command, load_runs, metrics_table, per_class_differences, run_compare

CLASSES = [(2, "chair", "head"), (4, "table", "head"), (39, "cushion", "common"), (79, "paper", "tail")]


def per_class_csv(ap50: list[float]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class_name", "split", "ap", "ap50", "ap25"])
    for (class_id, name, split), value in zip(CLASSES, ap50):
        writer.writerow([class_id, name, split, f"{value / 2:.6f}", f"{value:.6f}", f"{min(value + 0.1, 1.0):.6f}"])
    return buffer.getvalue()


def evaluate_run(
    client: MlflowClient, experiment_id: str, name: str, metrics: dict[str, float], ap50: list[float], parent: str | None = None
) -> str:
    tags = {"bifusion.stage": name, "bifusion.kind": "stage"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_text(run_id, per_class_csv(ap50), "per_class_scannet200.csv")
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def two_runs(mlflow_uri: str, tmp_path: Path) -> tuple[str, str, str]:
    """A stand-alone evaluate run A and a pipeline run whose evaluate child is B (beside a train child)."""
    client = MlflowClient(mlflow_uri)
    artifacts = (tmp_path / "artifacts").as_uri()
    experiment_id = client.create_experiment(f"compare-{uuid.uuid4().hex[:8]}", artifact_location=artifacts)
    metrics_a = {"scannet200/ap50": 0.25, "semantic/miou": 0.4, "frames": 12}
    run_a = evaluate_run(client, experiment_id, "evaluate_3d_sv", metrics_a, [0.5, 0.2, math.nan, 0.1])
    parent = client.create_run(experiment_id, run_name="pipeline", tags={"bifusion.kind": "pipeline"}).info.run_id
    train_tags = {"bifusion.stage": "train_3d_sv", "mlflow.parentRunId": parent}
    train = client.create_run(experiment_id, run_name="train_3d_sv", tags=train_tags)
    client.log_metric(train.info.run_id, "loss/total", 1.0)
    metrics_b = {"scannet200/ap50": 0.3, "scannet200/mcov": 0.45, "semantic/miou": 0.5, "frames": 12}
    run_b = evaluate_run(client, experiment_id, "evaluate_bifusion", metrics_b, [0.7, 0.1, 0.3, math.nan], parent=parent)
    return run_a, parent, run_b


def test_pipeline_run_expands_to_its_evaluate_runs_and_table_has_a_column_per_run(mlflow_uri: str, two_runs) -> None:
    run_a, parent, run_b = two_runs
    runs = load_runs(mlflow_uri, [run_a, parent])
    assert [run.run_id for run in runs] == [run_a, run_b]
    table = metrics_table(runs)
    lines = table.splitlines()
    assert runs[0].label in lines[0] and runs[1].label in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["scannet200/ap50"] == ["0.2500", "0.3000"]
    assert rows["scannet200/mcov"] == ["-", "0.4500"]
    assert rows["semantic/miou"] == ["0.4000", "0.5000"]
    assert rows["frames"] == ["12", "12"]
    assert "scannet200/ap" not in rows  # recorded by neither run


def test_per_class_differences_are_matched_by_class(mlflow_uri: str, two_runs) -> None:
    run_a, parent, _ = two_runs
    baseline, differences = per_class_differences(load_runs(mlflow_uri, [run_a, parent]))
    assert baseline.class_names == ("chair", "table", "cushion", "paper")
    (label, diff), = differences.items()
    assert label.startswith("evaluate_bifusion") and "evaluate_3d_sv" in label
    np.testing.assert_allclose(diff, [0.2, -0.1, np.nan, np.nan], atol=1e-9)


def test_compare_writes_the_difference_png(mlflow_uri: str, two_runs, tmp_path: Path) -> None:
    run_a, parent, _ = two_runs
    comparison = run_compare([run_a, parent], mlflow_uri, tmp_path / "plots" / "diff.png")
    assert comparison.plot_path == tmp_path / "plots" / "diff.png"
    assert comparison.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(comparison.plot_path) as image:
        assert image.size == (800, 340)  # 2 classes shown (cushion and paper are NaN in one run each): the minimum width


def test_compare_command_prints_the_table(mlflow_uri: str, two_runs, tmp_path: Path, capsys) -> None:
    run_a, _, run_b = two_runs
    parser = argparse.ArgumentParser(prog="bifusion")
    add_compare_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", run_a, run_b, "--tracking-uri", mlflow_uri, "--output", str(tmp_path / "diff.png")])
    args.handler(args)
    out = capsys.readouterr().out
    assert "scannet200/ap50" in out and "0.3000" in out
    assert f"written to {tmp_path / 'diff.png'}" in out
    with pytest.raises(SystemExit, match="no MLflow run"):
        args.handler(parser.parse_args(["compare", "0" * 32, "--tracking-uri", mlflow_uri]))
