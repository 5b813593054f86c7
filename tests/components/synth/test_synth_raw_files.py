"""The written raw files agree with each other the way real ScanNet files do: depth + pose + intrinsics land
on the mesh surface, pixel colours match the mesh colours, axisAlignment aligns the walls, annotations are
consistent."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from bifusion.components.labels import label_table
from bifusion.components.scannet_raw import decode_color, decode_matrix_txt, decode_split, encode_color_jpg
from bifusion.components.synth import scene_name, split_files
from decoded_raw_scene import DecodedRawScene, read, small_synth_config


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    share = np.clip(((points - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    return np.linalg.norm(points - (a + share[:, None] * ab), axis=-1)


def _point_triangle(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact distance (N,) from `points (N, 3)` to triangles (a, b, c each (N, 3)), and the barycentric
    weights (N, 3) of the point's projection onto the triangle plane, clipped into the triangle."""
    normal = np.cross(b - a, c - a)
    area = np.linalg.norm(normal, axis=-1)
    normal /= area[:, None]
    height = ((points - a) * normal).sum(-1)
    foot = points - height[:, None] * normal
    # Signed sub-triangle areas opposite each corner, over the full area: all >= 0 inside the triangle.
    weights = np.stack(
        [(np.cross(end - start, foot - start) * normal).sum(-1) for start, end in ((b, c), (c, a), (a, b))], axis=1
    ) / area[:, None]
    inside = (weights >= 0.0).all(axis=1)
    distance = np.where(inside, np.abs(height), np.inf)
    for start, end in ((a, b), (b, c), (c, a)):
        distance = np.minimum(distance, _segment_distance(points, start, end))
    weights = np.clip(weights, 0.0, None)
    return distance, weights / weights.sum(axis=1, keepdims=True)


