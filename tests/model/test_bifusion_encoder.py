"""BiFusion encoder: projection and sampling conventions, validity (source pixels, z > 0, bounds, occlusion),
the fusion gate (invalid points, fixed alpha, masked SE, the single L2) and gate statistics."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bifusion.model import bifusion_encoder
from bifusion.model.bifusion_encoder import BiFusionEncoder, BiFusionOutput, FrameCamera, gate_statistics, sample_feature_map
from bifusion.model.esam_head import ESAMSingleViewHead
from bifusion.model.geometry import (
    project_points,
    project_points_to_image,
    resize_intrinsics,
    resize_pixel_coordinates,
    unproject_pixels,
    visible_in_depth,
)

IMAGE_SIZE = (640, 480)  # (W, H)
K = torch.tensor([[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
TINY = dict(point_channels=8, clip_channels=16, channels=32, head_hidden_channels=32, gate_hidden_channels=8)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors: with several threads, synchronisation costs more than the arithmetic (5-10x on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rigid_pose(angle: float, axis: tuple[float, float, float], translation: tuple[float, float, float]) -> torch.Tensor:
    """Camera-to-world (4, 4) float64: rotation by `angle` about `axis` (Rodrigues), then `translation`."""
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    skew = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.eye(3, dtype=torch.float64) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
    pose[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return pose


POSE = rigid_pose(0.7, (0.3, -1.0, 0.4), (1.5, -0.4, 2.0))


def random_pixels(count: int, generator: torch.Generator) -> torch.Tensor:
    columns = torch.randint(0, IMAGE_SIZE[0], (count,), generator=generator)
    rows = torch.randint(0, IMAGE_SIZE[1], (count,), generator=generator)
    return torch.stack([columns, rows], dim=1)


def room_depth() -> torch.Tensor:
    """(480, 640) metres: a back wall at 4 m with a box face at 2 m in columns 200-399 and a hole (0) at the top left."""
    depth = torch.full((IMAGE_SIZE[1], IMAGE_SIZE[0]), 4.0, dtype=torch.float64)
    depth[:, 200:400] = 2.0
    depth[:20, :20] = 0.0
    return depth


def points_on_depth(pixels: torch.Tensor, depth: torch.Tensor, pose: torch.Tensor = POSE) -> torch.Tensor:
    """World points (float32) unprojected from integer pixels at their depth-map depth."""
    z = depth[pixels[:, 1], pixels[:, 0]]
    return unproject_pixels(pixels.double(), z, K, pose).float()


def test_projection_lands_on_the_hand_computed_pixel() -> None:
    intrinsics = torch.tensor([[500.0, 0.0, 319.5], [0.0, 400.0, 239.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    points_cam = torch.tensor([[0.2, -0.1, 2.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    points_world = points_cam @ POSE[:3, :3].T + POSE[:3, 3]

    uv, z = project_points_to_image(points_world, intrinsics, POSE)

    # u = 500 * 0.2 / 2 + 319.5, v = 400 * -0.1 / 2 + 239.5
    torch.testing.assert_close(uv[0], torch.tensor([369.5, 219.5], dtype=torch.float64))
    torch.testing.assert_close(z, torch.tensor([2.0, -1.0], dtype=torch.float64))
    uv_np, z_np = project_points(points_world.numpy(), intrinsics.numpy(), POSE.numpy())
    np.testing.assert_allclose(uv.numpy(), uv_np, rtol=0, atol=1e-9)
    np.testing.assert_allclose(z.numpy(), z_np, rtol=0, atol=1e-12)


def test_unprojection_inverts_projection() -> None:
    generator = torch.Generator().manual_seed(0)
    uv = torch.rand(50, 2, generator=generator, dtype=torch.float64) * torch.tensor([639.0, 479.0], dtype=torch.float64)
    depth = 0.5 + 4 * torch.rand(50, generator=generator, dtype=torch.float64)

    projected, z = project_points_to_image(unproject_pixels(uv, depth, K, POSE), K, POSE)

    torch.testing.assert_close(projected, uv)
    torch.testing.assert_close(z, depth)


@pytest.mark.parametrize("feature_size", [(40, 30), (20, 15), (80, 60)])
def test_resized_intrinsics_project_where_resized_pixel_coordinates_say(feature_size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(1)
    points = unproject_pixels(random_pixels(40, generator).double(), torch.full((40,), 2.5, dtype=torch.float64), K, POSE)

    uv, _ = project_points_to_image(points, K, POSE)
    uv_feature, _ = project_points_to_image(points, resize_intrinsics(K, IMAGE_SIZE, feature_size), POSE)

    torch.testing.assert_close(uv_feature, resize_pixel_coordinates(uv, IMAGE_SIZE, feature_size))
    # The image centre (319.5, 239.5) stays the centre of the feature map.
    centre = resize_intrinsics(K, IMAGE_SIZE, feature_size)[:2, 2]
    torch.testing.assert_close(centre, torch.tensor([(feature_size[0] - 1) / 2, (feature_size[1] - 1) / 2], dtype=torch.float64))


@pytest.mark.parametrize("feature_map_size", [(30, 40), (15, 20), (60, 80)])
def test_a_point_samples_the_feature_cell_that_covers_its_pixel(feature_map_size: tuple[int, int]) -> None:
    """Through the encoder: a map whose channels hold each cell's column and row index, read at projected points."""
    height, width = feature_map_size
    encoder = BiFusionEncoder(**{**TINY, "clip_channels": 32}, feature_map_size=feature_map_size).eval()
    with torch.no_grad():
        encoder.clip_reducer.reduce.weight.copy_(torch.eye(32).view(32, 32, 1, 1))
        encoder.clip_reducer.reduce.bias.zero_()
    clip_features = torch.zeros(1, 32, height, width)
    clip_features[0, 0] = torch.arange(width, dtype=torch.float32).expand(height, width)
    clip_features[0, 1] = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    generator = torch.Generator().manual_seed(2)
    pixels = torch.cat([random_pixels(300, generator), torch.tensor([[0, 0], [639, 479], [7, 8], [8, 7]])])
    depth = torch.full((IMAGE_SIZE[1], IMAGE_SIZE[0]), 3.0, dtype=torch.float64)
    camera = FrameCamera(K, POSE, IMAGE_SIZE, depth)

    with torch.no_grad():
        (output,) = encoder([torch.randn(len(pixels), 8)], [points_on_depth(pixels, depth)], clip_features, [camera])

    assert output.valid.all()
    sampled_column, sampled_row = output.f2d_sampled[:, 0], output.f2d_sampled[:, 1]
    covering_column = torch.floor((pixels[:, 0] + 0.5) * width / IMAGE_SIZE[0])
    covering_row = torch.floor((pixels[:, 1] + 0.5) * height / IMAGE_SIZE[1])
    assert torch.equal(torch.floor(sampled_column + 0.5), covering_column)
    assert torch.equal(torch.floor(sampled_row + 0.5), covering_row)
    # Bilinear sampling of a ramp returns the exact continuous coordinate u' = (u + 0.5) W'/W - 0.5 (clamped at the border).
    expected_column = ((pixels[:, 0] + 0.5) * width / IMAGE_SIZE[0] - 0.5).clamp(0, width - 1)
    torch.testing.assert_close(sampled_column, expected_column.float(), rtol=0, atol=1e-3)


