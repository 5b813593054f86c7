"""Every available backend against the pure-PyTorch one: outputs, input gradients, kernel gradients.

Runs with 2 torch threads: spconv's CPU scatter races with more than one thread (see spconv_cpu_fixes),
and a single-threaded comparison would not notice.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from bifusion.model.sparse import SparseBackend, SparseTensor, available_backends, features_at_coordinates, voxelize
from bifusion.model.sparse.backend import backend_module

OTHER_BACKENDS = [b for b in available_backends() if b is not SparseBackend.TORCH]
if not OTHER_BACKENDS:
    pytest.skip("no sparse backend besides the pure-PyTorch one is installed", allow_module_level=True)


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def scene(seed: int, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """~3000 surface-like points in two batch items, with negative coordinates; (xyz, batch, features)."""
    generator = torch.Generator().manual_seed(seed)
    u, v = torch.rand(2, 3000, generator=generator)
    xyz = torch.stack([u * 1.2 - 0.6, v * 0.8 - 0.3, 0.2 * torch.sin(6 * u) + 0.1 * v], dim=1)
    batch = (torch.rand(3000, generator=generator) < 0.5).long()
    return xyz, batch, torch.randn(3000, channels, generator=generator)


def run_layer(backend: SparseBackend, kind: str, kernel: torch.Tensor, seed: int = 0):
    """Apply one conv of `kind` on the scene with `backend`; returns (output, input grad, kernel grad) where
    outputs and input grads are keyed by coordinates (rows of both backends differ at coarse levels)."""
    xyz, batch, point_features = scene(seed, kernel.shape[1])
    voxels, _ = voxelize(xyz, batch, point_features, voxel_size=0.02)
    ops = backend_module(backend)
    kernel = kernel.clone().requires_grad_()
    if kind == "upsample":  # the input is the stride-2 level made by this backend's own down conv
        voxels = ops.downsample_conv(voxels, torch.ones(8, kernel.shape[1], kernel.shape[1]))
        voxels = voxels.replace_features(_coarse_features(voxels))
    features = voxels.features.detach().requires_grad_()
    x = voxels.replace_features(features)
    if kind == "submanifold":
        out = ops.submanifold_conv(x, kernel)
    elif kind == "downsample":
        out = ops.downsample_conv(x, kernel)
    else:
        out = ops.upsample_conv(x, kernel)
    grad_seed = torch.sin(out.coordinates.double().sum(1, keepdim=True) + torch.arange(out.num_channels))
    (out.features * grad_seed.to(out.features.dtype)).sum().backward()
    return out, x.replace_features(features.grad), kernel.grad


def _coarse_features(coarse: SparseTensor) -> torch.Tensor:
    """Deterministic features from the coordinates, so that both backends feed the same values per voxel."""
    phase = coarse.coordinates.double() @ torch.tensor([0.1, 0.37, 0.51, 0.23], dtype=torch.float64)
    return torch.cos(phase[:, None] + torch.arange(coarse.num_channels)).float()


def assert_same_on_coordinates(ours: SparseTensor, theirs: SparseTensor, atol: float):
    assert ours.tensor_stride == theirs.tensor_stride and ours.num_voxels == theirs.num_voxels
    torch.testing.assert_close(features_at_coordinates(theirs, ours.coordinates), ours.features, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("backend", OTHER_BACKENDS, ids=lambda b: b.value)
@pytest.mark.parametrize(
    "kind, kernel_shape",
    [("submanifold", (27, 8, 16)), ("submanifold", (125, 3, 8)), ("downsample", (8, 16, 8)), ("upsample", (8, 16, 8))],
    ids=["subm-k3", "subm-k5", "down-k2s2", "up-k2s2"],
)
def test_backend_matches_pure_pytorch(backend, kind, kernel_shape):
    kernel = torch.randn(kernel_shape, generator=torch.Generator().manual_seed(7))
    reference = run_layer(SparseBackend.TORCH, kind, kernel)
    other = run_layer(backend, kind, kernel)
    assert_same_on_coordinates(reference[0], other[0], atol=1e-4)
    assert_same_on_coordinates(reference[1], other[1], atol=1e-4)
    torch.testing.assert_close(other[2], reference[2], rtol=1e-4, atol=1e-3)


SPCONV_STOCK_SCRIPT = textwrap.dedent(
    """
    import torch
    torch.set_num_threads(2)
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo
    generator = torch.Generator().manual_seed(0)
    cells = torch.unique(torch.randint(0, 48, (40000, 3), generator=generator), dim=0)
    indices = torch.cat([torch.zeros(len(cells), 1, dtype=torch.long), cells], 1).int()
    features = torch.randn(len(cells), 32, generator=generator)
    conv = spconv.SubMConv3d(32, 32, 3, bias=False, algo=ConvAlgo.Native)
    x = spconv.SparseConvTensor(features, indices, [48, 48, 48], 1)
    outputs = [conv(x).features for _ in range(3)]
    print(max((outputs[0] - o).abs().max().item() for o in outputs[1:]))
    """
)


@pytest.mark.skipif(SparseBackend.SPCONV not in OTHER_BACKENDS, reason="spconv not installed")
def test_unpatched_spconv_cpu_conv_is_not_repeatable_with_two_threads():
    """Documents why spconv_cpu_fixes exists: stock spconv (fresh process, no patch) gives different sums on
    repeated runs of the same conv with 2 threads. The race is timing-dependent, so a run where it does not
    show is skipped rather than failed."""
    result = subprocess.run(
        [sys.executable, "-c", SPCONV_STOCK_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    spread = float(result.stdout.strip().splitlines()[-1])
    if spread == 0.0:
        pytest.skip("the spconv scatter race did not show in this run")
    assert spread > 1e-3


@pytest.mark.skipif(SparseBackend.SPCONV not in OTHER_BACKENDS, reason="spconv not installed")
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_spconv_weight_layout_conversion_matches_spconv_modules(kernel_size):
    """A weight taken from spconv's own SubMConv3d, converted to ME layout, gives the module's output."""
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo

    from bifusion.model.sparse import spconv_cpu_fixes
    from bifusion.model.sparse.spconv_backend import me_kernel_to_spconv, spconv_kernel_to_me
    from bifusion.model.sparse.torch_backend import submanifold_conv

    spconv_cpu_fixes.install()  # spconv's module is used directly here; without the fix ~2 % of rows are wrong
    xyz, batch, point_features = scene(3, 4)
    voxels, _ = voxelize(xyz, batch, point_features, voxel_size=0.02)
    module = spconv.SubMConv3d(4, 6, kernel_size, bias=False, algo=ConvAlgo.Native)
    indices = voxels.coordinates.clone()
    indices[:, 1:] -= indices[:, 1:].amin(0)
    spatial_shape = (indices[:, 1:].amax(0) + 1).tolist()
    with torch.no_grad():
        expected = module(spconv.SparseConvTensor(voxels.features, indices, spatial_shape, 2)).features
    kernel = spconv_kernel_to_me(module.weight.detach())
    assert kernel.shape == (kernel_size**3, 4, 6)
    assert torch.equal(me_kernel_to_spconv(kernel), module.weight.detach())
    torch.testing.assert_close(submanifold_conv(voxels, kernel).features, expected, rtol=1e-5, atol=1e-5)
