"""synth -> prep round trip: prepared points project back onto their source pixel, depth and object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bifusion.components.config_schema import load_config
from bifusion.components.labels import label_table
from bifusion.components.synth import generate_scene
from bifusion.model.geometry import project_points


def read_bin(path: Path, dtype: str, columns: int = 1) -> np.ndarray:
    data = np.fromfile(path, dtype=dtype)
    return data.reshape(-1, columns) if columns > 1 else data


def sv_arrays(sv_uri: str, record: dict) -> dict[str, np.ndarray]:
    root = Path(sv_uri)
    name = record["lidar_points"]["lidar_path"]
    return {
        "points": read_bin(root / "points" / name, "<f4", 6),
        "instance": read_bin(root / "instance_mask" / name, "<i8"),
        "semantic": read_bin(root / "semantic_mask" / name, "<i8"),
        "superpoints": read_bin(root / "super_points" / name, "<i8"),
        "pixels": read_bin(root / "source_pixels" / name, "<i4", 2),
    }


def test_sv_points_project_onto_their_source_pixel_with_their_depth(tiny_prepared, infos) -> None:
    records = infos(tiny_prepared.sv_uri, "sv", "train") + infos(tiny_prepared.sv_uri, "sv", "val")
    assert len(records) == 2 * 3  # two scenes x frames 0, 100, 200
    for record in records:
        arrays = sv_arrays(tiny_prepared.sv_uri, record)
        assert arrays["points"].shape == (2000, 6)
        intrinsics = np.asarray(record["cam2img"])[:3, :3]
        # SV points are centred: the centred pose takes them back to the camera exactly.
        uv, z = project_points(arrays["points"][:, :3].astype(np.float64), intrinsics, np.asarray(record["pose"]))
        np.testing.assert_allclose(uv, arrays["pixels"], atol=2e-3)  # float32 storage of ~metre coordinates
        depth = np.asarray(Image.open(record["depth_path"])).astype(np.float64) / record["depth_scale"]
        u, v = arrays["pixels"][:, 0], arrays["pixels"][:, 1]
        np.testing.assert_allclose(z, depth[v, u], atol=1e-5)
        colour = np.asarray(Image.open(record["img_path"]))
        np.testing.assert_array_equal(arrays["points"][:, 3:], colour[v, u])
        # The centring offset folded into the pose is the frame mean.
        np.testing.assert_allclose(arrays["points"][:, :3].mean(axis=0), 0.0, atol=1e-3)


def surface_object(scene, points_aligned: np.ndarray, tolerance: float = 2e-3) -> np.ndarray:
    """Index of the synthetic object whose box surface each point lies on (-1 if none), from the generator's
    own geometry: an independent check of the label transfer."""
    owner = np.full(len(points_aligned), -1)
    for index, scene_object in enumerate(scene.objects):
        for box in scene_object.boxes:
            local = (points_aligned - np.asarray(box.center)) @ box.rotation
            half = box.half_size
            inside = (np.abs(local) <= half + tolerance).all(axis=1)
            on_face = (np.abs(np.abs(local) - half) <= tolerance).any(axis=1)
            owner[inside & on_face & (owner < 0)] = index
    return owner


def test_labels_match_the_object_each_point_lies_on(tiny_prepared, infos) -> None:
    config = load_config(["base"], ["synth.num_scenes=2", "synth.num_val_scenes=1", "synth.objects_per_room=[4, 5]"])
    labels = label_table()
    checked = agree = 0
    for record in infos(tiny_prepared.sv_uri, "sv", "train") + infos(tiny_prepared.sv_uri, "sv", "val"):
        scene = generate_scene(config.synth, int(record["scene"][5:9]) - 9000)
        arrays = sv_arrays(tiny_prepared.sv_uri, record)
        world = arrays["points"][:, :3] + np.asarray(record["centre_offset"])
        alignment = np.asarray(record["axis_align_matrix"])
        aligned = world @ alignment[:3, :3].T + alignment[:3, 3]
        owner = surface_object(scene, aligned)
        known = owner >= 0
        checked += known.sum()
        same = known & (arrays["instance"] == owner + 1)
        agree += same.sum()
        expected_semantic = np.array([labels.scannet200_id(scene.objects[i].label) for i in owner[same]])
        np.testing.assert_array_equal(arrays["semantic"][same], expected_semantic)
    assert checked > 0.95 * 6 * 2000
    assert agree / checked > 0.98  # only points at contact edges (box on floor) may take the neighbour's label


def test_superpoints_rarely_cross_objects(tiny_prepared, infos) -> None:
    impure = total = 0
    for record in infos(tiny_prepared.sv_uri, "sv", "train"):
        arrays = sv_arrays(tiny_prepared.sv_uri, record)
        for superpoint in np.unique(arrays["superpoints"]):
            members = arrays["instance"][arrays["superpoints"] == superpoint]
            impure += len(members) - np.bincount(members).max()
            total += len(members)
        assert arrays["superpoints"].max() + 1 == len(np.unique(arrays["superpoints"]))  # contiguous ids
    assert impure / total < 0.08  # 160x120 frames: boundary pixels are a large share


def test_mv_points_stay_in_the_world_frame(tiny_prepared, infos) -> None:
    for record in infos(tiny_prepared.mv_uri, "mv", "train") + infos(tiny_prepared.mv_uri, "mv", "val"):
        assert record["frames"] == [0, 40, 80, 120, 160, 200]
        intrinsics = np.asarray(record["cam2img"])[:3, :3]
        for path, pose in zip(record["pts_paths"], record["poses"]):
            points = read_bin(Path(tiny_prepared.mv_uri) / "points" / path, "<f4", 6)
            pixels = read_bin(Path(tiny_prepared.mv_uri) / "source_pixels" / path, "<i4", 2)
            uv, z = project_points(points[:, :3].astype(np.float64), intrinsics, np.asarray(pose))
            np.testing.assert_allclose(uv, pixels, atol=5e-3)
            assert (z > 0).all()


def test_mv_instance_ids_are_consistent_across_frames(tiny_prepared, infos) -> None:
    record = infos(tiny_prepared.mv_uri, "mv", "train")[0]
    scene_instances = np.fromfile(Path(tiny_prepared.scene_uri) / "instance_mask" / f"{record['scene']}.bin", "<i8")
    seen = set()
    for path in record["pts_paths"]:
        seen |= set(np.fromfile(Path(tiny_prepared.mv_uri) / "instance_mask" / path, "<i8").tolist())
    assert seen - {0} <= set(scene_instances.tolist())
    assert len(seen - {0}) >= 4


def test_scene_set_holds_the_annotated_mesh(tiny_prepared, infos) -> None:
    (record,) = infos(tiny_prepared.scene_uri, "scene", "val")
    root = Path(tiny_prepared.scene_uri)
    points = read_bin(root / "points" / f"{record['scene']}.bin", "<f4", 6)
    instances = read_bin(root / "instance_mask" / f"{record['scene']}.bin", "<i8")
    assert points.shape == (record["num_vertices"], 6)
    assert instances.shape == (record["num_vertices"],)
    assert instances.min() >= 1  # every synthetic surface belongs to an annotated object (walls, floor included)


def test_info_records_carry_esam_keys(tiny_prepared, infos) -> None:
    sv = infos(tiny_prepared.sv_uri, "sv", "train")[0]
    for key in ("lidar_points", "pts_instance_mask_path", "pts_semantic_mask_path", "super_pts_path", "img_path", "pose", "axis_align_matrix"):
        assert key in sv
    mv = infos(tiny_prepared.mv_uri, "mv", "train")[0]
    for key in ("pts_paths", "super_pts_paths", "img_paths", "poses", "pts_instance_mask_paths", "pts_semantic_mask_paths", "axis_align_matrix"):
        assert key in mv
    assert tiny_prepared.summary["frames_skipped"] == 0
    assert tiny_prepared.summary["sv_samples"] == 6
