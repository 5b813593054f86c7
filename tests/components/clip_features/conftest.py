"""A one-scene prepared set and a registered tiny open_clip ViT, so the precompute stage runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import open_clip
import pytest
import torch

from bifusion.components.config_schema import Config, load_config
from bifusion.components.prep.stage import PrepResult, run_prep
from bifusion.components.synth.stage import run_synth

TINY_MODEL = "bifusion-test-tiny-clip-features"
TINY_INPUT = (24, 32)  # (H, W): a 3x4 grid of 8 px patches, 4:3 like the real 240x320
TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
ONE_SCENE = [
    "synth.num_scenes=1",
    "synth.num_val_scenes=0",
    "synth.frames_per_scene=11",  # raw frames 0, 20, ..., 200
    "synth.width=160",
    "synth.height=120",
    "synth.objects_per_room=[3, 4]",
    "synth.workers=1",
    "prep.split_files={train: scannetv2_train.txt}",
    "prep.sv_frame_step=100",  # SV: 0, 100, 200; MV: 0, 40, ..., 200 -> 7 distinct images
    "prep.points_per_frame=1000",
    "prep.min_valid_points=300",
    "prep.superpoints.downsample=2",
    "prep.workers=1",
]
NUM_IMAGES = 7


@pytest.fixture(scope="session", autouse=True)
def tiny_clip_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a 2-layer, 32-wide ViT with open_clip so the real create_model/load_checkpoint path builds it."""
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return TINY_MODEL


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny towers: with several threads, synchronisation costs more than the arithmetic on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, tiny_clip_model: str) -> Path:
    """A full open_clip state dict of the tiny model (random weights, seed 1), as a real checkpoint file."""
    torch.manual_seed(1)
    model = open_clip.create_model(tiny_clip_model, force_image_size=TINY_INPUT)
    path = tmp_path_factory.mktemp("clip-weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def clip_overrides(weights: Path | str) -> list[str]:
    return [
        f"clip.model_name={TINY_MODEL}", f"clip.weights={weights}", f"clip.input_size=[{TINY_INPUT[0]}, {TINY_INPUT[1]}]",
        "clip.batch_size=3", "clip.workers=2", "clip.device=cpu", "clip.validate_samples=3",
    ]


@pytest.fixture(scope="session")
def one_scene_prepared(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> PrepResult:
    """synth + prep of one scene (read-only: tests write their features into their own store)."""
    workdir = tmp_path_factory.mktemp("clip-prep")
    config = load_config(["base"], [f"workdir={workdir}", f"tracking.uri={mlflow_uri}", "tracking.experiment=clip-tests", *ONE_SCENE])
    raw = run_synth(config, str(workdir / "raw"))
    return run_prep(config, raw.raw_uri)


@pytest.fixture
def clip_config(make_config, tiny_weights: Path):
    """Config for the tiny model with the session's weights file; extra overrides win."""

    def build(*overrides: str) -> Config:
        return make_config(*ONE_SCENE, *clip_overrides(tiny_weights), *overrides)

    return build
