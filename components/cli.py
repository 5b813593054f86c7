"""Stage subcommands of the `bifusion` command: each parses URIs and a config, then calls the stage function
that the KFP components and the tests call too."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from bifusion.components.compare import add_compare_command
from bifusion.components.config_schema import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", action="append", default=[], metavar="FILE_OR_NAME",
        help="config file or built-in name (e.g. demo); repeat to overlay several, left to right (default: base)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one option, e.g. --set prep.workers=4 (repeatable)",
    )
    parser.add_argument(
        "--result-json", type=Path, default=None, metavar="PATH",
        help="also write the stage's result (output URIs, summary) to this JSON file",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config or ["base"], args.overrides)


def emit_result(result: Any, path: Path | None) -> None:
    """Print a stage result as JSON (and write it to `path`), so scripts and containers can pick up URIs."""
    payload = json.dumps(dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result, indent=2, default=str)
    print(payload)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload)


def _run_synth(args: argparse.Namespace) -> None:
    from bifusion.components.synth.stage import run_synth

    emit_result(run_synth(config_from_args(args), args.output), args.result_json)


def _run_prep(args: argparse.Namespace) -> None:
    from bifusion.components.prep.stage import run_prep

    emit_result(run_prep(config_from_args(args), args.input, args.output), args.result_json)


def _run_clip_precompute(args: argparse.Namespace) -> None:
    from bifusion.components.clip_features.stage import run_clip_precompute

    emit_result(run_clip_precompute(config_from_args(args), args.set_uri), args.result_json)


def _run_train(args: argparse.Namespace) -> None:
    from bifusion.components.train.stage import run_train

    config = load_config([f"experiments/{args.stage}", *args.config], args.overrides)
    result = run_train(config, args.stage, args.data, args.init, args.output, clip_features_uri=args.clip_features)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process returns; one reports
        emit_result(result, args.result_json)


def _run_evaluate(args: argparse.Namespace) -> None:
    from bifusion.components.evaluate.stage import run_evaluate

    emit_result(run_evaluate(config_from_args(args), args.checkpoint, args.data, args.output, clip_features_uri=args.clip_features), args.result_json)


def _run_infer(args: argparse.Namespace) -> None:
    from bifusion.components.infer import parse_intrinsics, run_infer

    if not args.stream:
        raise SystemExit("bifusion infer: only streaming inference exists; pass --stream")
    if (args.depth_min is None) != (args.depth_max is None):
        raise SystemExit("bifusion infer: pass both --depth-min and --depth-max, or neither")
    result = run_infer(
        config_from_args(args), args.checkpoint, args.sequence, args.output,
        intrinsics=parse_intrinsics(args.intrinsics) if args.intrinsics else None, depth_scale=args.depth_scale,
        depth_range_m=(args.depth_min, args.depth_max) if args.depth_min is not None else None,
    )
    emit_result(result, args.result_json)


def parse_name_uri(items: list[str], option: str, example: str) -> dict[str, str]:
    """`NAME=URI` command-line items -> {name: uri}; a malformed item is a ValueError naming the option."""
    pairs = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise ValueError(f"{option} {item!r}: expected NAME=URI, e.g. {option} {example}")
        pairs[name] = uri
    return pairs


def _parse_inputs(items: list[str]) -> dict[str, str]:
    try:
        return parse_name_uri(items, "--input", "data_uri=s3://bucket/prep/abc/sv")
    except ValueError as error:
        raise SystemExit(str(error)) from None


def _rerun(args: argparse.Namespace) -> None:
    inputs = _parse_inputs(args.inputs)
    if args.in_docker:
        from bifusion.components.docker_rerun import rerun_in_docker

        raise SystemExit(rerun_in_docker(
            args.mlflow_run, args.overrides, args.output_uri, args.tracking_uri, inputs, args.image, args.gpus
        ))
    from bifusion.components.rerun import rerun_stage

    emit_result(rerun_stage(args.mlflow_run, args.overrides, args.output_uri, args.tracking_uri, inputs), args.result_json)


def add_rerun_command(subparsers: Any) -> None:
    rerun = subparsers.add_parser("rerun", help="run one stage of a past run again, from its MLflow run (docs/rerun.md)")
    rerun.add_argument("--mlflow-run", required=True, metavar="RUN_ID", help="the stage's MLflow run id")
    rerun.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one option of the recorded config, e.g. --set train.lr=0.001 (repeatable)",
    )
    rerun.add_argument(
        "--input", action="append", default=[], metavar="NAME=URI", dest="inputs",
        help="replace a recorded input URI, e.g. --input data_uri=/data/prep/sv (repeatable)",
    )
    rerun.add_argument(
        "--output-uri", default=None, metavar="URI",
        help="where to write (default: a fresh <storage.root>/reruns/<stage>/<time>-<run>; give the recorded output to resume there)",
    )
    rerun.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow store holding the run (default: MLFLOW_TRACKING_URI, else the workdir's)")
    rerun.add_argument(
        "--result-json", type=Path, default=None, metavar="PATH", help="also write the rerun's result to this JSON file",
    )
    rerun.add_argument("--in-docker", action="store_true", help="run inside the stage image through the Docker engine (DOCKER_HOST)")
    rerun.add_argument("--image", default=None, metavar="IMAGE", help="with --in-docker: image to use (default: BIFUSION_STAGE_IMAGE or the release)")
    rerun.add_argument("--gpus", default=None, metavar="N|all", help="with --in-docker: GPUs to give (default: all for train/evaluate/clip stages, 0 = none)")
    rerun.set_defaults(handler=_rerun)


def add_stage_commands(subparsers: Any) -> None:
    """Register one subcommand per stage on an argparse subparsers object."""
    synth = subparsers.add_parser("synth", help="generate procedural rooms in the raw ScanNet layout")
    synth.add_argument("--output", default=None, metavar="URI", help="raw root to write (default: <storage.root>/synth/<hash>)")
    add_config_arguments(synth)
    synth.set_defaults(handler=_run_synth)

    prep = subparsers.add_parser("prep", help="raw ScanNet layout -> ESAM-format SV, MV and scene sets")
    prep.add_argument("--input", required=True, metavar="URI", help="raw root (scans/, 2D/, split files)")
    prep.add_argument("--output", default=None, metavar="URI", help="output root (default: <storage.root>/prep/<hash>)")
    add_config_arguments(prep)
    prep.set_defaults(handler=_run_prep)

    clip = subparsers.add_parser("clip-precompute", help="store the CLIP features of every image the SV/MV sets reference")
    clip.add_argument(
        "--set-uri", action="append", required=True, metavar="URI",
        help="prepared set whose SV/MV info files list the images (the sv/ or mv/ folder of prep); repeatable",
    )
    add_config_arguments(clip)
    clip.set_defaults(handler=_run_clip_precompute)

    from bifusion.components.train.stages import TRAIN_STAGES

    train = subparsers.add_parser("train", help="train one model stage (launch with torchrun for several GPUs)")
    train.add_argument("--stage", required=True, choices=TRAIN_STAGES, help="which model: its config is configs/experiments/<stage>.yaml")
    train.add_argument("--data", required=True, metavar="URI", help="prepared set (the sv/ or mv/ folder of prep)")
    train.add_argument("--init", default=None, metavar="URI", help="checkpoint to start from (partial load, key report logged)")
    train.add_argument("--output", default=None, metavar="URI", help="checkpoint folder (default: <storage.root>/train/<stage>/<hash>)")
    train.add_argument("--clip-features", default=None, metavar="URI", help="CLIP feature root from clip_precompute (BiFusion stages)")
    add_config_arguments(train)
    train.set_defaults(handler=_run_train)

    evaluate = subparsers.add_parser("evaluate", help="score a checkpoint with the ScanNet benchmark protocol")
    evaluate.add_argument("--checkpoint", required=True, metavar="URI")
    evaluate.add_argument("--data", required=True, metavar="URI", help="prepared set holding evaluate.split")
    evaluate.add_argument("--clip-features", default=None, metavar="URI", help="CLIP feature root from clip_precompute (BiFusion checkpoints)")
    evaluate.add_argument("--output", default=None, metavar="URI")
    add_config_arguments(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)

    infer = subparsers.add_parser("infer", help="online instance segmentation of one raw RGB-D sequence (MV checkpoint)")
    infer.add_argument("--stream", action="store_true", help="stream the frames in order through the online model and merge")
    infer.add_argument("--checkpoint", required=True, metavar="URI", help="checkpoint of an MV stage (*_mv)")
    infer.add_argument("--sequence", required=True, metavar="PATH_OR_URI", help="frame folder with color/, depth/, pose/, intrinsic/")
    infer.add_argument("--intrinsics", default=None, metavar="FX,FY,CX,CY", help="depth camera intrinsics (default: intrinsic/intrinsic_depth.txt)")
    infer.add_argument("--depth-scale", type=float, default=None, metavar="UNITS", help="depth units per metre (default: prep.depth_scale)")
    infer.add_argument("--depth-min", type=float, default=None, metavar="M", help="nearest valid depth in metres (default: prep.depth_range_m)")
    infer.add_argument("--depth-max", type=float, default=None, metavar="M", help="farthest valid depth in metres")
    infer.add_argument("--output", default=None, metavar="URI", help="output folder (default: <storage.root>/infer/<hash>)")
    add_config_arguments(infer)
    infer.set_defaults(handler=_run_infer)

    add_rerun_command(subparsers)
    add_compare_command(subparsers)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
