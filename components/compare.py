"""`bifusion compare RUN ...`: the main metrics of evaluate runs side by side, and a PNG of per-class AP50 changes.

Runs are read from MLflow as the evaluate stage records them: flat metrics (`scannet200/ap50`,
`semantic/miou`, ...) and the `per_class_<benchmark>.csv` artifact (class_id, class_name, split, ap, ap50,
ap25). A pipeline's parent run id stands for its evaluate child runs, in the order they started. The first
run with a per-class table is the baseline of the difference plot: one panel per other run, run - baseline.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bifusion.components.plots import plot_per_class_difference

log = logging.getLogger(__name__)

# Rows of the table, in order; a row is printed when at least one run has the metric.
MAIN_METRICS = tuple(
    f"{benchmark}/{name}"
    for benchmark, names in (
        ("scannet200", ("ap", "ap50", "ap25", "head_ap", "common_ap", "tail_ap", "head_ap50", "common_ap50", "tail_ap50",
                        "mcov", "mwcov", "mprec50", "mrec50")),
        ("scannet200_class_agnostic", ("ap", "ap50", "ap25", "mcov", "mwcov", "mprec50", "mrec50")),
        ("scannet20", ("ap", "ap50", "ap25", "mcov", "mwcov", "mprec50", "mrec50")),
        ("semantic", ("miou", "accuracy", "head_miou", "common_miou", "tail_miou")),
    )
    for name in names
) + ("seconds_per_frame", "frames")


@dataclass(frozen=True)
class PerClassAP:
    """One run's per-class table; arrays (C,) in the table's row order, NaN = class without GT."""

    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    splits: tuple[str, ...]  # "" for benchmarks without head/common/tail
    ap: np.ndarray
    ap50: np.ndarray
    ap25: np.ndarray


@dataclass(frozen=True)
class ComparedRun:
    run_id: str
    label: str  # run name and short id, the table's column header
    metrics: dict[str, float]
    per_class: PerClassAP | None  # None when the run has no per-class table for the benchmark


@dataclass(frozen=True)
class Comparison:
    runs: list[ComparedRun]
    table: str
    plot_path: Path | None  # None when fewer than two runs have a per-class table


def per_class_artifact(benchmark: str) -> str:
    return f"per_class_{benchmark}.csv"


def read_per_class_table(path: Path) -> PerClassAP:
    """Parse a `per_class_<benchmark>.csv` written by the evaluate stage."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {"class_id", "class_name", "split", "ap", "ap50", "ap25"}
    if not rows or not expected <= set(rows[0]):
        raise ValueError(f"{path.name}: expected a header with {sorted(expected)} and at least one row")
    return PerClassAP(
        class_ids=tuple(int(row["class_id"]) for row in rows),
        class_names=tuple(row["class_name"] for row in rows),
        splits=tuple(row["split"] for row in rows),
        ap=np.array([float(row["ap"]) for row in rows]),
        ap50=np.array([float(row["ap50"]) for row in rows]),
        ap25=np.array([float(row["ap25"]) for row in rows]),
    )


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def resolve_runs(client: Any, run_ids: Sequence[str]) -> list[Any]:
    """MLflow runs for the given ids; a pipeline parent run is replaced by its evaluate child runs."""
    from mlflow.exceptions import MlflowException

    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ValueError(f"no MLflow run {run_id!r} in this tracking store") from None
        if run.data.tags.get("bifusion.kind") != "pipeline":
            stage = run.data.tags.get("bifusion.stage", "")
            if not stage.startswith("evaluate"):
                log.warning("run %s is not an evaluate run (stage %r): its evaluation metrics may be missing", run_id, stage)
            runs.append(run)
            continue
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", order_by=["attributes.start_time ASC"]
        )
        evaluates = [child for child in children if child.data.tags.get("bifusion.stage", "").startswith("evaluate")]
        if not evaluates:
            stages = sorted(child.data.tags.get("bifusion.stage", "?") for child in children)
            raise ValueError(f"pipeline run {run_id} has no evaluate child run (its stages: {', '.join(stages) or 'none'})")
        runs.extend(evaluates)
    return runs


def load_runs(tracking_uri: str, run_ids: Sequence[str], benchmark: str = "scannet200") -> list[ComparedRun]:
    """Metrics and the per-class table of `benchmark` of each run (pipeline runs expanded)."""
    client = _client(tracking_uri)
    compared = []
    artifact = per_class_artifact(benchmark)
    with tempfile.TemporaryDirectory() as tmp:
        for run in resolve_runs(client, run_ids):
            run_id = run.info.run_id
            per_class = None
            if artifact in {entry.path for entry in client.list_artifacts(run_id)}:
                per_class = read_per_class_table(Path(client.download_artifacts(run_id, artifact, tmp)))
            label = f"{run.info.run_name or 'run'} {run_id[:8]}"
            compared.append(ComparedRun(run_id, label, dict(run.data.metrics), per_class))
    return compared