def test_sampling_at_a_cell_centre_reads_that_cell_exactly() -> None:
    feature_map = torch.randn(3, 30, 40)
    cells = torch.tensor([[0, 0], [39, 29], [17, 11]])
    # Cell (j, i) of a 40x30 map over a 640x480 image is centred at u = 16 j + 7.5, v = 16 i + 7.5.
    uv = cells.double() * 16 + 7.5

    sampled = sample_feature_map(feature_map, uv, IMAGE_SIZE)

    torch.testing.assert_close(sampled, feature_map[:, cells[:, 1], cells[:, 0]].T)


def test_source_pixels_give_the_same_features_as_reprojecting_unoccluded_points() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    generator = torch.Generator().manual_seed(3)
    depth = room_depth()
    pixels = random_pixels(400, generator)
    pixels = pixels[depth[pixels[:, 1], pixels[:, 0]] > 0]
    points = points_on_depth(pixels, depth)
    features, clip_features = torch.randn(len(pixels), 8), torch.randn(1, 16, 15, 20)
    camera = FrameCamera(K, POSE, IMAGE_SIZE, depth)

    with torch.no_grad():
        (single_view,) = encoder([features], [points], clip_features, [camera], [pixels])
        (projected,) = encoder([features], [points], clip_features, [camera])

    assert single_view.valid.all() and projected.valid.all()
    torch.testing.assert_close(projected.f2d_sampled, single_view.f2d_sampled, rtol=0, atol=1e-4)
    torch.testing.assert_close(projected.fused, single_view.fused, rtol=0, atol=1e-4)


