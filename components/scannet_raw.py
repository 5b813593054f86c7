"""The raw ScanNet layout: where each file lives, and how each format is encoded and decoded.

One module for both directions so the demo generator writes exactly what the data-prep stage (and any
real ScanNet download) reads. Codecs work on bytes; callers move bytes through `Storage`, so the same
code serves local folders and S3.

Layout under a raw root (frames follow Online3D/ESAM's 2D export, configurable via `prep.frames_dir`):

    scans/<scene>/<scene>_vh_clean_2.ply                  mesh: vertices xyz + rgb(a), faces
    scans/<scene>/<scene>.aggregation.json                instances: segGroups (objectId, label, segments)
    scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json   per-vertex over-segmentation ids (segIndices)
    scans/<scene>/<scene>.txt                             "axisAlignment = 16 numbers" (row-major 4x4)
    2D/<scene>/color/<N>.jpg, depth/<N>.png (uint16 mm), pose/<N>.txt (camera-to-world 4x4)
    2D/<scene>/intrinsic/intrinsic_depth.txt, intrinsic_color.txt (4x4)
    scannetv2_train.txt, scannetv2_val.txt                scene names, one per line
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bifusion.components.storage import join_uri


class RawDataError(ValueError):
    """A raw input file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class SceneLayout:
    """URIs of one scene's raw files."""

    root: str
    scene: str
    frames_dir: str = "2D/{scene}"

    @property
    def scan_dir(self) -> str:
        return join_uri(self.root, "scans", self.scene)

    @property
    def frame_dir(self) -> str:
        return join_uri(self.root, self.frames_dir.format(scene=self.scene))

    @property
    def mesh(self) -> str:
        return join_uri(self.scan_dir, f"{self.scene}_vh_clean_2.ply")

    @property
    def aggregation(self) -> str:
        return join_uri(self.scan_dir, f"{self.scene}.aggregation.json")

    @property
    def segments(self) -> str:
        return join_uri(self.scan_dir, f"{self.scene}_vh_clean_2.0.010000.segs.json")

    @property
    def meta(self) -> str:
        return join_uri(self.scan_dir, f"{self.scene}.txt")

    def color(self, frame: int) -> str:
        return join_uri(self.frame_dir, "color", f"{frame}.jpg")

    def depth(self, frame: int) -> str:
        return join_uri(self.frame_dir, "depth", f"{frame}.png")

    def pose(self, frame: int) -> str:
        return join_uri(self.frame_dir, "pose", f"{frame}.txt")

    @property
    def intrinsic_depth(self) -> str:
        return join_uri(self.frame_dir, "intrinsic", "intrinsic_depth.txt")

    @property
    def intrinsic_color(self) -> str:
        return join_uri(self.frame_dir, "intrinsic", "intrinsic_color.txt")


def split_file_uri(root: str, name: str) -> str:
    return join_uri(root, name)


# ----------------------------------------------------------------------------------------------- mesh


@dataclass
class Mesh:
    """A ScanNet mesh: `vertices (V, 3)` float32 in the scan's (not axis-aligned) world frame,
    `colors (V, 3)` uint8, `faces (F, 3)` int32 vertex indices."""

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray


_PLY_VERTEX_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
)
_PLY_FACE_DTYPE = np.dtype([("count", "u1"), ("vertex_indices", "<i4", (3,))])


def encode_mesh_ply(mesh: Mesh) -> bytes:
    """Binary little-endian PLY with the property names ScanNet uses (x y z red green blue alpha).

    Written from numpy buffers directly: a per-row writer takes seconds for ScanNet-sized meshes.
    """
    vertex = np.empty(len(mesh.vertices), dtype=_PLY_VERTEX_DTYPE)
    vertex["x"], vertex["y"], vertex["z"] = mesh.vertices.astype(np.float32).T
    vertex["red"], vertex["green"], vertex["blue"] = mesh.colors.astype(np.uint8).T
    vertex["alpha"] = 255
    face = np.empty(len(mesh.faces), dtype=_PLY_FACE_DTYPE)
    face["count"] = 3
    face["vertex_indices"] = mesh.faces.astype(np.int32)
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", f"element vertex {len(vertex)}",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
        f"element face {len(face)}", "property list uchar int vertex_indices", "end_header",
    ]) + "\n"
    return header.encode("ascii") + vertex.tobytes() + face.tobytes()


