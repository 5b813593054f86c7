"""A tiny generated raw data set, made once per session and copied by tests that damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bifusion.components.config_schema import Config, load_config
from bifusion.components.synth.stage import run_synth

TINY = [
    "synth.num_scenes=2",
    "synth.num_val_scenes=1",
    "synth.frames_per_scene=11",  # raw frames 0, 20, ..., 200
    "synth.width=160",
    "synth.height=120",
    "synth.objects_per_room=[4, 5]",
    "synth.workers=1",
    "prep.sv_frame_step=100",  # SV: 0, 100, 200; MV: 0, 40, ..., 200
    "prep.points_per_frame=2000",
    "prep.min_valid_points=500",
    "prep.superpoints.min_size=60",
    "prep.superpoints.downsample=1",
    "prep.workers=1",
]


def tiny_config(workdir: Path, mlflow_uri: str, *overrides: str) -> Config:
    return load_config(
        ["base"],
        [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", "tracking.experiment=prep-tests", *TINY, *overrides],
    )


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Path:
    """Raw root of two generated scenes (read-only: copy it with `raw_copy` before changing files)."""
    workdir = tmp_path_factory.mktemp("tiny-raw")
    return Path(run_synth(tiny_config(workdir, mlflow_uri), str(workdir / "raw")).raw_uri)


@pytest.fixture
def raw_copy(tiny_raw: Path, tmp_path: Path) -> Path:
    target = tmp_path / "raw"
    shutil.copytree(tiny_raw, target)
    return target


@pytest.fixture
def prep_config(tmp_path: Path, mlflow_uri: str):
    def build(*overrides: str) -> Config:
        return tiny_config(tmp_path, mlflow_uri, *overrides)

    return build


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str):
    """`run_prep` result on the tiny raw set with the default (Felzenszwalb) superpoints."""
    from bifusion.components.prep.stage import run_prep

    workdir = tmp_path_factory.mktemp("tiny-prep")
    return run_prep(tiny_config(workdir, mlflow_uri), str(tiny_raw))


def load_infos(set_uri: str, kind: str, split: str) -> list[dict]:
    """`data_list` of an info pickle written by prep."""
    import pickle

    names = {"sv": "scannet200_sv_oneformer3d_infos", "mv": "scannet200_mv_oneformer3d_infos", "scene": "scannet200_oneformer3d_infos"}
    with open(Path(set_uri) / f"{names[kind]}_{split}.pkl", "rb") as handle:
        return pickle.load(handle)["data_list"]


@pytest.fixture
def infos():
    return load_infos
