"""`bifusion infer --stream` on a generated raw scene with a tiny untrained MV checkpoint."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bifusion.components.config_schema import Config, load_config
from bifusion.components.synth.stage import run_synth
from bifusion.components.train.model_factory import build_online_model
from bifusion.pipelines.cli import main

TINY = [
    "synth.num_scenes=1", "synth.num_val_scenes=0", "synth.frames_per_scene=5", "synth.width=160", "synth.height=120",
    "synth.objects_per_room=[4, 5]", "synth.workers=1",
    "prep.mv_frame_step=40", "prep.points_per_frame=1500", "prep.superpoints.min_size=40", "prep.superpoints.downsample=1",
    "model.backbone.planes=[16, 16, 32, 32, 32, 32, 32, 32]", "model.backbone.layers=[1, 1, 1, 1, 1, 1, 1, 1]",
    "model.backbone.stem_channels=16", "model.decoder.d_model=32", "model.decoder.num_heads=2", "model.decoder.ffn_channels=64",
    "model.online.merge_hidden_channels=32", "model.online.merge_channels=16",
    "model.online.frame_score_threshold=0.0", "evaluate.min_points=5",
]


def tiny_config(workdir: Path, mlflow_uri: str) -> Config:
    return load_config(["experiments/3d_mv"], [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", *TINY])


def cli_overrides(workdir: Path, mlflow_uri: str) -> list[str]:
    arguments = ["--config", "experiments/3d_mv"]
    for item in [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", *TINY]:
        arguments += ["--set", item]
    return arguments


@pytest.fixture(scope="module")
def raw_scene(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Path:
    """Frame folder (color/, depth/, pose/, intrinsic/) of one generated room: raw frames 0, 20, ..., 80."""
    workdir = tmp_path_factory.mktemp("infer-raw")
    raw = Path(run_synth(tiny_config(workdir, mlflow_uri), str(workdir / "raw")).raw_uri)
    (scene,) = (raw / "2D").iterdir()
    return scene


def write_checkpoint(path: Path, config: Config, stage: str) -> Path:
    torch.manual_seed(0)
    model = build_online_model(config.model, config.evaluate)
    state = {"model": model.state_dict(), "config": {"model": dataclasses.asdict(config.model)}, "stage": stage}
    torch.save(state, path)
    return path


def test_infer_stream_writes_instances_over_the_accumulated_points(
    raw_scene: Path, tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path, mlflow_uri)
    checkpoint = write_checkpoint(tmp_path / "mv.pt", config, "3d_mv")
    output = tmp_path / "out"
    main(["infer", "--stream", "--checkpoint", str(checkpoint), "--sequence", str(raw_scene), "--output", str(output),
          "--depth-min", "0.1", "--depth-max", "8", *cli_overrides(tmp_path, mlflow_uri)])
    captured = capsys.readouterr()
    assert "3/3" in captured.err  # tqdm progress over raw frames 0, 40, 80

    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["skipped_frames"] == []
    assert summary["settings"]["depth_range_m"] == [0.1, 8.0]
    with np.load(io.BytesIO((output / "instances.npz").read_bytes())) as arrays:
        points, masks, instance = arrays["points_xyz"], arrays["masks"], arrays["point_instance"]
        assert points.shape == (3 * 1500, 3) and np.isfinite(points).all()
        assert arrays["points_rgb"].shape == (4500, 3) and arrays["points_rgb"].dtype == np.uint8
        assert masks.shape == (summary["instances"], 4500) and arrays["scores"].shape == (summary["instances"],)
        assert instance.min() >= -1 and instance.max() < max(summary["instances"], 1)
        covered = instance >= 0
        assert np.array_equal(covered, masks.any(axis=0))
    # the frames lie in one world frame: the generated room is a few metres across, not scattered per camera
    assert np.ptp(points, axis=0).max() < 10.0


def test_infer_intrinsics_override_changes_the_points(raw_scene: Path, tmp_path: Path, mlflow_uri: str) -> None:
    from bifusion.components.infer import run_infer

    config = tiny_config(tmp_path, mlflow_uri)
    model = build_online_model(config.model, config.evaluate)
    results = {}
    for name, intrinsics in (("file", None), ("narrow", np.array([[400.0, 0, 79.5], [0, 400.0, 59.5], [0, 0, 1]]))):
        result = run_infer(config, "unused", str(raw_scene), str(tmp_path / name), intrinsics=intrinsics, model=model)
        with np.load(io.BytesIO(Path(result.output_uri, "instances.npz").read_bytes())) as arrays:
            results[name] = arrays["points_xyz"]
    # a longer focal length narrows the lifted frustum: same depths, smaller lateral spread
    spread = {name: np.ptp(points[:1500], axis=0) for name, points in results.items()}
    assert spread["narrow"][:2].max() < spread["file"][:2].max()


def test_infer_rejects_a_single_view_checkpoint(raw_scene: Path, tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config(tmp_path, mlflow_uri)
    checkpoint = write_checkpoint(tmp_path / "sv.pt", config, "3d_sv")
    with pytest.raises(ValueError, match="single-view model.*multi-view checkpoint"):
        main(["infer", "--stream", "--checkpoint", str(checkpoint), "--sequence", str(raw_scene),
              *cli_overrides(tmp_path, mlflow_uri)])


def test_infer_needs_both_depth_bounds(raw_scene: Path) -> None:
    with pytest.raises(SystemExit, match="both --depth-min and --depth-max"):
        main(["infer", "--stream", "--checkpoint", "x.pt", "--sequence", str(raw_scene), "--depth-min", "0.2"])
