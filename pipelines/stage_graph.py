"""Which training stages one pipeline run has, and which checkpoint each starts from.

Pure data, no KFP: the pipeline builder, the local launcher (expected MLflow stages) and the cluster
settings all read the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from bifusion.components.config_schema import PipelineConfig

ROUTE_STAGES: dict[str, tuple[str, str]] = {
    "3d": ("3d_sv", "3d_mv"),
    "tinysa": ("3dtsa_sv", "3dtsa_mv"),
    "bifusion": ("bifusion_sv", "bifusion_mv"),
}


@dataclass(frozen=True)
class TrainingStep:
    stage: str
    init_from: str | None  # the stage whose best checkpoint initialises this one
    multi_view: bool  # trains on the MV set and is evaluated on whole scenes

    @property
    def evaluation_stage(self) -> str:
        return f"evaluate_{self.stage}"


def training_steps(config: PipelineConfig) -> list[TrainingStep]:
    """The training stages of the chosen routes in dependency order (an SV stage before its MV stage)."""
    unknown = sorted(set(config.routes) - set(ROUTE_STAGES))
    if unknown:
        raise ValueError(f"pipeline.routes: unknown route(s) {unknown}; expected some of {sorted(ROUTE_STAGES)}")
    if not config.routes:
        raise ValueError("pipeline.routes is empty: name at least one of 3d, tinysa, bifusion")
    if "bifusion" in config.routes and config.bifusion_init not in config.routes:
        raise ValueError(
            f"pipeline.bifusion_init is {config.bifusion_init!r} but pipeline.routes {config.routes} lacks that route: "
            f"bifusion_sv starts from its SV checkpoint, so add {config.bifusion_init!r} to the routes"
        )
    steps: list[TrainingStep] = []
    for route in ("3d", "tinysa", "bifusion"):  # fixed order: a route's init comes from an earlier one
        if route not in config.routes:
            continue
        sv, mv = ROUTE_STAGES[route]
        sv_init = {"3d": None, "tinysa": "3d_sv" if "3d" in config.routes else None,
                   "bifusion": ROUTE_STAGES[config.bifusion_init][0]}[route]
        steps.append(TrainingStep(sv, sv_init, multi_view=False))
        steps.append(TrainingStep(mv, sv, multi_view=True))
    return steps


def training_stage_names(config: PipelineConfig) -> list[str]:
    return [step.stage for step in training_steps(config)]