def decode_mesh_ply(data: bytes, name: str) -> Mesh:
    """Read a ScanNet mesh (any PLY encoding plyfile understands); triangle faces are read in one pass."""
    import tempfile

    from plyfile import PlyData

    # plyfile's fast path for fixed-length face lists (`known_list_len`) needs a real file to map.
    with tempfile.NamedTemporaryFile(suffix=".ply") as handle:
        handle.write(data)
        handle.flush()
        try:
            ply = PlyData.read(handle.name, known_list_len={"face": {"vertex_indices": 3}})
            elements = {element.name: element.data for element in ply.elements}
        except Exception:
            try:
                ply = PlyData.read(handle.name)
                elements = {element.name: element.data for element in ply.elements}
            except Exception as exc:
                raise RawDataError(f"{name}: not a readable PLY file ({exc})") from None
    if "vertex" not in elements:
        raise RawDataError(f"{name}: no 'vertex' element")
    vertex = elements["vertex"]
    for field in ("x", "y", "z", "red", "green", "blue"):
        if field not in vertex.dtype.names:
            raise RawDataError(f"{name}: vertex element lacks property '{field}'")
    vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    if not np.isfinite(vertices).all():
        raise RawDataError(f"{name}: vertex coordinates contain NaN or inf")
    colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    faces = np.zeros((0, 3), dtype=np.int32)
    if "face" in elements:
        face = elements["face"]
        if "vertex_indices" not in face.dtype.names:
            raise RawDataError(f"{name}: face element lacks property 'vertex_indices'")
        if len(face):
            indices = face["vertex_indices"]
            if indices.dtype == object:
                if any(len(f) != 3 for f in indices):
                    raise RawDataError(f"{name}: face 'vertex_indices' must be triangles")
                indices = np.stack([np.asarray(f) for f in indices])
            faces = np.asarray(indices, dtype=np.int32).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise RawDataError(f"{name}: face 'vertex_indices' refer to vertices outside 0..{len(vertices) - 1}")
    return Mesh(vertices, colors, faces)


# ---------------------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class SegGroup:
    """One annotated object: ScanNet objectId (0-based), raw category label, mesh segment ids."""

    object_id: int
    label: str
    segments: tuple[int, ...]


def encode_aggregation(scene: str, groups: list[SegGroup]) -> bytes:
    payload = {
        "sceneId": f"scannet.{scene}",
        "appId": "bifusion.synth",
        "segGroups": [
            {"id": g.object_id, "objectId": g.object_id, "segments": list(g.segments), "label": g.label}
            for g in groups
        ],
        "segmentsFile": f"scannet.{scene}_vh_clean_2.0.010000.segs.json",
    }
    return json.dumps(payload).encode()


def _load_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RawDataError(f"{name}: not valid JSON ({exc})") from None


def decode_aggregation(data: bytes, name: str) -> list[SegGroup]:
    payload = _load_json(data, name)
    if not isinstance(payload, dict) or not isinstance(payload.get("segGroups"), list):
        raise RawDataError(f"{name}: field 'segGroups' missing or not a list")
    groups = []
    for index, group in enumerate(payload["segGroups"]):
        where = f"{name}: segGroups[{index}]"
        if not isinstance(group, dict):
            raise RawDataError(f"{where}: expected an object")
        for field in ("objectId", "label", "segments"):
            if field not in group:
                raise RawDataError(f"{where}: field '{field}' missing")
        if not isinstance(group["objectId"], int) or group["objectId"] < 0:
            raise RawDataError(f"{where}.objectId: expected a non-negative integer, got {group['objectId']!r}")
        if not isinstance(group["label"], str):
            raise RawDataError(f"{where}.label: expected text, got {group['label']!r}")
        if not isinstance(group["segments"], list) or not all(isinstance(s, int) for s in group["segments"]):
            raise RawDataError(f"{where}.segments: expected a list of integers")
        groups.append(SegGroup(group["objectId"], group["label"], tuple(group["segments"])))
    return groups


def encode_segments(scene: str, seg_indices: np.ndarray) -> bytes:
    payload = {
        "params": {"kThresh": "0.01", "segMinVerts": "20", "minPoints": "750", "maxPoints": "5000"},
        "sceneId": scene,
        "segIndices": [int(s) for s in seg_indices],
    }
    return json.dumps(payload).encode()


