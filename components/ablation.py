"""The ablation summary of one pipeline run: 3D vs BiFusion (and TinySA) metrics side by side.

Input is each evaluated stage's flat metrics (as the evaluate stage returns them); output is one Markdown
table of the main metrics, one of the per-class AP50 on the classes that differ only in appearance (where
the 2D branch should help), and the differences of each BiFusion stage to the 3D stage of the same view
mode. Logged as an MLflow stage run with the tables as artifacts, so two runs' summaries can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from bifusion.components.config_schema import Config
from bifusion.components.synth.furniture import APPEARANCE_PAIRS
from bifusion.components.tracking import stage_run

MAIN_METRICS = (
    "scannet200/ap", "scannet200/ap50", "scannet200/ap25", "scannet200_class_agnostic/ap50", "semantic/miou",
    "scannet200/mcov", "scannet200/mrec50",
)
APPEARANCE_CLASSES = tuple(name for pair in APPEARANCE_PAIRS for name in pair)
STAGE_ORDER = ("3d_sv", "3d_mv", "3dtsa_sv", "3dtsa_mv", "bifusion_sv", "bifusion_mv")


def per_class_key(benchmark: str, class_name: str, metric: str) -> str:
    """The flat metric name the evaluate stage gives one class's AP (e.g. per_class/scannet200/box/ap50)."""
    return f"per_class/{benchmark}/{class_name}/{metric}"


@dataclass(frozen=True)
class AblationSummary:
    markdown: str
    rows: dict[str, dict[str, float]]  # stage -> metric -> value (main metrics and appearance-class AP50)


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def baseline_of(stage: str) -> str | None:
    """The 3D stage a BiFusion stage is judged against (same view mode)."""
    return {"bifusion_sv": "3d_sv", "bifusion_mv": "3d_mv", "3dtsa_sv": "3d_sv", "3dtsa_mv": "3d_mv"}.get(stage)


def build_summary(metrics: Mapping[str, Mapping[str, float]]) -> AblationSummary:
    stages = [stage for stage in STAGE_ORDER if stage in metrics] + sorted(set(metrics) - set(STAGE_ORDER))
    main = [key for key in MAIN_METRICS if any(key in metrics[stage] for stage in stages)]
    appearance = [
        name for name in APPEARANCE_CLASSES
        if any(per_class_key("scannet200", name, "ap50") in metrics[stage] for stage in stages)
    ]
    rows: dict[str, dict[str, float]] = {}
    for stage in stages:
        values = {key: metrics[stage].get(key, math.nan) for key in main}
        values.update({f"ap50/{name}": metrics[stage].get(per_class_key("scannet200", name, "ap50"), math.nan) for name in appearance})
        rows[stage] = values
    parts = ["Main metrics (evaluate stage of each trained stage; MV stages on whole scenes):", "",
             _table(["stage", *main], [[stage, *(_cell(rows[stage][key]) for key in main)] for stage in stages])]
    if appearance:
        parts += ["", "AP50 on the classes that differ only in appearance (same geometry):", "",
                  _table(["stage", *appearance], [[stage, *(_cell(rows[stage][f"ap50/{n}"]) for n in appearance)] for stage in stages])]
    deltas = [(stage, baseline_of(stage)) for stage in stages if baseline_of(stage) in rows]
    if deltas:
        columns = [*main, *(f"ap50/{name}" for name in appearance)]
        parts += ["", "Difference to the 3D baseline of the same view mode (positive = better):", "",
                  _table(["stage", "vs", *columns],
                         [[stage, base, *(_cell(rows[stage][c] - rows[base][c]) for c in columns)] for stage, base in deltas])]
    return AblationSummary("\n".join(parts) + "\n", rows)


def run_ablation_summary(config: Config, metrics: Mapping[str, Mapping[str, float]]) -> AblationSummary:
    """Build the tables, record them in an MLflow `summary` run, and return them."""
    if not metrics:
        raise ValueError("ablation summary: no evaluated stage was given")
    summary = build_summary(metrics)
    with stage_run("summary", config, {"pipeline": config.pipeline}, {"bifusion.stages": ",".join(summary.rows)}) as run:
        run.log_text(summary.markdown, "ablation.md")
        run.log_dict(summary.rows, "ablation.json")
        for stage, values in summary.rows.items():
            run.log_metrics({f"{stage}/{key}": value for key, value in values.items() if math.isfinite(value)})
    return summary
