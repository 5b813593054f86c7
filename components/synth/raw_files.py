"""The raw ScanNet files of a synthetic scene and the split lists, as (relative path, bytes) pairs.

Paths and encodings come from `scannet_raw`, the module the prep stage reads with, so synthetic data is
laid out exactly like a ScanNet download plus its 2D export.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from bifusion.components.config_schema import SynthConfig
from bifusion.components.scannet_raw import (
    SceneLayout,
    encode_aggregation,
    encode_color_jpg,
    encode_depth_png,
    encode_matrix_txt,
    encode_mesh_ply,
    encode_meta,
    encode_segments,
    encode_split,
)
from bifusion.components.synth.mesh_builder import build_annotated_mesh
from bifusion.components.synth.raycast import intrinsic_matrix, render_frame
from bifusion.components.synth.scene import SyntheticScene, scene_name

def scene_files(scene: SyntheticScene, config: SynthConfig) -> Iterator[tuple[str, bytes]]:
    """Every raw file of `scene` as (path relative to the raw root, bytes): mesh and annotations first, then
    the intrinsics, then colour, depth and pose of each frame. Frames are rendered one at a time as the
    iterator advances, so memory stays bounded by one frame."""
    layout = SceneLayout("", scene.name)  # an empty root gives paths relative to the raw root
    annotated = build_annotated_mesh(
        list(scene.objects), scene.room, scene.room_to_world, config.mesh_vertex_spacing_m, config.segment_size_m
    )
    yield layout.mesh, encode_mesh_ply(annotated.mesh)
    yield layout.aggregation, encode_aggregation(scene.name, annotated.groups)
    yield layout.segments, encode_segments(scene.name, annotated.seg_indices)
    yield layout.meta, encode_meta(scene.axis_alignment)

    # Colour and depth are registered: one camera, one resolution, so both files hold the same K.
    intrinsics = intrinsic_matrix(config.focal_length_px, config.width, config.height)
    intrinsics_4x4 = np.eye(4)
    intrinsics_4x4[:3, :3] = intrinsics
    yield layout.intrinsic_depth, encode_matrix_txt(intrinsics_4x4)
    yield layout.intrinsic_color, encode_matrix_txt(intrinsics_4x4)

    boxes = [box for scene_object in scene.objects for box in scene_object.boxes]
    for index, camera_to_room in enumerate(scene.camera.poses(config.frames_per_scene)):
        frame = render_frame(boxes, camera_to_room, intrinsics, config.width, config.height)
        number = index * config.export_frame_step
        yield layout.color(number), encode_color_jpg(frame.rgb, config.jpeg_quality)
        yield layout.depth(number), encode_depth_png(frame.depth_mm)
        yield layout.pose(number), encode_matrix_txt(scene.room_to_world @ camera_to_room)


def split_files(config: SynthConfig) -> dict[str, bytes]:
    """ScanNet split lists of the synthetic set: the last `num_val_scenes` scenes are val, the rest train."""
    if not 0 <= config.num_val_scenes <= config.num_scenes:
        raise ValueError(
            f"synth.num_val_scenes must be in [0, num_scenes={config.num_scenes}], got {config.num_val_scenes}"
        )
    names = [scene_name(index) for index in range(config.num_scenes)]
    boundary = config.num_scenes - config.num_val_scenes
    return {"scannetv2_train.txt": encode_split(names[:boundary]), "scannetv2_val.txt": encode_split(names[boundary:])}
