"""Read a synthetic scene back the way the prep stage reads ScanNet: through `SceneLayout` paths and the
`scannet_raw` decoders. Shared by the synth tests (imported by name: tests have no packages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bifusion.components.config_schema import SynthConfig, load_config
from bifusion.components.scannet_raw import (
    Mesh,
    SceneLayout,
    SegGroup,
    decode_aggregation,
    decode_axis_alignment,
    decode_color,
    decode_depth_png,
    decode_matrix_txt,
    decode_mesh_ply,
    decode_segments,
)
from bifusion.components.synth import SyntheticScene

SMALL = [
    "synth.width=160",
    "synth.height=120",
    "synth.frames_per_scene=4",
    "synth.room_size_m=[3.5, 4.5]",
    "synth.mesh_vertex_spacing_m=0.1",
]


def small_synth_config(*overrides: str) -> SynthConfig:
    """The base synth config at 160x120 with four frames in small, coarsely meshed rooms, plus `overrides`."""
    return load_config(["base"], [*SMALL, *overrides]).synth


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read(uri: str) -> bytes:
    return Path(uri).read_bytes()


@dataclass
class DecodedRawScene:
    """A written scene: what generated it, the files as yielded, and its decoded mesh and annotations."""

    scene: SyntheticScene
    config: SynthConfig
    files: dict[str, bytes]
    layout: SceneLayout  # rooted at the folder the files were written to
    mesh: Mesh
    seg_indices: np.ndarray
    groups: list[SegGroup]
    axis_alignment: np.ndarray

    @classmethod
    def decode(cls, scene: SyntheticScene, config: SynthConfig, files: dict[str, bytes], root: Path) -> DecodedRawScene:
        write_files(root, files)
        layout = SceneLayout(str(root), scene.name)
        mesh = decode_mesh_ply(read(layout.mesh), layout.mesh)
        return cls(
            scene=scene,
            config=config,
            files=files,
            layout=layout,
            mesh=mesh,
            seg_indices=decode_segments(read(layout.segments), layout.segments, len(mesh.vertices)),
            groups=decode_aggregation(read(layout.aggregation), layout.aggregation),
            axis_alignment=decode_axis_alignment(read(layout.meta), layout.meta),
        )

    def frame_numbers(self) -> list[int]:
        return [i * self.config.export_frame_step for i in range(self.config.frames_per_scene)]

    def frame(self, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """depth (H, W) uint16 mm, rgb (H, W, 3), camera-to-world pose (4, 4), depth intrinsics (4, 4)."""
        layout = self.layout
        return (
            decode_depth_png(read(layout.depth(number)), layout.depth(number)),
            decode_color(read(layout.color(number)), layout.color(number)),
            decode_matrix_txt(read(layout.pose(number)), layout.pose(number)),
            decode_matrix_txt(read(layout.intrinsic_depth), layout.intrinsic_depth),
        )