def test_depth_test_rejects_a_point_behind_a_nearer_surface() -> None:
    depth = room_depth()  # box face at 2 m in front of the 4 m wall in columns 200-399
    cases = {
        "on the box face": ((300.0, 240.0), 2.0, True),
        "hidden behind the box": ((300.0, 240.0), 3.5, False),
        "on the wall beside the box": ((100.0, 240.0), 4.0, True),
        "within tolerance (0.05 + 0.02 * 4 m)": ((100.0, 240.0), 4.12, True),
        "beyond tolerance": ((100.0, 240.0), 4.2, False),
        "in front of the surface the camera saw": ((100.0, 240.0), 3.0, False),
        "no depth measured": ((10.0, 10.0), 4.0, False),
        "behind the camera": ((300.0, 240.0), -2.0, False),
        "outside the image": ((700.0, 240.0), 4.0, False),
    }
    uv = torch.tensor([uv for uv, _, _ in cases.values()], dtype=torch.float64)
    z = torch.tensor([z for _, z, _ in cases.values()], dtype=torch.float64)
    expected = torch.tensor([visible for _, _, visible in cases.values()])
    points = unproject_pixels(uv, z, K, POSE).float()
    camera = FrameCamera(K, POSE, IMAGE_SIZE, depth)
    inputs = ([torch.randn(len(uv), 8)], [points], torch.randn(1, 16, 15, 20), [camera])

    with torch.no_grad():
        (output,) = BiFusionEncoder(**TINY).eval()(*inputs)
        (loose,) = BiFusionEncoder(**TINY, depth_tolerance_m=10.0).eval()(*inputs)

    assert dict(zip(cases, output.valid.tolist())) == dict(zip(cases, expected.tolist()))
    # A tolerance larger than the scene lets the hidden point through, but never one behind the camera (z > 0).
    assert loose.valid[list(cases).index("hidden behind the box")]
    assert not loose.valid[list(cases).index("behind the camera")]
    assert visible_in_depth(uv, z, depth, tolerance_m=1.6, tolerance_relative=0.0)[list(cases).index("hidden behind the box")]


def test_projection_without_a_depth_map_is_an_error() -> None:
    encoder = BiFusionEncoder(**TINY)
    with pytest.raises(ValueError, match="depth_m"):
        encoder([torch.randn(4, 8)], [torch.randn(4, 3)], torch.randn(1, 16, 15, 20), [FrameCamera(K, POSE, IMAGE_SIZE)])
    with pytest.raises(ValueError, match="one entry per frame"):
        encoder([torch.randn(4, 8)], [torch.randn(4, 3)], torch.randn(2, 16, 15, 20), [FrameCamera(K, POSE, IMAGE_SIZE)])


def frame_with_invalid_points(generator: torch.Generator, num_valid: int = 30, num_invalid: int = 10):
    """Source pixels: the first num_valid inside the image, the rest outside (u < -0.5 or v >= 479.5)."""
    inside = random_pixels(num_valid, generator)
    outside = torch.stack([torch.full((num_invalid,), -3), torch.arange(num_invalid)], dim=1)
    outside[::2] = torch.tensor([5, 480])
    pixels = torch.cat([inside, outside])
    features = torch.randn(len(pixels), 8, generator=generator)
    points = torch.randn(len(pixels), 3, generator=generator)
    return features, points, pixels


