"""Res16UNet34C: MinkowskiEngine-identical parameters, outputs, cross-backend state_dicts, weight loading."""

from __future__ import annotations

import pytest
import torch

from bifusion.model.res16unet import Res16UNet34C, load_backbone_weights, res16unet34c
from bifusion.model.sparse import SparseBackend, available_backends, slice_to_points, voxelize

OTHER_BACKENDS = [b for b in available_backends() if b is not SparseBackend.TORCH]


def esam_state_dict_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes, in order, of the state_dict of ESAM's MinkowskiEngine `Res16UNet34C(3, 96, cfg(
    conv1_kernel_size=5))`, re-derived from `network_initialization` / `_make_layer` / `BasicBlockBase` in
    xuxw98/ESAM oneformer3d/mink_unet.py: ME kernels are (K, Cin, Cout), k=1 kernels (Cin, Cout), no bias,
    MinkowskiBatchNorm wraps BatchNorm1d as `.bn`."""
    planes, layers, init_dim = (32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2), 32
    shapes: list[tuple[str, tuple[int, ...]]] = []

    def conv(name: str, volume: int, cin: int, cout: int) -> None:
        shapes.append((f"{name}.kernel", (volume, cin, cout) if volume > 1 else (cin, cout)))

    def norm(name: str, channels: int) -> None:
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes.append((f"{name}.bn.{buffer}", (channels,)))
        shapes.append((f"{name}.bn.num_batches_tracked", ()))

    def make_layer(name: str, inplanes: int, channels: int, blocks: int) -> int:
        for i in range(blocks):
            cin = inplanes if i == 0 else channels
            conv(f"{name}.{i}.conv1", 27, cin, channels)
            norm(f"{name}.{i}.norm1", channels)
            conv(f"{name}.{i}.conv2", 27, channels, channels)
            norm(f"{name}.{i}.norm2", channels)
            if i == 0 and inplanes != channels:
                conv(f"{name}.0.downsample.0", 1, inplanes, channels)
                norm(f"{name}.0.downsample.1", channels)
        return channels

    conv("conv0p1s1", 125, 3, init_dim)
    norm("bn0", init_dim)
    inplanes = init_dim
    for level, name in enumerate(["conv1p1s2", "conv2p2s2", "conv3p4s2", "conv4p8s2"]):
        conv(name, 8, inplanes, inplanes)
        norm(f"bn{level + 1}", inplanes)
        inplanes = make_layer(f"block{level + 1}", inplanes, planes[level], layers[level])
    skips = [planes[2], planes[1], planes[0], init_dim]
    for level, name in enumerate(["convtr4p16s2", "convtr5p8s2", "convtr6p4s2", "convtr7p2s2"]):
        conv(name, 8, inplanes, planes[4 + level])
        norm(f"bntr{4 + level}", planes[4 + level])
        width = planes[4 + level]
        inplanes = make_layer(f"block{5 + level}", width + skips[level], width, layers[4 + level])
    return shapes


def test_parameters_match_minkowski_engine_model():
    model = res16unet34c()
    ours = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert ours == esam_state_dict_shapes()
    assert sum(p.numel() for p in model.parameters()) == 37_854_112
    # spot checks against shapes printed from the ME model (shared/reference/sparse_backend.md section 5)
    state = model.state_dict()
    assert state["conv0p1s1.kernel"].shape == (125, 3, 32)
    assert state["convtr4p16s2.kernel"].shape == (8, 256, 256)
    assert state["block2.0.downsample.0.kernel"].shape == (32, 64)
    # BN momentum: 0.02 where ESAM passes bn_momentum, torch/ME's default 0.1 inside BasicBlocks
    assert model.bn0.bn.momentum == 0.02 and model.block2[0].downsample[1].bn.momentum == 0.02
    assert model.block2[0].norm1.bn.momentum == 0.1


def room(num_points: int = 4000, seed: int = 0):
    """A floor and two walls with a box, 2 cm voxels, centred like ESAM's single-view input; rgb features."""
    generator = torch.Generator().manual_seed(seed)
    u, v = torch.rand(2, num_points, generator=generator)
    part = torch.randint(0, 4, (num_points,), generator=generator)
    xyz = torch.stack(
        [
            torch.where(part == 1, torch.zeros_like(u), u * 0.8),
            torch.where(part == 2, torch.zeros_like(u), v * 0.6),
            torch.where(part == 0, torch.zeros_like(u), torch.where(part == 3, 0.2 + 0.0 * u, v * 0.5)),
        ],
        dim=1,
    )
    xyz = xyz - xyz.mean(0)
    rgb = torch.rand(num_points, 3, generator=generator)
    return xyz, torch.zeros(num_points, dtype=torch.long), rgb


def test_forward_gives_96_channels_per_point():
    xyz, batch, rgb = room(num_points=1500)
    voxels, point_to_voxel = voxelize(xyz, batch, rgb, voxel_size=0.02)
    model = res16unet34c().eval()
    with torch.no_grad():
        encoded = model.encode(voxels)
        out = model.decode(encoded)
    assert [level.tensor_stride for level in encoded] == [1, 2, 4, 8, 16]
    assert [level.num_channels for level in encoded] == [32, 32, 64, 128, 256]
    assert out.coordinates is voxels.coordinates
    assert slice_to_points(out, point_to_voxel).shape == (1500, 96)


def small_unet(backend: SparseBackend) -> Res16UNet34C:
    return Res16UNet34C(
        in_channels=3,
        planes=(8, 16, 16, 16, 16, 16, 8, 8),
        layers=(1, 1, 1, 1, 1, 1, 1, 1),
        stem_channels=8,
        conv1_kernel_size=5,
        bn_momentum=0.02,
        block_bn_momentum=0.1,
        backend=backend,
    )


def point_outputs_and_grads(model: Res16UNet34C, xyz, batch, rgb):
    """Per-point outputs, d(loss)/d(point rgb) and d(loss)/d(parameters) of one training-mode step."""
    model.zero_grad()
    rgb = rgb.clone().requires_grad_()
    voxels, point_to_voxel = voxelize(xyz, batch, rgb, voxel_size=0.02)
    out = slice_to_points(model(voxels), point_to_voxel)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), rgb.grad, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture
def two_threads():
    """More than one thread, as in the backend comparison of the sparse layers (spconv's CPU race)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", OTHER_BACKENDS, ids=lambda b: b.value)
def test_state_dict_moves_between_backends_with_same_outputs_and_gradients(backend, two_threads):
    xyz, batch, rgb = room()
    reference_model = small_unet(SparseBackend.TORCH)
    with torch.no_grad():  # move BN running stats away from their initial values
        reference_model(voxelize(xyz, batch, rgb, voxel_size=0.02)[0])
    other_model = small_unet(backend)
    other_model.load_state_dict(reference_model.state_dict())

    reference = point_outputs_and_grads(reference_model, xyz, batch, rgb)
    other = point_outputs_and_grads(other_model, xyz, batch, rgb)
    torch.testing.assert_close(other[0], reference[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other[1], reference[1], rtol=1e-4, atol=1e-4)
    for name, grad in reference[2].items():
        torch.testing.assert_close(other[2][name], grad, rtol=1e-3, atol=1e-3, msg=name)

    reference_model.eval()
    other_model.eval()
    with torch.no_grad():
        voxels, point_to_voxel = voxelize(xyz, batch, rgb, voxel_size=0.02)
        expected = slice_to_points(reference_model(voxels), point_to_voxel)
        voxels, point_to_voxel = voxelize(xyz, batch, rgb, voxel_size=0.02)
        got = slice_to_points(other_model(voxels), point_to_voxel)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_weight_loader_maps_prefixes_and_reports_problems():
    source = small_unet(SparseBackend.TORCH)
    target = small_unet(SparseBackend.TORCH)
    state = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    state["backbone.bn0.bn.weight"] = torch.ones(5)  # wrong shape
    del state["backbone.block8.0.conv2.kernel"]
    state["decoder.query_proj.weight"] = torch.ones(2, 2)
    checkpoint = {"state_dict": state, "meta": {"epoch": 3}}
    before = target.bn0.bn.weight.detach().clone()

    report = load_backbone_weights(target, checkpoint, prefix_map=[("backbone.", "")])

    assert report.shape_mismatches == [("bn0.bn.weight", (5,), (8,))]
    assert report.missing == ["block8.0.conv2.kernel"]
    assert report.unexpected == ["decoder.query_proj.weight"]
    assert not report.complete
    assert torch.equal(target.bn0.bn.weight, before)  # never loaded silently
    assert torch.equal(target.block1[0].conv1.kernel, source.block1[0].conv1.kernel)
    assert len(report.loaded) == len(source.state_dict()) - 2
    text = report.summary()
    assert "shape mismatch (not loaded): bn0.bn.weight: checkpoint (5,), model (8,)" in text
    assert "missing in checkpoint" in text and "decoder.query_proj.weight" in text


def test_weight_loader_reads_plain_and_model_wrapped_state_dicts(tmp_path):
    source = small_unet(SparseBackend.TORCH)
    path = tmp_path / "mask3d_like.pth"
    torch.save({"model": {f"model.backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    target = small_unet(SparseBackend.TORCH)
    report = load_backbone_weights(target, torch.load(path, map_location="cpu", weights_only=True))
    assert report.complete and not report.unexpected
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
