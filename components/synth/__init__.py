"""`bifusion synth`: procedural indoor rooms rendered into the raw ScanNet layout.

Deterministic from (`SynthConfig.seed`, scene index). Modules, each with one job:
`room_layout` (room shell, furniture placement), `furniture` (the object catalogue), `textures` (appearance),
`camera_path` (the scanning walk), `mesh_builder` (mesh and annotations), `raycast` (depth and colour frames),
`scene` (one scene's parameters) and `raw_files` (the files it becomes). `stage` wires them to storage.
"""

from bifusion.components.synth.raw_files import scene_files, split_files
from bifusion.components.synth.scene import SyntheticScene, generate_scene, scene_name

__all__ = ["SyntheticScene", "generate_scene", "scene_files", "scene_name", "split_files"]