def run_single_view(encoder: BiFusionEncoder, features, points, pixels, clip_features) -> BiFusionOutput:
    (output,) = encoder([features], [points], clip_features, [FrameCamera(K, POSE, IMAGE_SIZE)], [pixels])
    return output


def test_invalid_points_get_alpha_zero_and_only_the_3d_path() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    generator = torch.Generator().manual_seed(4)
    features, points, pixels = frame_with_invalid_points(generator)

    with torch.no_grad():
        output = run_single_view(encoder, features, points, pixels, torch.randn(1, 16, 15, 20, generator=generator))

    valid, invalid = output.valid, ~output.valid
    assert valid[:30].all() and invalid[30:].all()
    assert torch.equal(output.alpha[invalid], torch.zeros(10, 1)) and (output.alpha[valid] > 0).all()
    assert torch.equal(output.f2d[invalid], torch.zeros(10, 32)) and torch.equal(output.f2d_sampled[invalid], torch.zeros(10, 32))
    alpha = output.alpha[valid]
    squeeze = (alpha * output.f2d[valid] + (1 - alpha) * output.f3d[valid]).mean(dim=0)
    with torch.no_grad():
        channel_weights = torch.sigmoid(encoder.gate.excitation(squeeze))
    torch.testing.assert_close(output.fused[invalid], F.normalize(output.f3d[invalid] * channel_weights, dim=1))


def test_fixed_alpha_replaces_the_gate_on_valid_points_only() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    features, points, pixels = frame_with_invalid_points(torch.Generator().manual_seed(5))
    clip_features = torch.randn(1, 16, 15, 20)

    encoder.gate.fixed_alpha = 0.25
    with torch.no_grad():
        fixed = run_single_view(encoder, features, points, pixels, clip_features)
    encoder.gate.fixed_alpha = 0.0
    with torch.no_grad():
        baseline = run_single_view(encoder, features, points, pixels, clip_features)
    encoder.gate.fixed_alpha = None
    with torch.no_grad():
        learned = run_single_view(encoder, features, points, pixels, clip_features)

    assert torch.equal(fixed.alpha[:30], torch.full((30, 1), 0.25)) and torch.equal(fixed.alpha[30:], torch.zeros(10, 1))
    assert torch.equal(baseline.alpha, torch.zeros(40, 1))
    assert not torch.equal(learned.alpha[:30], fixed.alpha[:30])
    with pytest.raises(ValueError, match="fixed_alpha"):
        encoder.gate.fixed_alpha = 1.5


def test_fused_rows_are_unit_norm_from_the_modules_only_l2_normalisation() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    features, points, pixels = frame_with_invalid_points(torch.Generator().manual_seed(6))

    with torch.no_grad():
        output = run_single_view(encoder, 100 * features, points, pixels, torch.randn(1, 16, 15, 20))

    torch.testing.assert_close(output.fused.norm(dim=1), torch.ones(40))
    tree = ast.parse(Path(bifusion_encoder.__file__).read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = [call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "") for call in calls]
    assert names.count("normalize") == 1
    gate_forward = next(
        node for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "LiteFusionGate"
        for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "forward"
    )
    assert any(isinstance(n, ast.Attribute) and n.attr == "normalize" for n in ast.walk(gate_forward))


def test_masked_se_ignores_invalid_points() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    features, points, pixels = frame_with_invalid_points(torch.Generator().manual_seed(7))
    clip_features = torch.randn(1, 16, 15, 20)
    changed_invalid = features.clone()
    changed_invalid[30:] = 50 * torch.randn(10, 8)
    changed_valid = features.clone()
    changed_valid[0] = 50 * torch.randn(8)

    with torch.no_grad():
        reference = run_single_view(encoder, features, points, pixels, clip_features)
        after_invalid = run_single_view(encoder, changed_invalid, points, pixels, clip_features)
        after_valid = run_single_view(encoder, changed_valid, points, pixels, clip_features)

    assert torch.equal(after_invalid.fused[:30], reference.fused[:30])
    assert not torch.allclose(after_invalid.fused[30:], reference.fused[30:])
    # The squeeze does read valid points: changing one changes the others' output through the channel weights.
    assert not torch.allclose(after_valid.fused[1:30], reference.fused[1:30])


