"""The ablation summary: main metrics, appearance-pair AP50 and differences to the 3D baseline."""

from __future__ import annotations

import math

from mlflow import MlflowClient

from bifusion.components.ablation import build_summary, per_class_key, run_ablation_summary


def _metrics(ap50: float, box_ap50: float) -> dict[str, float]:
    return {"scannet200/ap50": ap50, "semantic/miou": 0.4, per_class_key("scannet200", "box", "ap50"): box_ap50,
            per_class_key("scannet200", "crate", "ap50"): box_ap50 / 2}


def test_summary_tables_and_differences() -> None:
    summary = build_summary({"bifusion_sv": _metrics(0.6, 0.5), "3d_sv": _metrics(0.5, 0.2)})
    assert list(summary.rows) == ["3d_sv", "bifusion_sv"]  # fixed stage order, whatever the input order
    assert summary.rows["bifusion_sv"]["ap50/box"] == 0.5
    assert "ap50/picture" not in summary.rows["3d_sv"]  # no stage has that class
    lines = summary.markdown.splitlines()
    assert "| stage | scannet200/ap50 | semantic/miou |" in lines
    assert "| stage | box | crate |" in lines
    assert "| bifusion_sv | 3d_sv | 0.100 | 0.000 | 0.300 | 0.150 |" in lines


def test_summary_run_is_logged(make_config, mlflow_uri: str) -> None:
    config = make_config()
    summary = run_ablation_summary(config, {"3d_sv": _metrics(0.5, 0.2)})
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`bifusion.stage` = 'summary'")
    assert run.data.metrics["3d_sv/scannet200/ap50"] == 0.5
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"ablation.md", "ablation.json"}
    assert "3d_sv" in summary.markdown
