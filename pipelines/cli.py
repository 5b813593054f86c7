"""The `bifusion` command: one subcommand per stage, plus `pipeline run|compile|upload|submit`."""

from __future__ import annotations

import os

# GNU OpenMP threads busy-wait for each other by default; when another process holds a core (DDP ranks,
# data workers, a shared CI machine) every parallel op then waits for a descheduled peer and runs ~100x
# slower. Sleeping waits cost almost nothing. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from bifusion.components.cli import add_config_arguments, add_stage_commands, configure_logging  # noqa: E402
from bifusion.pipelines.local_runners import RUNNERS  # noqa: E402
from bifusion.pipelines.run_configs import PipelineConfigs, resolve_pipeline_configs  # noqa: E402

if TYPE_CHECKING:
    from bifusion.pipelines.submit import UploadedVersion

PIPELINE_NAME = "bifusion"  # the KFP display name; equals pipeline.PIPELINE_NAME (not imported: kfp loads slowly)


def _pipeline_run(args: argparse.Namespace) -> None:
    from bifusion.pipelines.local_run import run_local

    if not args.local:
        raise SystemExit("only --local runs exist so far: add --local (cluster submission is `bifusion pipeline submit`)")
    configs = resolve_pipeline_configs(args.config or ["base"], args.overrides)
    reuse = _reuse(configs, args)
    result = run_local(configs, raw_uri=args.raw_uri, enable_caching=not args.no_cache, runner=args.runner, reuse=reuse)
    lines = [
        "",
        f"Pipeline run {result.pipeline_run_id} finished.",
        *(f"  {label:<20} : {reuse.get(key) or result.outputs[key]}" for key, label in
          (("sv_uri", "single-view (SV) set"), ("mv_uri", "multi-view (MV) set"), ("scene_uri", "scene set"))),
        *(f"  {stage:<20} : {_metrics_line(reuse.get(f'metrics_{stage}') or result.outputs[f'metrics_{stage}'])}"
          for stage in configs.training),
        f"  store                : {result.store_uri}",
        f"  MLflow               : {result.tracking_uri} (parent run {result.mlflow_parent_run_id})",
        f"  browse runs with     : mlflow ui --backend-store-uri {result.tracking_uri}",
    ]
    if result.cached_stages:
        lines.append(f"  served from the KFP cache: {', '.join(result.cached_stages)} (use --no-cache to re-run)")
    print("\n".join(lines))
    print("\nAblation (same run):\n" + result.outputs["ablation_markdown"])


def _reuse(configs: Any, args: argparse.Namespace) -> dict[str, str]:
    """`--from-stage` / `--reuse-run` / `--reuse NAME=URI` -> the outputs to take from an earlier run."""
    from bifusion.components.tracking import pipeline_outputs
    from bifusion.pipelines.reuse import parse_reuse_items, resolve_reuse

    explicit = parse_reuse_items(args.reuse)
    if args.reuse_run and not args.from_stage:
        raise SystemExit("--reuse-run needs --from-stage (which stage to run again)")
    if not args.from_stage and not explicit:
        return {}
    recorded = pipeline_outputs(configs.base, args.reuse_run) if args.reuse_run else {}
    return resolve_reuse(configs.steps, args.from_stage, recorded, explicit)


def _metrics_line(metrics_json: str) -> str:
    metrics = json.loads(metrics_json)
    keys = [k for k in ("scannet200/ap", "scannet200/ap50", "scannet200/ap25", "scannet200_class_agnostic/ap50", "semantic/miou") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys)


def _compile_for_cluster(args: argparse.Namespace, output: Path) -> PipelineConfigs:
    """Compile with the stage configs and, given `--cluster`, that file's placement; returns the configs."""
    from bifusion.pipelines.compile import compile_pipeline
    from bifusion.pipelines.pipeline import no_placement

    configs = resolve_pipeline_configs(args.config or ["base"], args.overrides, absolute_workdir=False)
    placement = no_placement
    if args.cluster:
        from bifusion.pipelines.cluster import load_cluster_settings, placement_for

        placement = placement_for(load_cluster_settings(args.cluster))
    compile_pipeline(configs, output, placement)
    return configs


def _pipeline_compile(args: argparse.Namespace) -> None:
    _compile_for_cluster(args, args.output)
    print(f"compiled pipeline written to {args.output}")