def test_frames_with_different_point_counts_batch_like_frames_alone() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY).eval()
    generator = torch.Generator().manual_seed(8)
    depth = room_depth()
    sv_features, sv_points, sv_pixels = frame_with_invalid_points(generator)
    mv_pixels = random_pixels(55, generator)
    mv_points, mv_features = points_on_depth(mv_pixels, depth), torch.randn(55, 8, generator=generator)
    clip_features = torch.randn(2, 16, 15, 20, generator=generator)
    cameras = [FrameCamera(K, POSE, IMAGE_SIZE), FrameCamera(K, POSE, IMAGE_SIZE, depth)]

    with torch.no_grad():
        together = encoder([sv_features, mv_features], [sv_points, mv_points], clip_features, cameras, [sv_pixels, None])
        first = encoder([sv_features], [sv_points], clip_features[:1], cameras[:1], [sv_pixels])
        second = encoder([mv_features], [mv_points], clip_features[1:], cameras[1:])

    for joint, alone in zip(together, first + second):
        torch.testing.assert_close(joint.fused, alone.fused)
        assert torch.equal(joint.valid, alone.valid)
    assert [len(o.fused) for o in together] == [40, 55]


def test_fused_features_feed_the_query_decoder() -> None:
    torch.manual_seed(0)
    encoder = BiFusionEncoder(**TINY)
    head = ESAMSingleViewHead(in_channels=32, d_model=32, num_heads=4, ffn_channels=64, num_layers=3)
    features, points, pixels = frame_with_invalid_points(torch.Generator().manual_seed(9))

    output = run_single_view(encoder, features, points, pixels, torch.randn(1, 16, 15, 20))
    decoded = head([output.fused], [points], [torch.arange(40) % 6])
    decoded[0].final.mask_logits.sum().backward()

    assert decoded[0].final.mask_logits.shape[1] == 40
    assert encoder.clip_reducer.reduce.weight.grad is not None and encoder.proj3d[0].weight.grad is not None


def make_output(alpha: list[float], valid: list[bool], f2d: torch.Tensor, f3d: torch.Tensor) -> BiFusionOutput:
    return BiFusionOutput(
        fused=F.normalize(f3d, dim=1),
        alpha=torch.tensor(alpha)[:, None],
        valid=torch.tensor(valid),
        f3d=f3d,
        f2d=f2d,
        f2d_sampled=f2d,
    )


def test_gate_statistics_over_valid_points() -> None:
    f3d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    first = make_output([0.2, 0.6, 0.0], [True, True, False], 2 * f3d * torch.tensor([[1.0], [1.0], [0.0]]), f3d)
    second = make_output([0.0], [False], torch.zeros(1, 2), torch.tensor([[0.0, 7.0]]))

    stats = gate_statistics([first, second])

    expected = {"alpha_mean": 0.4, "alpha_std": 0.2, "valid_ratio": 0.5, "norm_ratio_2d_3d": 2.0, "cosine_2d_3d": 1.0}
    assert stats == pytest.approx(expected)
    assert all(isinstance(value, float) for value in stats.values())
    empty = gate_statistics([second])
    assert empty["valid_ratio"] == 0.0 and math.isnan(empty["alpha_mean"]) and math.isnan(empty["cosine_2d_3d"])


def test_numpy_and_torch_intrinsics_resizing_agree() -> None:
    import numpy as np

    from bifusion.model.geometry import SCANNET_AVERAGE_INTRINSICS_640x480, resize_intrinsics, scale_intrinsics

    for size in ((320, 240), (40, 30), (1296, 968)):
        numpy_k = scale_intrinsics(SCANNET_AVERAGE_INTRINSICS_640x480, (640, 480), size)
        torch_k = resize_intrinsics(torch.from_numpy(SCANNET_AVERAGE_INTRINSICS_640x480), (640, 480), size)
        np.testing.assert_allclose(numpy_k, torch_k.numpy(), atol=1e-12)
    half = scale_intrinsics(SCANNET_AVERAGE_INTRINSICS_640x480, (640, 480), (320, 240))
    assert (half[0, 2], half[1, 2]) == (159.5, 119.5)  # centre pixel stays the centre pixel