def metrics_table(runs: Sequence[ComparedRun]) -> str:
    """Plain-text table: one row per main metric that any run has, one column per run ("-" = not recorded)."""
    rows = [key for key in MAIN_METRICS if any(key in run.metrics for run in runs)]
    if not rows:
        return "none of the runs recorded evaluation metrics (" + ", ".join(MAIN_METRICS[:3]) + ", ...)"
    width = max(len(key) for key in rows)
    columns = [max(len(run.label), 8) for run in runs]

    def cell(key: str, value: float | None) -> str:
        if value is None:
            return "-"
        if math.isnan(value):
            return "nan"
        return f"{value:.0f}" if key == "frames" else f"{value:.4f}"

    lines = [" ".join([f"{'metric':<{width}}", *(f"{run.label:>{w}}" for run, w in zip(runs, columns))])]
    lines.append("-" * len(lines[0]))
    for key in rows:
        values = [cell(key, run.metrics.get(key)) for run in runs]
        lines.append(" ".join([f"{key:<{width}}", *(f"{value:>{w}}" for value, w in zip(values, columns))]))
    return "\n".join(lines)


def per_class_differences(runs: Sequence[ComparedRun], metric: str = "ap50") -> tuple[PerClassAP, dict[str, np.ndarray]]:
    """The baseline's table (first run with one) and, per other run with a table, its per-class `metric` minus
    the baseline's, matched by class id (NaN where either run has no value for the class)."""
    with_table = [run for run in runs if run.per_class is not None]
    if len(with_table) < 2:
        raise ValueError(f"per-class differences need two runs with a per-class table, got {len(with_table)}")
    baseline, others = with_table[0], with_table[1:]
    base_values = getattr(baseline.per_class, metric)
    differences = {}
    for run in others:
        position = {class_id: i for i, class_id in enumerate(run.per_class.class_ids)}
        values = getattr(run.per_class, metric)
        aligned = np.array([values[position[c]] if c in position else np.nan for c in baseline.per_class.class_ids])
        differences[f"{run.label} - {baseline.label}"] = aligned - base_values
    return baseline.per_class, differences


def run_compare(run_ids: Sequence[str], tracking_uri: str, output: Path | None, benchmark: str = "scannet200") -> Comparison:
    """Load the runs, build the metrics table and, when two runs have per-class tables, write the AP50 plot."""
    runs = load_runs(tracking_uri, run_ids, benchmark)
    plot_path = None
    if output is not None and sum(run.per_class is not None for run in runs) >= 2:
        baseline, differences = per_class_differences(runs, "ap50")
        splits = baseline.splits if all(baseline.splits) else None
        plot_path = plot_per_class_difference(baseline.class_names, differences, output, splits=splits, metric=f"{benchmark} AP50")
    elif output is not None:
        log.warning("no per-class plot: fewer than two runs have the %s artifact", per_class_artifact(benchmark))
    return Comparison(runs, metrics_table(runs), plot_path)


def _default_tracking_uri() -> str:
    from bifusion.components.config_schema import load_config
    from bifusion.components.tracking import resolve_tracking_uri

    config = load_config(["base"])
    return resolve_tracking_uri(config.tracking, config.workdir)


def _run_compare_command(args: argparse.Namespace) -> None:
    tracking_uri = args.tracking_uri or _default_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise SystemExit(f"no MLflow database at {tracking_uri}; pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    try:
        comparison = run_compare(args.runs, tracking_uri, args.output, args.benchmark)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(comparison.table)
    if comparison.plot_path is not None:
        print(f"\nper-class AP50 differences written to {comparison.plot_path}")


def add_compare_command(subparsers: Any) -> None:
    """Register `compare` on an argparse subparsers object (the `bifusion` command's)."""
    compare = subparsers.add_parser(
        "compare", help="print the main metrics of evaluate runs side by side and plot per-class AP50 changes"
    )
    compare.add_argument(
        "runs", nargs="+", metavar="RUN_ID",
        help="MLflow run ids of evaluate runs, or pipeline parent runs (expanded to their evaluate runs)",
    )
    compare.add_argument(
        "--tracking-uri", default=None, metavar="URI",
        help="MLflow tracking URI (default as for the stages: tracking.uri of the base config, MLFLOW_TRACKING_URI, "
        "or the workdir's database)",
    )
    compare.add_argument(
        "--output", type=Path, default=Path("per_class_ap50_diff.png"), metavar="PNG",
        help="where to write the per-class AP50 difference plot (default: %(default)s)",
    )
    compare.add_argument(
        "--benchmark", default="scannet200", choices=("scannet200", "scannet20"), help="whose per-class table to plot"
    )
    compare.set_defaults(handler=_run_compare_command)
