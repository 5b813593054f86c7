"""Per-vertex ground truth of an annotated ScanNet mesh, and its transfer to frame points.

Follows ESAM/mmdet3d's export: instance id = objectId + 1 (0 = unannotated), semantic id = the raw
ScanNet id of the object's label (the tsv `id` column, from which ScanNet200 and ScanNet20 are mapped).
Points take the labels of their nearest mesh vertex; a point labelled with an instance but lying
outside that instance's box (plus a margin) loses the label, as in ESAM's SV/MV preparation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from bifusion.components.labels import LabelTable
from bifusion.components.scannet_raw import (
    Mesh,
    RawDataError,
    SceneLayout,
    decode_aggregation,
    decode_axis_alignment,
    decode_mesh_ply,
    decode_segments,
)
from bifusion.components.storage import Storage


@dataclass
class SceneAnnotation:
    """An annotated scene. Arrays are per mesh vertex `(V,)`; boxes are axis-aligned in the aligned frame."""

    mesh: Mesh
    axis_alignment: np.ndarray  # (4, 4): aligned = axis_alignment @ raw
    instance_ids: np.ndarray  # (V,) int64, objectId + 1, 0 = unannotated
    semantic_ids: np.ndarray  # (V,) int64 raw ScanNet ids, 0 = unannotated
    segments: np.ndarray  # (V,) int64 mesh over-segmentation
    box_min: dict[int, np.ndarray]  # instance id -> (3,) in the aligned frame
    box_max: dict[int, np.ndarray]
    vertex_tree: cKDTree  # over aligned vertices

    def align(self, points_world: np.ndarray) -> np.ndarray:
        """points_world (N, 3) in the raw scan frame -> (N, 3) in the axis-aligned frame."""
        return points_world @ self.axis_alignment[:3, :3].T + self.axis_alignment[:3, 3]


def load_scene_annotation(storage: Storage, layout: SceneLayout, labels: LabelTable) -> SceneAnnotation:
    """Read mesh, aggregation, segments and alignment; malformed files raise RawDataError naming the field."""
    mesh = decode_mesh_ply(storage.read_bytes(layout.mesh), layout.mesh)
    segments = decode_segments(storage.read_bytes(layout.segments), layout.segments, len(mesh.vertices))
    groups = decode_aggregation(storage.read_bytes(layout.aggregation), layout.aggregation)
    axis_alignment = decode_axis_alignment(storage.read_bytes(layout.meta), layout.meta)

    vertices_of_segment: dict[int, np.ndarray] = {}
    order = np.argsort(segments, kind="stable")
    unique, starts = np.unique(segments[order], return_index=True)
    for seg, chunk in zip(unique, np.split(order, starts[1:])):
        vertices_of_segment[int(seg)] = chunk

    instance_ids = np.zeros(len(mesh.vertices), dtype=np.int64)
    semantic_ids = np.zeros(len(mesh.vertices), dtype=np.int64)
    for group in groups:
        unknown = [s for s in group.segments if s not in vertices_of_segment]
        if unknown:
            raise RawDataError(
                f"{layout.aggregation}: segGroups objectId {group.object_id} lists segment {unknown[0]} "
                f"that does not occur in {layout.segments}"
            )
        members = np.concatenate([vertices_of_segment[s] for s in group.segments]) if group.segments else []
        instance_ids[members] = group.object_id + 1
        semantic_ids[members] = labels.scannet200_id(group.label)

    aligned = mesh.vertices.astype(np.float64) @ axis_alignment[:3, :3].T + axis_alignment[:3, 3]
    box_min, box_max = {}, {}
    for instance in np.unique(instance_ids[instance_ids > 0]):
        members = aligned[instance_ids == instance]
        box_min[int(instance)] = members.min(axis=0)
        box_max[int(instance)] = members.max(axis=0)
    return SceneAnnotation(mesh, axis_alignment, instance_ids, semantic_ids, segments, box_min, box_max, cKDTree(aligned))


def transfer_labels(annotation: SceneAnnotation, points_world: np.ndarray, box_margin_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Instance and semantic ids `(N,)` for points_world (N, 3) (raw scan frame) by nearest mesh vertex."""
    aligned = annotation.align(points_world)
    _, nearest = annotation.vertex_tree.query(aligned, k=1, workers=1)
    instance = annotation.instance_ids[nearest].copy()
    semantic = annotation.semantic_ids[nearest].copy()
    for inst in np.unique(instance[instance > 0]):
        members = np.nonzero(instance == inst)[0]
        low = annotation.box_min[int(inst)] - box_margin_m
        high = annotation.box_max[int(inst)] + box_margin_m
        outside = ((aligned[members] < low) | (aligned[members] > high)).any(axis=1)
        instance[members[outside]] = 0
        semantic[members[outside]] = 0
    return instance, semantic
