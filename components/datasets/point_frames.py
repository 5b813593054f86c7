"""Single-view point frames from a prepared SV set (ours, or ESAM's processed ScanNet200-SV release)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bifusion.components.config_schema import AugmentConfig
from bifusion.components.datasets.augment import apply_transform, maybe_elastic, normalize_colors, random_rigid_transform
from bifusion.components.datasets.set_files import read_array, read_info_list

SV_INFO_FILE = "scannet200_sv_oneformer3d_infos_{split}.pkl"


@dataclass
class PointFrame:
    """One frame's points and labels, rows aligned; `xyz` is what the network sees.

    xyz (N, 3) float32: augmented coordinates (stored ones in eval); xyz_stored (N, 3): as stored (SV:
    centred world frame); colors (N, 3) float32 normalised; rgb (N, 3) uint8; instance_raw (N,) int64
    (objectId + 1, 0 = none); semantic_raw (N,) int64 raw ScanNet ids; superpoints (N,) int64 contiguous;
    source_pixels (N, 2) int32 (u, v) or None for data without them; augment (4, 4) rigid part of the
    augmentation (stored -> network frame, before elastic distortion).
    """

    name: str
    xyz: np.ndarray
    xyz_stored: np.ndarray
    colors: np.ndarray
    rgb: np.ndarray
    instance_raw: np.ndarray
    semantic_raw: np.ndarray
    superpoints: np.ndarray
    source_pixels: np.ndarray | None
    augment: np.ndarray
    camera: dict[str, Any] = field(default_factory=dict)  # img_path, depth_path, pose (camera -> stored), cam2img


def load_sv_record(set_dir: Path, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays of one SV info record; `source_pixels` is None when the set has none (ESAM's release)."""
    points = read_array(set_dir / "points" / record["lidar_points"]["lidar_path"], "<f4", record["lidar_points"]["num_pts_feats"])
    pixels_name = record.get("source_pixels_path")
    return {
        "points": points,
        "instance": read_array(set_dir / "instance_mask" / record["pts_instance_mask_path"], "<i8"),
        "semantic": read_array(set_dir / "semantic_mask" / record["pts_semantic_mask_path"], "<i8"),
        "superpoints": read_array(set_dir / "super_points" / record["super_pts_path"], "<i8"),
        "source_pixels": read_array(set_dir / "source_pixels" / pixels_name, "<i4", 2) if pixels_name else None,
    }


class SingleViewDataset(Dataset):
    """Frames of one split of an SV set; training mode applies ESAM's augmentations."""

    def __init__(self, set_dir: Path, split: str, augment: AugmentConfig | None, voxel_size: float, seed: int):
        self.set_dir = set_dir
        self.records = read_info_list(set_dir, SV_INFO_FILE.format(split=split))
        self.augment = augment
        self.voxel_size = voxel_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws per epoch while keeping them reproducible."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PointFrame:
        record = self.records[index]
        arrays = load_sv_record(self.set_dir, record)
        xyz_stored = arrays["points"][:, :3].astype(np.float64)
        rgb = np.clip(arrays["points"][:, 3:6], 0, 255).astype(np.uint8)
        superpoints = np.unique(arrays["superpoints"], return_inverse=True)[1].astype(np.int64)
        transform = np.eye(4)
        xyz = xyz_stored
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            transform = random_rigid_transform(self.augment, rng)
            xyz = maybe_elastic(apply_transform(transform, xyz_stored), self.augment, self.voxel_size, rng)
        camera = {key: record[key] for key in ("img_path", "depth_path", "pose", "cam2img", "depth_scale", "image_size") if key in record}
        name = Path(record["lidar_points"]["lidar_path"]).stem
        return PointFrame(
            name=name,
            xyz=xyz.astype(np.float32),
            xyz_stored=xyz_stored.astype(np.float32),
            colors=normalize_colors(rgb.astype(np.float64)),
            rgb=rgb,
            instance_raw=arrays["instance"],
            semantic_raw=arrays["semantic"],
            superpoints=superpoints,
            source_pixels=arrays["source_pixels"],
            augment=transform,
            camera=camera,
        )


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: torch seeds per worker; numpy draws come from per-sample generators."""
    torch.manual_seed(torch.initial_seed() % 2**31 + worker_id)
