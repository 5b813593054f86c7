"""The in-pod training launcher: torchrun with one process per GPU, the result read back from rank 0's file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bifusion.components.config_schema import config_from_json, config_to_json, load_config
from bifusion.components.train.launch import GPUS_PER_POD_ENV, gpus_per_pod, torchrun_command, train_in_pod
from bifusion.pipelines.cli import build_parser

RESULT = {
    "output_uri": "s3://b/train/3d_sv/abc", "checkpoint_uri": "s3://b/train/3d_sv/abc/final.pt",
    "best_checkpoint_uri": "s3://b/train/3d_sv/abc/best.pt", "iterations": 10, "skipped_steps": 0, "metrics": {"val/ap50": 0.5},
}


def test_gpus_per_pod_reads_the_placement_variable() -> None:
    assert gpus_per_pod({}) == 0
    assert gpus_per_pod({GPUS_PER_POD_ENV: "8"}) == 8
    with pytest.raises(ValueError, match=GPUS_PER_POD_ENV):
        gpus_per_pod({GPUS_PER_POD_ENV: "two"})


def test_torchrun_command_is_a_valid_train_command_line(tmp_path: Path) -> None:
    command = torchrun_command(4, tmp_path / "c.yaml", "3d_sv", "s3://b/sv", "s3://b/init.pt", "s3://b/clip", tmp_path / "r.json")
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    cli_args = command[command.index("bifusion.pipelines.cli") + 1:]
    args = build_parser().parse_args(cli_args)  # the command exists with these flags
    assert (args.command, args.stage, args.data, args.init, args.clip_features) == ("train", "3d_sv", "s3://b/sv", "s3://b/init.pt", "s3://b/clip")
    assert args.config == [str(tmp_path / "c.yaml")]
    assert args.result_json == tmp_path / "r.json"
    without = torchrun_command(2, tmp_path / "c.yaml", "3d_sv", "s3://b/sv", None, None, tmp_path / "r.json")
    assert "--init" not in without and "--clip-features" not in without


def test_several_gpus_launch_torchrun_and_return_rank_zeros_result() -> None:
    config_json = config_to_json(load_config(["demo"], ["train.max_iterations=7"]))
    seen: dict[str, Any] = {}

    def fake_torchrun(command: list[str], check: bool) -> subprocess.CompletedProcess:
        args = build_parser().parse_args(command[command.index("bifusion.pipelines.cli") + 1:])
        seen["config_text"] = Path(args.config[0]).read_text()
        seen["processes"] = command[command.index("--nproc-per-node") + 1]
        args.result_json.write_text(json.dumps(RESULT))
        return subprocess.CompletedProcess(command, 0)

    result = train_in_pod(config_json, "3d_sv", "s3://b/sv", environ={GPUS_PER_POD_ENV: "4"}, run=fake_torchrun)
    assert result.best_checkpoint_uri == RESULT["best_checkpoint_uri"]
    assert result.metrics == {"val/ap50": 0.5}
    assert seen["processes"] == "4"
    assert config_from_json(seen["config_text"]).train.max_iterations == 7


def test_a_failed_torchrun_fails_the_stage() -> None:
    def failing(command: list[str], check: bool) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 3)

    with pytest.raises(RuntimeError, match="torchrun with 2 processes for stage 3d_sv exited with 3"):
        train_in_pod(config_to_json(load_config(["demo"])), "3d_sv", "s3://b/sv", environ={GPUS_PER_POD_ENV: "2"}, run=failing)


def test_a_resolved_config_file_reproduces_the_config_through_the_train_cli(tmp_path: Path) -> None:
    """torchrun ranks rebuild the config from `--config <resolved file>` on top of the experiment file."""
    config = load_config(["experiments/3d_sv", "demo"], ["train.max_iterations=7", "prep.workers=3"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_json(config))
    assert load_config(["experiments/3d_sv", str(path)], []) == config
