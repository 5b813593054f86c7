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


def _run_train(args: argparse.Namespace) -> None:
    from bifusion.components.train.stage import run_train

    config = load_config([f"experiments/{args.stage}", *args.config], args.overrides)
    result = run_train(config, args.stage, args.data, args.init, args.output)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process returns; one reports
        emit_result(result, args.result_json)


def _run_evaluate(args: argparse.Namespace) -> None:
    from bifusion.components.evaluate.stage import run_evaluate

    emit_result(run_evaluate(config_from_args(args), args.checkpoint, args.data, args.output), args.result_json)


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

    from bifusion.components.train.stages import TRAIN_STAGES

    train = subparsers.add_parser("train", help="train one model stage (launch with torchrun for several GPUs)")
    train.add_argument("--stage", required=True, choices=TRAIN_STAGES, help="which model: its config is configs/experiments/<stage>.yaml")
    train.add_argument("--data", required=True, metavar="URI", help="prepared set (the sv/ or mv/ folder of prep)")
    train.add_argument("--init", default=None, metavar="URI", help="checkpoint to start from (partial load, key report logged)")
    train.add_argument("--output", default=None, metavar="URI", help="checkpoint folder (default: <storage.root>/train/<stage>/<hash>)")
    add_config_arguments(train)
    train.set_defaults(handler=_run_train)

    evaluate = subparsers.add_parser("evaluate", help="score a checkpoint with the ScanNet benchmark protocol")
    evaluate.add_argument("--checkpoint", required=True, metavar="URI")
    evaluate.add_argument("--data", required=True, metavar="URI", help="prepared set holding evaluate.split")
    evaluate.add_argument("--output", default=None, metavar="URI")
    add_config_arguments(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