def decode_segments(data: bytes, name: str, num_vertices: int) -> np.ndarray:
    """Per-vertex segment ids `(V,)` int64; their count must match the mesh."""
    payload = _load_json(data, name)
    if not isinstance(payload, dict) or not isinstance(payload.get("segIndices"), list):
        raise RawDataError(f"{name}: field 'segIndices' missing or not a list")
    seg = np.asarray(payload["segIndices"])
    if seg.dtype.kind not in "iu":
        raise RawDataError(f"{name}: segIndices must be integers")
    if len(seg) != num_vertices:
        raise RawDataError(f"{name}: segIndices has {len(seg)} entries but the mesh has {num_vertices} vertices")
    return seg.astype(np.int64)


def encode_meta(axis_alignment: np.ndarray) -> bytes:
    values = " ".join(f"{v:.9g}" for v in np.asarray(axis_alignment, dtype=np.float64).reshape(-1))
    return f"axisAlignment = {values}\n".encode()


def decode_axis_alignment(data: bytes, name: str) -> np.ndarray:
    """The `axisAlignment` matrix (4, 4) of `<scene>.txt`; identity when the scene has none (as ScanNet test scenes)."""
    text = data.decode("utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip().startswith("axisAlignment"):
            try:
                values = [float(v) for v in line.split("=", 1)[1].split()]
            except ValueError:
                raise RawDataError(f"{name}: axisAlignment holds non-numeric values") from None
            if len(values) != 16:
                raise RawDataError(f"{name}: axisAlignment needs 16 numbers, got {len(values)}")
            matrix = np.asarray(values, dtype=np.float64).reshape(4, 4)
            if not np.isfinite(matrix).all():
                raise RawDataError(f"{name}: axisAlignment contains NaN or inf")
            return matrix
    return np.eye(4)


# -------------------------------------------------------------------------------------------- frames


def encode_matrix_txt(matrix: np.ndarray) -> bytes:
    return ("\n".join(" ".join(f"{v:.9g}" for v in row) for row in np.asarray(matrix)) + "\n").encode()


def decode_matrix_txt(data: bytes, name: str) -> np.ndarray:
    """A whitespace-separated 4x4 matrix (poses, intrinsics). Values may be NaN/inf: callers decide."""
    try:
        rows = [[float(v) for v in line.split()] for line in data.decode("utf-8").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError):
        raise RawDataError(f"{name}: expected a 4x4 matrix of numbers") from None
    if len(rows) != 4 or any(len(r) != 4 for r in rows):
        raise RawDataError(f"{name}: expected a 4x4 matrix, got {len(rows)} rows")
    return np.asarray(rows, dtype=np.float64)


def encode_depth_png(depth_mm: np.ndarray) -> bytes:
    """uint16 depth image `(H, W)` in depth units (ScanNet: millimetres), 0 = no measurement."""
    from PIL import Image

    if depth_mm.dtype != np.uint16:
        raise ValueError("depth must be uint16")
    buffer = io.BytesIO()
    Image.fromarray(depth_mm).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_depth_png(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            depth = np.asarray(image)
    except Exception as exc:
        raise RawDataError(f"{name}: unreadable depth PNG ({exc})") from None
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.int32, np.uint8):
        raise RawDataError(f"{name}: expected a single-channel 16-bit depth image, got {depth.dtype} {depth.shape}")
    return depth.astype(np.uint16)


def encode_color_jpg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_color(data: bytes, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB image `(H, W, 3)` uint8, resized (bilinear) to `size = (W, H)` when given."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = image.convert("RGB")
            if size is not None and image.size != size:
                image = image.resize(size, Image.BILINEAR)
            return np.asarray(image)
    except Exception as exc:
        detail = "not an image file" if "cannot identify image file" in str(exc) else str(exc)
        raise RawDataError(f"{name}: unreadable colour image ({detail})") from None


_FRAME_NAME = re.compile(r"^(\d+)\.(jpg|png|txt)$")


def frame_number(uri: str) -> int | None:
    """Frame number of `.../<N>.jpg|png|txt`, or None for other files."""
    match = _FRAME_NAME.match(uri.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def encode_split(scenes: list[str]) -> bytes:
    return ("\n".join(scenes) + "\n").encode()


def decode_split(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
