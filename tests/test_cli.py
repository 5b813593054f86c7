"""The `bifusion` command: one subcommand per stage, clear errors for bad options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bifusion.pipelines.cli import build_parser, main

BIFUSION = [sys.executable, "-m", "bifusion.pipelines.cli"]


def test_every_stage_has_a_subcommand() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # argparse keeps them here
    assert {"synth", "prep", "pipeline"} <= set(choices)


def test_help_runs_as_a_program() -> None:
    result = subprocess.run([*BIFUSION, "--help"], capture_output=True, text=True, check=True)
    assert "prep" in result.stdout and "synth" in result.stdout


def test_misspelt_override_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exception, match="did you mean 'points_per_frame'"):
        main(["prep", "--input", "/nowhere", "--set", "prep.point_per_frame=3"])


def test_compile_command_writes_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["pipeline", "compile", "--config", "demo", "--output", str(tmp_path / "p.yaml")])
    assert (tmp_path / "p.yaml").read_text().startswith("# PIPELINE DEFINITION")
    assert "compiled pipeline written to" in capsys.readouterr().out
