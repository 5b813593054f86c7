"""Bad raw input: bad frames are skipped, named and counted; too many fail the stage; malformed files fail."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifusion.components.prep.stage import PrepError, run_prep
from bifusion.components.scannet_raw import RawDataError

SCENE = "scene9000_00"


def frames(raw: Path) -> Path:
    return raw / "2D" / SCENE


def edit(path: Path, data: bytes | None) -> None:
    """Change a raw file as another tool would (no checksum sidecar), or delete it when data is None."""
    path.with_name(f".{path.name}.sha256").unlink(missing_ok=True)
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)


def damage_frames(raw: Path) -> dict[str, str]:
    """Break six of the scene's seven sampled frames in six different ways; returns file -> expected reason."""
    root = frames(raw)
    edit(root / "pose" / "40.txt", b"nan nan nan nan\n" * 4)
    singular = np.zeros((4, 4))
    singular[3, 3] = 1.0
    edit(root / "pose" / "80.txt", "\n".join(" ".join(map(str, row)) for row in singular).encode())
    edit(root / "depth" / "100.png", (root / "depth" / "100.png").read_bytes()[:200])
    edit(root / "color" / "120.jpg", b"not a jpeg")
    edit(root / "pose" / "160.txt", None)
    empty = np.zeros_like(np.asarray(Image.open(root / "depth" / "200.png")))
    from bifusion.components.scannet_raw import encode_depth_png

    edit(root / "depth" / "200.png", encode_depth_png(empty))
    return {
        str(root / "pose" / "40.txt"): "pose contains NaN or inf",
        str(root / "pose" / "80.txt"): "pose is singular or not a rigid transform",
        str(root / "depth" / "100.png"): "unreadable depth PNG",
        str(root / "color" / "120.jpg"): "unreadable colour image",
        str(root / "pose" / "160.txt"): "missing file",
        str(root / "depth" / "200.png"): "too few valid depth points",
    }


def test_bad_frames_are_skipped_named_and_counted(raw_copy: Path, prep_config, caplog: pytest.LogCaptureFixture) -> None:
    expected = damage_frames(raw_copy)
    with caplog.at_level(logging.WARNING):
        result = run_prep(prep_config("prep.max_bad_fraction=0.5"), str(raw_copy))
    summary = result.summary
    assert summary["frames_total"] == 14
    assert summary["frames_skipped"] == 6
    reasons = {entry["uri"]: entry["reason"] for entry in summary["skipped"]}
    assert set(reasons) == set(expected)
    for uri, reason in expected.items():
        assert reasons[uri].startswith(reason), (uri, reasons[uri])
        assert any(uri in message for message in caplog.messages)
    assert json.loads((Path(result.output_uri) / "summary.json").read_text())["frames_skipped"] == 6
    # The one good frame of the damaged scene is still prepared.
    sv_names = sorted(p.name for p in (Path(result.sv_uri) / "points").iterdir())
    assert f"{SCENE}_0.bin" in sv_names and f"{SCENE}_100.bin" not in sv_names


def test_a_corrupted_published_file_is_skipped_as_unreadable(raw_copy: Path, prep_config) -> None:
    target = frames(raw_copy) / "depth" / "40.png"
    target.write_bytes(target.read_bytes()[::-1])  # the checksum sidecar still describes the old bytes
    result = run_prep(prep_config("prep.max_bad_fraction=0.5"), str(raw_copy))
    (entry,) = result.summary["skipped"]
    assert entry["uri"] == str(target)
    assert "SHA-256 mismatch" in entry["reason"]


def test_too_many_bad_frames_fail_the_stage_but_keep_finished_scenes(raw_copy: Path, prep_config) -> None:
    damage_frames(raw_copy)
    with pytest.raises(PrepError, match=r"6 of 14 frames \(43%\) were skipped, more than prep.max_bad_fraction=20%"):
        run_prep(prep_config(), str(raw_copy))
    output = next((Path(prep_config().workdir) / "store" / "prep").iterdir())
    assert sorted(p.name for p in (output / "_scenes").glob("scene*")) == ["scene9000_00.json", "scene9001_00.json"]
    assert not list((output / "sv").glob("*.pkl"))  # no info files for a failed prep


def test_a_scene_without_its_mesh_is_skipped_whole(raw_copy: Path, prep_config) -> None:
    mesh = raw_copy / "scans" / SCENE / f"{SCENE}_vh_clean_2.ply"
    edit(mesh, None)
    result = run_prep(prep_config("prep.max_bad_fraction=0.6"), str(raw_copy))
    assert result.summary["frames_skipped"] == 7
    assert {entry["uri"] for entry in result.summary["skipped"]} == {str(mesh)}


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        (f"{SCENE}.aggregation.json", b'{"sceneId": "x"}', r"aggregation.json: field 'segGroups' missing"),
        (f"{SCENE}.aggregation.json", b'{"segGroups": [{"objectId": 0, "label": "chair"}]}', r"segGroups\[0\]: field 'segments' missing"),
        (f"{SCENE}.aggregation.json", b"{not json", r"aggregation.json: not valid JSON"),
        (f"{SCENE}_vh_clean_2.0.010000.segs.json", b'{"segIndices": [0, 1, 2]}', r"segs.json: segIndices has 3 entries but the mesh has \d+ vertices"),
        (f"{SCENE}_vh_clean_2.ply", b"ply\nformat garbage\n", r"_vh_clean_2.ply: not a readable PLY file"),
        (f"{SCENE}.txt", b"axisAlignment = 1 0 0\n", r"\.txt: axisAlignment needs 16 numbers, got 3"),
    ],
)
def test_malformed_scene_files_fail_naming_file_and_field(raw_copy: Path, prep_config, file_name: str, content: bytes, message: str) -> None:
    edit(raw_copy / "scans" / SCENE / file_name, content)
    with pytest.raises(RawDataError, match=message):
        run_prep(prep_config(), str(raw_copy))


def test_missing_split_file_is_a_clear_error(raw_copy: Path, prep_config) -> None:
    edit(raw_copy / "scannetv2_val.txt", None)
    with pytest.raises(PrepError, match=r"split file .*scannetv2_val.txt not found \(prep.split_files.val\)"):
        run_prep(prep_config(), str(raw_copy))
