"""Files and info records in ESAM's processed ScanNet200 layouts, so our loaders also read ESAM's releases.

Per-point binaries are raw little-endian arrays, as ESAM's: points float32 (N, 6) = xyz + rgb 0-255,
instance/semantic/superpoint masks int64 (N,). Our addition: `source_pixels` int32 (N, 2) = the (u, v)
depth pixel each point was unprojected from (exact 2D-3D correspondence for single-view fusion).

    sv/{points,instance_mask,semantic_mask,super_points,source_pixels}/<scene>_<N>.bin   (xyz centred)
    sv/scannet200_sv_oneformer3d_infos_<split>.pkl
    mv/{points,instance_mask,semantic_mask,super_points,source_pixels}/<scene>/<N>.bin   (xyz world)
    mv/axis_align_matrix/<scene>.npy, mv/scannet200_mv_oneformer3d_infos_<split>.pkl
    scene/{points,instance_mask,semantic_mask,super_points}/<scene>.bin                 (mesh vertices)
    scene/axis_align_matrix/<scene>.npy, scene/scannet200_oneformer3d_infos_<split>.pkl

Info files follow mmdet3d v2 (`{"metainfo": ..., "data_list": [...]}`); paths inside records are
relative to the set folder, as mmdet3d's data prefixes expect; image/depth paths are absolute URIs
of the raw frames.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from bifusion.components.labels import label_table
from bifusion.components.prep.frame_sample import FrameSample
from bifusion.components.prep.scene_labels import SceneAnnotation
from bifusion.components.scannet_raw import SceneLayout
from bifusion.components.storage import Storage, join_uri

INFO_FILE_NAMES = {
    "sv": "scannet200_sv_oneformer3d_infos_{split}.pkl",
    "mv": "scannet200_mv_oneformer3d_infos_{split}.pkl",
    "scene": "scannet200_oneformer3d_infos_{split}.pkl",
}
POINT_FIELDS = ("points", "instance_mask", "semantic_mask", "super_points", "source_pixels")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _point_arrays(sample: FrameSample, xyz: np.ndarray) -> dict[str, bytes]:
    points = np.concatenate([xyz, sample.colors.astype(np.float64)], axis=1)
    return {
        "points": points.astype("<f4").tobytes(),
        "instance_mask": sample.instance.astype("<i8").tobytes(),
        "semantic_mask": sample.semantic.astype("<i8").tobytes(),
        "super_points": sample.superpoints.astype("<i8").tobytes(),
        "source_pixels": sample.pixels.astype("<i4").tobytes(),
    }


def write_sv_sample(
    storage: Storage, set_uri: str, layout: SceneLayout, sample: FrameSample, intrinsics: np.ndarray,
    depth_scale: float, axis_alignment: np.ndarray, image_size: tuple[int, int],
) -> dict[str, Any]:
    """Write one single-view sample (points centred on their mean, as ESAM) and return its info record."""
    name = f"{layout.scene}_{sample.frame}.bin"
    centre = sample.points_world.mean(axis=0)
    for field, data in _point_arrays(sample, sample.points_world - centre).items():
        storage.write_bytes(join_uri(set_uri, field, name), data)
    pose_centred = sample.cam_to_world.copy()
    pose_centred[:3, 3] -= centre  # camera -> centred frame: the centring offset folded into the translation
    return {
        "lidar_points": {"lidar_path": name, "num_pts_feats": 6},
        "pts_instance_mask_path": name,
        "pts_semantic_mask_path": name,
        "super_pts_path": name,
        "source_pixels_path": name,
        "img_path": layout.color(sample.frame),
        "depth_path": layout.depth(sample.frame),
        "pose": pose_centred.tolist(),
        "pose_world": sample.cam_to_world.tolist(),
        "centre_offset": centre.tolist(),
        "cam2img": _homogeneous(intrinsics).tolist(),
        "image_size": list(image_size),  # (W, H) of the depth grid that cam2img and source pixels refer to
        "depth_scale": depth_scale,
        "axis_align_matrix": axis_alignment.tolist(),
        "scene": layout.scene,
        "frame": sample.frame,
        "num_valid_pixels": sample.num_valid_pixels,
    }


def write_mv_frame(storage: Storage, set_uri: str, layout: SceneLayout, sample: FrameSample) -> dict[str, Any]:
    """Write one multi-view frame (points in the shared raw world frame, not centred); returns its paths."""
    name = f"{layout.scene}/{sample.frame}.bin"
    for field, data in _point_arrays(sample, sample.points_world).items():
        storage.write_bytes(join_uri(set_uri, field, name), data)
    return {
        "frame": sample.frame,
        "pts_path": name,
        "pose": sample.cam_to_world.tolist(),
        "img_path": layout.color(sample.frame),
        "depth_path": layout.depth(sample.frame),
    }


def mv_record(
    storage: Storage, set_uri: str, layout: SceneLayout, frames: list[dict[str, Any]], intrinsics: np.ndarray,
    depth_scale: float, axis_alignment: np.ndarray, image_size: tuple[int, int],
) -> dict[str, Any]:
    """The per-scene MV info record (ESAM keys plus ours), frames in stream order."""
    storage.write_bytes(join_uri(set_uri, "axis_align_matrix", f"{layout.scene}.npy"), _npy_bytes(axis_alignment))
    paths = [f["pts_path"] for f in frames]
    return {
        "point_cloud": {"lidar_idx": layout.scene},
        "pts_paths": paths,
        "super_pts_paths": paths,
        "pts_instance_mask_paths": paths,
        "pts_semantic_mask_paths": paths,
        "source_pixels_paths": paths,
        "img_paths": [f["img_path"] for f in frames],
        "depth_paths": [f["depth_path"] for f in frames],
        "poses": [f["pose"] for f in frames],
        "frames": [f["frame"] for f in frames],
        "cam2img": _homogeneous(intrinsics).tolist(),
        "image_size": list(image_size),  # (W, H) of the depth grid
        "depth_scale": depth_scale,
        "axis_align_matrix": axis_alignment.tolist(),
        "scene_points_path": f"../scene/points/{layout.scene}.bin",
        "scene": layout.scene,
    }


def write_scene(storage: Storage, set_uri: str, layout: SceneLayout, annotation: SceneAnnotation) -> dict[str, Any]:
    """Write the reconstructed scene (mesh vertices, labels, mesh segments) used for MV targets and evaluation."""
    name = f"{layout.scene}.bin"
    mesh = annotation.mesh
    points = np.concatenate([mesh.vertices.astype(np.float64), mesh.colors.astype(np.float64)], axis=1)
    arrays = {
        "points": points.astype("<f4").tobytes(),
        "instance_mask": annotation.instance_ids.astype("<i8").tobytes(),
        "semantic_mask": annotation.semantic_ids.astype("<i8").tobytes(),
        "super_points": annotation.segments.astype("<i8").tobytes(),
    }
    for field, data in arrays.items():
        storage.write_bytes(join_uri(set_uri, field, name), data)
    storage.write_bytes(join_uri(set_uri, "axis_align_matrix", f"{layout.scene}.npy"), _npy_bytes(annotation.axis_alignment))
    return {
        "lidar_points": {"lidar_path": name, "num_pts_feats": 6},
        "pts_instance_mask_path": name,
        "pts_semantic_mask_path": name,
        "super_pts_path": name,
        "axis_align_matrix": annotation.axis_alignment.tolist(),
        "segs_path": layout.segments,
        "scene": layout.scene,
        "num_vertices": int(len(mesh.vertices)),
    }


def _homogeneous(intrinsics: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = intrinsics[:3, :3]
    return matrix


def write_infos(storage: Storage, set_uri: str, kind: str, split: str, records: list[dict[str, Any]], extra_meta: dict[str, Any]) -> str:
    """Publish an mmdet3d-v2 info pickle for one set and split; returns its URI."""
    labels = label_table()
    info = {
        "metainfo": {
            "dataset": f"scannet200_{kind}",
            "info_version": "1.1",
            "categories": dict(zip(labels.scannet200_names, labels.scannet200_ids)),
            **extra_meta,
        },
        "data_list": [dict(record, sample_idx=index) for index, record in enumerate(records)],
    }
    uri = join_uri(set_uri, INFO_FILE_NAMES[kind].format(split=split))
    storage.write_bytes(uri, pickle.dumps(info, protocol=4))
    return uri


def read_infos(storage: Storage, uri: str) -> dict[str, Any]:
    """Load an info pickle written by us or by ESAM's tools (only open files you trust: pickle runs code)."""
    return pickle.loads(storage.read_bytes(uri))
