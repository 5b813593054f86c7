"""The scene mesh and its ScanNet annotations: triangulated box faces, vertex colours, patch segments and
one segGroup per object.

Each visible box face becomes a planar grid of vertices (spacing <= the object's mesh spacing), so the mesh
surface is exactly the surface the renderer hits. Faces keep their own vertices (no sharing along box edges),
which makes the over-segmentation simple: a face is cut into patches of about `segment_size_m`, so a
segment never spans two faces or two objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bifusion.components.scannet_raw import Mesh, SegGroup
from bifusion.components.synth.geometry import Box, SceneObject, transform_points
from bifusion.components.synth.room_layout import Room
from bifusion.components.synth.textures import lambert_shading

BOUNDARY_TOLERANCE_M = 1e-6


@dataclass
class AnnotatedMesh:
    """`mesh` in the raw world frame, `seg_indices (V,)` per-vertex segment ids, `groups` one per object
    (objectId = its index in the scene's object list)."""

    mesh: Mesh
    seg_indices: np.ndarray
    groups: list[SegGroup]


@dataclass
class _FaceGrid:
    vertices: np.ndarray  # (V, 3) room frame
    colors: np.ndarray  # (V, 3) uint8
    triangles: np.ndarray  # (T, 3) indices into this grid's vertices
    patches: np.ndarray  # (V,) patch ids in [0, patch_count)
    patch_count: int


def _face_in_room(box: Box, axis: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and outward unit normal (3,) of a box face, in the room frame."""
    offset = np.zeros(3)
    offset[axis] = sign * box.half_size[axis]
    normal = np.zeros(3)
    normal[axis] = sign
    return box.rotation @ offset + np.asarray(box.center), box.rotation @ normal


def _is_hidden(room: Room, center: np.ndarray, normal: np.ndarray) -> bool:
    """Whether no camera inside the room can see a face (room frame `center`, `normal`): it lies outside the
    room volume (the outer faces of the floor and wall slabs), or on the floor or a wall facing out of the
    room (under an object, behind a board)."""
    half = np.array(room.size) / 2.0
    if (np.abs(center[:2]) > half + BOUNDARY_TOLERANCE_M).any() or center[2] < -BOUNDARY_TOLERANCE_M:
        return True
    on_floor = abs(center[2]) <= BOUNDARY_TOLERANCE_M and normal[2] < -0.5
    on_wall = any(
        abs(abs(center[k]) - half[k]) <= BOUNDARY_TOLERANCE_M and normal[k] * center[k] > 0.5 for k in range(2)
    )
    return bool(on_floor or on_wall)


def _grid_line(half: float, spacing: float, segment_size: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Vertex coordinates along one face side [-half, half] at <= `spacing`, each vertex's patch index, and the
    patch count (patches of about `segment_size`)."""
    length = 2.0 * half
    coordinates = np.linspace(-half, half, max(1, math.ceil(length / spacing - 1e-9)) + 1)
    patch_count = max(1, round(length / segment_size))
    patches = np.minimum(((coordinates + half) / length * patch_count).astype(np.int64), patch_count - 1)
    return coordinates, patches, patch_count


def _face_grid(box: Box, axis: int, sign: float, spacing: float, segment_size: float) -> _FaceGrid:
    """Triangulated grid of one box face (outward normal `sign` * box axis `axis`) in the room frame."""
    half = box.half_size
    u, v = [k for k in range(3) if k != axis]
    along_u, patches_u, patch_count_u = _grid_line(half[u], spacing, segment_size)
    along_v, patches_v, patch_count_v = _grid_line(half[v], spacing, segment_size)
    local = np.empty((len(along_u) * len(along_v), 3))
    local[:, axis] = sign * half[axis]
    local[:, u] = np.repeat(along_u, len(along_v))
    local[:, v] = np.tile(along_v, len(along_u))

    # Vertex (i, j) has index i * len(along_v) + j; each grid cell gives two triangles.
    cell_u, cell_v = np.meshgrid(np.arange(len(along_u) - 1), np.arange(len(along_v) - 1), indexing="ij")
    v00 = (cell_u * len(along_v) + cell_v).ravel()
    v10, v01, v11 = v00 + len(along_v), v00 + 1, v00 + len(along_v) + 1
    triangles = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    # (u, v, axis) is a right-handed order except for axis = y; flip so triangle normals point out of the box.
    if sign * (-1.0 if axis == 1 else 1.0) < 0:
        triangles = triangles[:, ::-1]

    _, normal = _face_in_room(box, axis, sign)
    shading = lambert_shading(normal[None, :])[0]
    rgb = box.texture.colors(local + half, np.full(len(local), axis)) * shading
    return _FaceGrid(
        vertices=local @ box.rotation.T + np.asarray(box.center),
        colors=np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
        triangles=triangles,
        patches=np.repeat(patches_u, len(along_v)) * patch_count_v + np.tile(patches_v, len(along_u)),
        patch_count=patch_count_u * patch_count_v,
    )


def build_annotated_mesh(
    objects: list[SceneObject], room: Room, room_to_world: np.ndarray, vertex_spacing_m: float, segment_size_m: float
) -> AnnotatedMesh:
    """Mesh every visible box face of `objects` (room frame) and move the result to the raw world frame with
    `room_to_world (4, 4)`. Each object is meshed at min(`vertex_spacing_m`, its own spacing)."""
    if vertex_spacing_m <= 0 or segment_size_m <= 0:
        raise ValueError(
            f"synth.mesh_vertex_spacing_m and synth.segment_size_m must be positive, got {vertex_spacing_m}"
            f" and {segment_size_m}"
        )
    vertices, colors, faces, segments, owners = [], [], [], [], []
    vertex_count = segment_count = 0
    for object_id, scene_object in enumerate(objects):
        spacing = min(vertex_spacing_m, scene_object.vertex_spacing_m)
        for box in scene_object.boxes:
            for axis in range(3):
                for sign in (-1.0, 1.0):
                    if _is_hidden(room, *_face_in_room(box, axis, sign)):
                        continue
                    grid = _face_grid(box, axis, sign, spacing, segment_size_m)
                    vertices.append(grid.vertices)
                    colors.append(grid.colors)
                    faces.append(grid.triangles + vertex_count)
                    segments.append(grid.patches + segment_count)
                    owners.append(np.full(len(grid.vertices), object_id))
                    vertex_count += len(grid.vertices)
                    segment_count += grid.patch_count
    # Renumber so segment ids are consecutive even where a patch received no vertex.
    _, seg_indices = np.unique(np.concatenate(segments), return_inverse=True)
    owner = np.concatenate(owners)
    groups = [
        SegGroup(object_id, scene_object.label, tuple(int(s) for s in np.unique(seg_indices[owner == object_id])))
        for object_id, scene_object in enumerate(objects)
    ]
    mesh = Mesh(
        vertices=transform_points(room_to_world, np.concatenate(vertices)).astype(np.float32),
        colors=np.concatenate(colors),
        faces=np.concatenate(faces).astype(np.int32),
    )
    return AnnotatedMesh(mesh, seg_indices.astype(np.int64), groups)