def _upload(args: argparse.Namespace, package_dir: Path) -> tuple[Any, UploadedVersion, PipelineConfigs | None]:
    from bifusion.pipelines.pipeline import PIPELINE_DESCRIPTION
    from bifusion.pipelines.submit import connect, upload_pipeline

    configs = None
    package = getattr(args, "package", None)
    if package is None:
        package = package_dir / "pipeline.yaml"
        configs = _compile_for_cluster(args, package)
    client = connect(args.host, namespace=args.namespace)
    version = upload_pipeline(client, package, args.name, PIPELINE_DESCRIPTION, args.version_prefix)
    state = "uploaded new version" if version.created else "unchanged, already uploaded as"
    print(f"pipeline {args.name} ({version.pipeline_id}): {state} {version.version_name} ({version.version_id})")
    return client, version, configs


def _pipeline_upload(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bifusion-upload-") as tmp:
        _upload(args, Path(tmp))


def _pipeline_submit(args: argparse.Namespace) -> None:
    from bifusion.pipelines.submit import submit_run

    with tempfile.TemporaryDirectory(prefix="bifusion-submit-") as tmp:
        client, version, configs = _upload(args, Path(tmp))
    assert configs is not None  # submit always compiles: its arguments are the resolved configs
    arguments = {**configs.arguments(), "raw_uri": args.raw_uri}
    run_name = args.run_name or f"{args.name} {version.version_name}"
    run = submit_run(client, version, args.experiment, run_name, arguments, args.ui_host or args.host)
    print(f"run id: {run.run_id}")
    print(f"run:    {run.url}")


def _add_cluster_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", default=None, metavar="FILE_OR_NAME",
        help="cluster settings (e.g. cluster/default, cluster/gpu-heavy or a file): image, resources, placement per stage",
    )


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"), required="KF_PIPELINES_ENDPOINT" not in os.environ,
                        metavar="URL", help="KFP API, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888 (env KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--namespace", default=None, help="KFP namespace (multi-user installs)")
    parser.add_argument("--name", default=PIPELINE_NAME, help=f"pipeline name on the server (default: {PIPELINE_NAME})")
    parser.add_argument("--version-prefix", default="", help="version names are PREFIX-<sha256 of the YAML> (default: the pipeline name)")
    _add_cluster_argument(parser)
    add_config_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bifusion", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stage_commands(subparsers)

    pipeline = subparsers.add_parser("pipeline", help="run, compile, upload or submit the Kubeflow pipeline")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    run = pipeline_commands.add_parser("run", help="run the whole pipeline")
    run.add_argument("--local", action="store_true", help="run on this machine with kfp.local")
    run.add_argument("--raw-uri", default="", metavar="URI", help="prepare this raw ScanNet root instead of generating demo rooms")
    run.add_argument("--no-cache", action="store_true", help="re-run every task instead of reusing cached results")
    run.add_argument("--from-stage", default=None, metavar="STAGE", help="run this stage and what starts from it; take the rest from --reuse-run")
    run.add_argument("--reuse-run", default=None, metavar="MLFLOW_RUN_ID", help="pipeline (parent) run whose outputs to reuse")
    run.add_argument("--reuse", action="append", default=[], metavar="NAME=URI", help="take this output instead of running its task (repeatable)")
    run.add_argument(
        "--runner", choices=RUNNERS, default="subprocess",
        help="with --local: run tasks in this Python environment (subprocess) or in the stage image through Docker (docker)",
    )
    add_config_arguments(run)
    run.set_defaults(handler=_pipeline_run)

    compile_ = pipeline_commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    compile_.add_argument("--output", type=Path, default=Path("bifusion-pipeline.yaml"), metavar="PATH")
    _add_cluster_argument(compile_)
    add_config_arguments(compile_)
    compile_.set_defaults(handler=_pipeline_compile)

    upload = pipeline_commands.add_parser("upload", help="upload the pipeline to KFP (a new version only when it changed)")
    upload.add_argument("--package", type=Path, default=None, metavar="PATH", help="upload this compiled YAML instead of compiling")
    _add_server_arguments(upload)
    upload.set_defaults(handler=_pipeline_upload)

    submit = pipeline_commands.add_parser("submit", help="upload (if changed) and start a run on KFP; prints run id and link")
    submit.add_argument("--experiment", required=True, help="KFP experiment (created if missing)")
    submit.add_argument("--run-name", default="", help="run display name (default: pipeline and version)")
    submit.add_argument("--raw-uri", default="", metavar="URI", help="raw ScanNet root to prepare; empty = generate demo rooms")
    submit.add_argument("--ui-host", default="", metavar="URL", help="KFP UI address for the printed link (default: --host)")
    _add_server_arguments(submit)
    submit.set_defaults(handler=_pipeline_submit)
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