class MeshSurface:
    """Nearest-triangle queries on a mesh: distance to the surface and the interpolated vertex colour there."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray):
        self.triangles = vertices.astype(np.float64)[faces]
        self.face_colors = colors.astype(np.float64)[faces]
        centroids = self.triangles.mean(axis=1)
        self.reach = float(np.linalg.norm(self.triangles - centroids[:, None], axis=-1).max())
        self.tree = cKDTree(centroids)

    def closest(self, points: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (N,) to the surface and colour (N, 3) there, exact for points closer than `within (N,)`:
        a triangle that close has its centroid within `reach + within`, and all those are examined whenever
        the 16 nearest centroids do not already give a triangle that close."""
        _, candidates = self.tree.query(points, k=16)
        distance, colors = self._best(np.repeat(np.arange(len(points)), 16), candidates.ravel(), points, len(points))
        far = np.nonzero(distance > within)[0]
        if len(far):
            lists = self.tree.query_ball_point(points[far], self.reach + within[far])
            point_ids = np.repeat(far, [len(found) for found in lists])
            face_ids = np.concatenate([np.asarray(found, dtype=np.int64) for found in lists])
            if len(face_ids):
                far_distance, far_colors = self._best(point_ids, face_ids, points, len(points))
                distance[far], colors[far] = far_distance[far], far_colors[far]
        return distance, colors

    def _best(
        self, point_ids: np.ndarray, face_ids: np.ndarray, points: np.ndarray, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per point, the distance and colour of the nearest of its candidate triangles (pairs of ids)."""
        triangles = self.triangles[face_ids]
        distance, weights = _point_triangle(points[point_ids], triangles[:, 0], triangles[:, 1], triangles[:, 2])
        order = np.lexsort((distance, point_ids))
        first = order[np.r_[0, np.nonzero(np.diff(point_ids[order]))[0] + 1]]
        best_distance = np.full(count, np.inf)
        best_colors = np.zeros((count, 3))
        best_distance[point_ids[first]] = distance[first]
        best_colors[point_ids[first]] = (weights[first, :, None] * self.face_colors[face_ids[first]]).sum(axis=1)
        return best_distance, best_colors


def test_scene_files_are_exactly_the_raw_scannet_layout(decoded_scene: DecodedRawScene) -> None:
    name, layout = decoded_scene.scene.name, decoded_scene.layout
    root = layout.root + "/"
    expected = {layout.mesh, layout.aggregation, layout.segments, layout.meta}
    expected |= {layout.intrinsic_depth, layout.intrinsic_color}
    assert decoded_scene.frame_numbers() == [0, 20, 40, 60]  # ScanNet's 2D export keeps every 20th frame
    for number in decoded_scene.frame_numbers():
        expected |= {layout.color(number), layout.depth(number), layout.pose(number)}
    assert {root + relative for relative in decoded_scene.files} == expected
    assert f"scans/{name}/{name}_vh_clean_2.ply" in decoded_scene.files
    assert f"2D/{name}/depth/60.png" in decoded_scene.files


def test_intrinsics_are_registered_scannet_pinhole(decoded_scene: DecodedRawScene) -> None:
    layout = decoded_scene.layout
    depth_k = decode_matrix_txt(read(layout.intrinsic_depth), layout.intrinsic_depth)
    color_k = decode_matrix_txt(read(layout.intrinsic_color), layout.intrinsic_color)
    focal = 577.870605 * 160 / 640
    expected = np.array([[focal, 0, 79.5, 0], [0, focal, 59.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(depth_k, expected, rtol=1e-8)
    np.testing.assert_array_equal(color_k, depth_k)
    depth, rgb, _, _ = decoded_scene.frame(0)
    assert depth.shape == (120, 160) and rgb.shape == (120, 160, 3)


def test_every_valid_depth_pixel_lies_on_the_mesh_with_the_mesh_colour(decoded_scene: DecodedRawScene) -> None:
    mesh = decoded_scene.mesh
    surface = MeshSurface(mesh.vertices, mesh.faces, mesh.colors)
    for number in decoded_scene.frame_numbers():
        depth, rgb, pose, intrinsics = decoded_scene.frame(number)
        rows, columns = np.nonzero(depth)
        z = depth[rows, columns] / 1000.0
        ray_x = (columns - intrinsics[0, 2]) / intrinsics[0, 0]
        ray_y = (rows - intrinsics[1, 2]) / intrinsics[1, 1]
        rays = np.stack([ray_x, ray_y, np.ones_like(z)], axis=1)
        points_world = (rays * z[:, None]) @ pose[:3, :3].T + pose[:3, 3]
        # Depth is rounded to whole millimetres along z: the point may move 0.5 mm * |ray| along its ray.
        rounding = 0.0005 * np.linalg.norm(rays, axis=1)
        tolerance = rounding + 1e-5
        distance, mesh_rgb = surface.closest(points_world, within=tolerance)
        off = distance > tolerance
        worst_mm = (distance - tolerance).max() * 1000
        assert not off.any(), f"frame {number}: {off.sum()} points off the mesh, worst {worst_mm:.3f} mm too far"

        # Compare after the same JPEG encoding, so compression artefacts cancel and only real differences remain.
        expected = rgb.copy()
        expected[rows, columns] = np.clip(np.rint(mesh_rgb), 0, 255).astype(np.uint8)
        expected_jpg = encode_color_jpg(expected, decoded_scene.config.jpeg_quality)
        expected = decode_color(expected_jpg, "expected").astype(np.float64)
        error = np.abs(expected - rgb)[rows, columns].max(axis=1)
        assert error.mean() < 1.5, f"frame {number}: mean colour error {error.mean():.2f}"
        assert np.percentile(error, 99) <= 8, f"frame {number}: 99th percentile colour error {np.percentile(error, 99)}"


def test_every_frame_mostly_sees_the_room(decoded_scene: DecodedRawScene) -> None:
    room = decoded_scene.scene.room
    diagonal_mm = 1000 * np.linalg.norm([*room.size, room.wall_height])
    for number in decoded_scene.frame_numbers():
        depth, _, _, _ = decoded_scene.frame(number)
        assert (depth > 0).mean() > 0.5
        # A handheld scan from inside the room: nothing closer than the furniture clearance or beyond the room.
        assert 300 < depth[depth > 0].min() and depth.max() < diagonal_mm


def test_axis_alignment_makes_walls_axis_parallel(decoded_scene: DecodedRawScene) -> None:
    vertices = decoded_scene.mesh.vertices.astype(np.float64)
    aligned = vertices @ decoded_scene.axis_alignment[:3, :3].T + decoded_scene.axis_alignment[:3, 3]
    wall_segments = [g.segments for g in decoded_scene.groups if g.label == "wall"]
    assert len(wall_segments) == 4
    half_x, half_y = (size / 2 for size in decoded_scene.scene.room.size)
    planes = []
    for segments in wall_segments:
        wall = aligned[np.isin(decoded_scene.seg_indices, segments)]
        spread = wall.max(axis=0) - wall.min(axis=0)
        axis = int(np.argmin(spread[:2]))
        assert spread[axis] < 1e-5  # a wall is a plane x = const or y = const
        planes.append((axis, float(wall[:, axis].mean())))
        raw = vertices[np.isin(decoded_scene.seg_indices, segments)]
        assert (raw.max(axis=0) - raw.min(axis=0))[:2].min() > 0.1  # ... but not before alignment
    expected = sorted([(0, -half_x), (0, half_x), (1, -half_y), (1, half_y)])
    assert [axis for axis, _ in sorted(planes)] == [axis for axis, _ in expected]
    np.testing.assert_allclose([offset for _, offset in sorted(planes)], [offset for _, offset in expected], atol=1e-5)
    # The mesh's bounding box is tight to the wall planes and the floor, walls wall_height_m tall.
    np.testing.assert_allclose(aligned.min(axis=0), [-half_x, -half_y, 0.0], atol=1e-5)
    np.testing.assert_allclose(aligned.max(axis=0), [half_x, half_y, decoded_scene.config.wall_height_m], atol=1e-5)


def test_annotations_are_consistent(decoded_scene: DecodedRawScene) -> None:
    groups, seg_indices = decoded_scene.groups, decoded_scene.seg_indices
    assert [g.object_id for g in groups] == list(range(len(groups)))
    assert [g.label for g in groups] == [o.label for o in decoded_scene.scene.objects]
    assert sum(g.label == "floor" for g in groups) == 1
    table = label_table()
    assert all(table.scannet200_id(g.label) != 0 for g in groups)
    grouped = np.concatenate([g.segments for g in groups])
    assert len(grouped) == len(set(grouped.tolist()))  # no segment in two objects
    assert set(grouped.tolist()) == set(seg_indices.tolist())  # every segment exists and belongs to an object
    assert all(len(g.segments) > 0 for g in groups)
    # Patches of about segment_size_m: the 3.5-4.5 m floor is cut into roughly (size / 0.4 m)^2 segments.
    floor = next(g for g in groups if g.label == "floor")
    width, depth = decoded_scene.scene.room.size
    assert len(floor.segments) == round(width / 0.4) * round(depth / 0.4)


def test_mesh_grid_spacing_respects_the_config(decoded_scene: DecodedRawScene) -> None:
    triangles = decoded_scene.mesh.vertices.astype(np.float64)[decoded_scene.mesh.faces]
    edges = np.sort(np.linalg.norm(triangles - np.roll(triangles, 1, axis=1), axis=-1), axis=1)
    # Grid triangles: two legs along the face axes (the spacing) and a diagonal.
    assert edges[:, 1].max() <= decoded_scene.config.mesh_vertex_spacing_m + 1e-6
    assert decoded_scene.mesh.colors.std() > 10  # coloured, not flat


def test_split_files_put_the_last_scenes_in_val() -> None:
    config = small_synth_config("synth.num_scenes=5", "synth.num_val_scenes=2")
    splits = split_files(config)
    assert decode_split(splits["scannetv2_train.txt"]) == [scene_name(0), scene_name(1), scene_name(2)]
    assert decode_split(splits["scannetv2_val.txt"]) == ["scene9003_00", "scene9004_00"]
