"""Pluggable superpoints: precomputed 2D masks (e.g. SAM's) with Felzenszwalb segments for uncovered pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifusion.components.prep.stage import run_prep
from bifusion.components.scannet_raw import RawDataError


def write_masks(raw: Path, scene: str, frames: list[int], kind: str) -> None:
    folder = raw / "2D" / scene / "superpoint_masks"
    folder.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        height, width = np.asarray(Image.open(raw / "2D" / scene / "depth" / f"{frame}.png")).shape
        masks = np.full((height, width), -1, dtype=np.int64)
        masks[:, : width // 2] = 7  # one mask over the left half, the right half uncovered
        if kind == "npy":
            buffer = io.BytesIO()
            np.save(buffer, masks)
            (folder / f"{frame}.npy").write_bytes(buffer.getvalue())
        else:
            Image.fromarray((masks + 1).astype(np.uint16)).save(folder / f"{frame}.png")


@pytest.mark.parametrize("kind", ["npy", "png"])
def test_masks_define_superpoints_and_uncovered_pixels_fall_back(raw_copy: Path, prep_config, infos, kind: str) -> None:
    frames = [0, 40, 80, 100, 120, 160, 200]
    for scene in ("scene9000_00", "scene9001_00"):
        write_masks(raw_copy, scene, frames, kind)
    result = run_prep(prep_config("prep.superpoints.method=masks", "prep.sets=[sv]"), str(raw_copy))
    for record in infos(result.sv_uri, "sv", "train"):
        name = record["lidar_points"]["lidar_path"]
        superpoints = np.fromfile(Path(result.sv_uri) / "super_points" / name, "<i8")
        pixels = np.fromfile(Path(result.sv_uri) / "source_pixels" / name, "<i4").reshape(-1, 2)
        width = np.asarray(Image.open(record["depth_path"])).shape[1]
        left = pixels[:, 0] < width // 2
        assert len(np.unique(superpoints[left])) == 1  # the whole mask is one superpoint
        assert len(np.unique(superpoints[~left])) > 1  # fallback segments split the rest
        assert not set(superpoints[left]) & set(superpoints[~left])


def test_missing_mask_file_names_the_file(raw_copy: Path, prep_config) -> None:
    with pytest.raises(RawDataError, match=r"superpoint_masks/0.npy: missing \(superpoints.method=masks"):
        run_prep(prep_config("prep.superpoints.method=masks"), str(raw_copy))
