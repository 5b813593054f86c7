"""The `bifusion` command: one subcommand per stage, plus `pipeline run|compile`."""

from __future__ import annotations

import os

# GNU OpenMP threads busy-wait for each other by default; when another process holds a core (DDP ranks,
# data workers, a shared CI machine) every parallel op then waits for a descheduled peer and runs ~100x
# slower. Sleeping waits cost almost nothing. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from bifusion.components.cli import add_config_arguments, add_stage_commands, configure_logging  # noqa: E402
from bifusion.pipelines.run_configs import resolve_pipeline_configs  # noqa: E402


def _pipeline_run(args: argparse.Namespace) -> None:
    from bifusion.pipelines.local_run import run_local

    if not args.local:
        raise SystemExit("only --local runs exist so far: add --local (cluster submission is `bifusion pipeline submit`)")
    configs = resolve_pipeline_configs(args.config or ["base"], args.overrides)
    result = run_local(configs, raw_uri=args.raw_uri, enable_caching=not args.no_cache)
    lines = [
        "",
        f"Pipeline run {result.pipeline_run_id} finished.",
        f"  single-view (SV) set : {result.outputs['sv_uri']}",
        f"  multi-view (MV) set  : {result.outputs['mv_uri']}",
        f"  scene set            : {result.outputs['scene_uri']}",
        f"  3D SV checkpoint     : {result.outputs['checkpoint_3d_sv']}",
        f"  3D SV metrics        : {_metrics_line(result.outputs['metrics_3d_sv'])}",
        f"  store                : {result.store_uri}",
        f"  MLflow               : {result.tracking_uri} (parent run {result.mlflow_parent_run_id})",
        f"  browse runs with     : mlflow ui --backend-store-uri {result.tracking_uri}",
    ]
    if result.cached_stages:
        lines.append(f"  served from the KFP cache: {', '.join(result.cached_stages)} (use --no-cache to re-run)")
    print("\n".join(lines))


def _metrics_line(metrics_json: str) -> str:
    metrics = json.loads(metrics_json)
    keys = [k for k in ("scannet200/ap", "scannet200/ap50", "scannet200/ap25", "scannet200_class_agnostic/ap50", "semantic/miou") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys)


def _pipeline_compile(args: argparse.Namespace) -> None:
    from bifusion.pipelines.compile import compile_pipeline

    path = compile_pipeline(resolve_pipeline_configs(args.config or ["base"], args.overrides, absolute_workdir=False), args.output)
    print(f"compiled pipeline written to {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bifusion", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stage_commands(subparsers)

    pipeline = subparsers.add_parser("pipeline", help="run or compile the Kubeflow pipeline")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    run = pipeline_commands.add_parser("run", help="run the whole pipeline")
    run.add_argument("--local", action="store_true", help="run on this machine with kfp.local")
    run.add_argument("--raw-uri", default="", metavar="URI", help="prepare this raw ScanNet root instead of generating demo rooms")
    run.add_argument("--no-cache", action="store_true", help="re-run every task instead of reusing cached results")
    add_config_arguments(run)
    run.set_defaults(handler=_pipeline_run)

    compile_ = pipeline_commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    compile_.add_argument("--output", type=Path, default=Path("bifusion-pipeline.yaml"), metavar="PATH")
    add_config_arguments(compile_)
    compile_.set_defaults(handler=_pipeline_compile)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
