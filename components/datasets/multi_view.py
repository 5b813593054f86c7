"""Multi-view data from a prepared MV set: training clips of consecutive frames, whole-scene sequences.

All frames of a scene share one world frame (not centred), so instance ids (mesh objectId + 1) agree
across frames and a 3D memory can accumulate them. A clip gets ONE augmentation for all its frames and
for the reconstructed scene it comes with (whose complete objects give the amodal box targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from bifusion.components.config_schema import AugmentConfig
from bifusion.components.datasets.augment import apply_transform, maybe_elastic, normalize_colors, random_rigid_transform
from bifusion.components.datasets.point_frames import PointFrame
from bifusion.components.datasets.set_files import read_array, read_info_list

MV_INFO_FILE = "scannet200_mv_oneformer3d_infos_{split}.pkl"


@dataclass
class SceneGeometry:
    """The reconstructed scene: mesh vertices `xyz (V, 3)` (network frame), labels and mesh segments `(V,)`."""

    xyz: np.ndarray
    instance_raw: np.ndarray
    semantic_raw: np.ndarray
    segments: np.ndarray


@dataclass
class PointClip:
    """Consecutive frames of one scene (a training clip, or the whole sequence for evaluation)."""

    scene: str
    frames: list[PointFrame]
    geometry: SceneGeometry
    augment: np.ndarray  # (4, 4) rigid part shared by every frame and the geometry


def scene_geometry_dir(set_dir: Path, record: dict[str, Any]) -> Path:
    """Folder of the scene set next to an MV set (prep writes `scene/` beside `mv/`)."""
    relative = record.get("scene_points_path", f"../scene/points/{record['scene']}.bin")
    return (set_dir / relative).parent.parent


def load_scene_geometry(set_dir: Path, record: dict[str, Any]) -> SceneGeometry:
    root = scene_geometry_dir(set_dir, record)
    name = f"{record['scene']}.bin"
    points = read_array(root / "points" / name, "<f4", 6)
    return SceneGeometry(
        xyz=points[:, :3].astype(np.float64),
        instance_raw=read_array(root / "instance_mask" / name, "<i8"),
        semantic_raw=read_array(root / "semantic_mask" / name, "<i8"),
        segments=read_array(root / "super_points" / name, "<i8"),
    )


def load_mv_frame(set_dir: Path, record: dict[str, Any], index: int) -> dict[str, Any]:
    """Arrays and camera of frame `index` of an MV record (ESAM keys, plus ours when present)."""
    path = record["pts_paths"][index]
    pixels = record.get("source_pixels_paths")
    camera = {"img_path": record["img_paths"][index], "pose": record["poses"][index]}
    if "depth_paths" in record:
        camera.update(depth_path=record["depth_paths"][index], depth_scale=record["depth_scale"])
    for key in ("cam2img", "image_size"):
        if key in record:
            camera[key] = record[key]
    return {
        "name": f"{record['scene']}_{record['frames'][index] if 'frames' in record else index}",
        "points": read_array(set_dir / "points" / path, "<f4", 6),
        "instance": read_array(set_dir / "instance_mask" / record["pts_instance_mask_paths"][index], "<i8"),
        "semantic": read_array(set_dir / "semantic_mask" / record["pts_semantic_mask_paths"][index], "<i8"),
        "superpoints": read_array(set_dir / "super_points" / record["super_pts_paths"][index], "<i8"),
        "source_pixels": read_array(set_dir / "source_pixels" / pixels[index], "<i4", 2) if pixels else None,
        "camera": camera,
    }


def build_clip(
    set_dir: Path, record: dict[str, Any], indices: list[int], augment: AugmentConfig | None, voxel_size: float,
    rng: np.random.Generator,
) -> PointClip:
    """Load frames `indices` of a scene and apply one augmentation to all of them and to the scene geometry."""
    loaded = [load_mv_frame(set_dir, record, i) for i in indices]
    geometry = load_scene_geometry(set_dir, record)
    transform = random_rigid_transform(augment, rng) if augment is not None else np.eye(4)
    stored = [frame["points"][:, :3].astype(np.float64) for frame in loaded]
    moved = [apply_transform(transform, xyz) for xyz in [*stored, geometry.xyz]]
    if augment is not None:
        # One displacement field for the whole clip: distort the union, then split it back.
        sizes = [len(xyz) for xyz in moved]
        moved = np.split(maybe_elastic(np.concatenate(moved), augment, voxel_size, rng), np.cumsum(sizes)[:-1])
    frames = []
    for frame, xyz_stored, xyz in zip(loaded, stored, moved):
        rgb = np.clip(frame["points"][:, 3:6], 0, 255).astype(np.uint8)
        frames.append(PointFrame(
            name=frame["name"], xyz=xyz.astype(np.float32), xyz_stored=xyz_stored.astype(np.float32),
            colors=normalize_colors(rgb.astype(np.float64)), rgb=rgb, instance_raw=frame["instance"],
            semantic_raw=frame["semantic"], superpoints=np.unique(frame["superpoints"], return_inverse=True)[1].astype(np.int64),
            source_pixels=frame["source_pixels"], augment=transform, camera=frame["camera"],
        ))
    geometry.xyz = moved[-1]
    return PointClip(record["scene"], frames, geometry, transform)


class MultiViewClipDataset(Dataset):
    """One training clip of `num_frames` consecutive MV frames per scene and epoch (random start).

    ESAM's window wraps around the end of the sequence (joining a scan's end and start); here it does not.
    Scenes with fewer frames give a shorter clip.
    """

    def __init__(self, set_dir: Path, split: str, num_frames: int, augment: AugmentConfig | None, voxel_size: float, seed: int):
        self.set_dir = set_dir
        self.records = read_info_list(set_dir, MV_INFO_FILE.format(split=split))
        self.num_frames = num_frames
        self.augment = augment
        self.voxel_size = voxel_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PointClip:
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        length = len(record["pts_paths"])
        start = int(rng.integers(0, max(length - self.num_frames, 0) + 1))
        indices = list(range(start, min(start + self.num_frames, length)))
        return build_clip(self.set_dir, record, indices, self.augment, self.voxel_size, rng)


class MultiViewSceneDataset(Dataset):
    """Every frame of each scene in stream order, unaugmented: what online inference and evaluation consume."""

    def __init__(self, set_dir: Path, split: str):
        self.set_dir = set_dir
        self.records = read_info_list(set_dir, MV_INFO_FILE.format(split=split))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PointClip:
        record = self.records[index]
        indices = list(range(len(record["pts_paths"])))
        return build_clip(self.set_dir, record, indices, None, 0.02, np.random.default_rng(0))
