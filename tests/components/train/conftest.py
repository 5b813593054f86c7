"""A tiny prepared SV set (one generated room) shared by the training tests, and a tiny model config."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifusion.components.config_schema import Config, load_config
from bifusion.components.prep.stage import run_prep
from bifusion.components.synth.stage import run_synth

TINY_DATA = [
    "synth.num_scenes=1", "synth.num_val_scenes=0", "synth.frames_per_scene=9", "synth.width=160", "synth.height=120",
    "synth.objects_per_room=[5, 6]", "synth.workers=1",
    "prep.sv_frame_step=40", "prep.sets=[sv]", "prep.points_per_frame=2000", "prep.min_valid_points=500",
    "prep.superpoints.min_size=40", "prep.superpoints.downsample=1", "prep.workers=1",
    "prep.split_files={train: scannetv2_train.txt, val: scannetv2_train.txt}",
]
TINY_MODEL = [
    "model.backbone.planes=[16, 16, 32, 32, 32, 32, 32, 32]", "model.backbone.layers=[1, 1, 1, 1, 1, 1, 1, 1]",
    "model.backbone.stem_channels=16", "model.decoder.d_model=32", "model.decoder.num_heads=2", "model.decoder.ffn_channels=64",
    "train.batch_size=2", "train.num_workers=0", "train.lr=0.001", "train.log_every_iterations=1",
    "train.device=cpu", "evaluate.min_points=20",
]


def tiny_train_config(workdir: Path, mlflow_uri: str, *overrides: str) -> Config:
    return load_config(
        ["experiments/3d_sv"],
        [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", "tracking.experiment=train-tests", *TINY_DATA, *TINY_MODEL, *overrides],
    )


@pytest.fixture(scope="session")
def tiny_sv_set(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> str:
    """SV set of one room: frames 0, 40, 80, 120, 160 (train and val are the same frames)."""
    workdir = tmp_path_factory.mktemp("tiny-sv")
    config = tiny_train_config(workdir, mlflow_uri)
    raw = run_synth(config, str(workdir / "raw")).raw_uri
    return run_prep(config, raw).sv_uri


@pytest.fixture
def train_config(tmp_path: Path, mlflow_uri: str):
    def build(*overrides: str) -> Config:
        return tiny_train_config(tmp_path, mlflow_uri, *overrides)

    return build
