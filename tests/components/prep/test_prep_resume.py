"""Prep resumes where it stopped, and gives the same bytes with one or several worker processes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bifusion.components.prep.stage import run_prep


def test_rerun_skips_finished_scenes_and_redoes_unfinished_ones(tiny_raw: Path, prep_config, caplog: pytest.LogCaptureFixture) -> None:
    config = prep_config()
    first = run_prep(config, str(tiny_raw))
    output = Path(first.output_uri)
    finished = output / "sv" / "points" / "scene9000_00_0.bin"
    unfinished = output / "sv" / "points" / "scene9001_00_0.bin"
    finished_mtime = finished.stat().st_mtime_ns
    # Simulate a crash inside scene9001: its files partly written, its completion record never published.
    (output / "_scenes" / "scene9001_00.json").unlink()
    unfinished.unlink()
    with caplog.at_level(logging.INFO):
        second = run_prep(config, str(tiny_raw))
    assert any("1 of 2 scenes already prepared" in message for message in caplog.messages)
    assert finished.stat().st_mtime_ns == finished_mtime
    assert unfinished.is_file()
    assert second.summary["sv_samples"] == first.summary["sv_samples"]
    assert (output / "sv" / "scannet200_sv_oneformer3d_infos_val.pkl").is_file()


def test_changed_options_do_not_reuse_old_output(tiny_raw: Path, prep_config) -> None:
    first = run_prep(prep_config(), str(tiny_raw))
    second = run_prep(prep_config("prep.points_per_frame=1000"), str(tiny_raw))
    assert first.output_uri != second.output_uri
    assert np.fromfile(Path(second.sv_uri) / "points" / "scene9000_00_0.bin", "<f4").size == 1000 * 6


def test_two_workers_write_the_same_bytes_as_one(tiny_raw: Path, tiny_prepared, prep_config) -> None:
    parallel = run_prep(prep_config("prep.workers=2"), str(tiny_raw))
    assert parallel.output_uri.split("/")[-1] == tiny_prepared.output_uri.split("/")[-1]  # workers not in the hash
    for field in ("points", "super_points", "instance_mask", "source_pixels"):
        for path in sorted((Path(tiny_prepared.sv_uri) / field).iterdir()):
            if not path.name.startswith("."):
                assert (Path(parallel.sv_uri) / field / path.name).read_bytes() == path.read_bytes(), path
