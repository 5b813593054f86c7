"""The pure-PyTorch convolutions: gradients (gradcheck) and values against dense torch convolutions.

The dense reference scatters the sparse input into a grid and runs `conv3d` / `conv_transpose3d` with the
ME-layout kernel rearranged to torch's `(Cout, Cin, kx, ky, kz)` by ME's rule (offset index
iz*k*k + iy*k + ix), so these tests pin the offset order to MinkowskiEngine's convention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bifusion.model.sparse import SparseTensor, torch_backend
from bifusion.model.sparse.torch_backend import downsample_conv, submanifold_conv, upsample_conv


def random_coordinates(num: int, extent: int, stride: int = 1, batches: int = 2, seed: int = 0) -> torch.Tensor:
    """Unique int32 (batch, x, y, z) rows, xyz multiples of `stride` in [-extent, extent) * stride."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randint(-extent, extent, (num, 3), generator=generator)
    batch = torch.randint(0, batches, (num, 1), generator=generator)
    rows = torch.unique(torch.cat([batch, grid * stride], dim=1), dim=0)
    return rows.to(torch.int32)


def me_kernel_to_dense(kernel: torch.Tensor) -> torch.Tensor:
    """ME kernel (k^3, Cin, Cout) -> conv3d weight (Cout, Cin, kx, ky, kz) for grids indexed [x, y, z]."""
    volume, in_channels, out_channels = kernel.shape
    k = round(volume ** (1 / 3))
    return kernel.reshape(k, k, k, in_channels, out_channels).permute(4, 3, 2, 1, 0)


def to_dense(coordinates: torch.Tensor, features: torch.Tensor, stride: int, corner: torch.Tensor, size: list[int]):
    """Dense (B, C, X, Y, Z) grid of a sparse level; cell = xyz / stride - corner."""
    batches = int(coordinates[:, 0].max()) + 1
    dense = features.new_zeros(batches, features.shape[1], *size)
    cells = coordinates[:, 1:].long() // stride - corner
    dense[coordinates[:, 0].long(), :, cells[:, 0], cells[:, 1], cells[:, 2]] = features
    return dense


def read_dense(dense: torch.Tensor, coordinates: torch.Tensor, stride: int, corner: torch.Tensor) -> torch.Tensor:
    cells = coordinates[:, 1:].long() // stride - corner
    return dense[coordinates[:, 0].long(), :, cells[:, 0], cells[:, 1], cells[:, 2]]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_conv_matches_dense_conv3d(kernel_size):
    coordinates = random_coordinates(400, extent=5, stride=2)  # a stride-2 level with negative coordinates
    features = torch.randn(len(coordinates), 3, dtype=torch.float64)
    kernel = torch.randn(kernel_size**3, 3, 4, dtype=torch.float64)
    out = submanifold_conv(SparseTensor(coordinates, features, tensor_stride=2), kernel)

    corner = torch.full((3,), -5)
    dense = to_dense(coordinates, features, 2, corner, [10, 10, 10])
    reference = F.conv3d(dense, me_kernel_to_dense(kernel), padding=kernel_size // 2)
    assert torch.equal(out.coordinates, coordinates)
    torch.testing.assert_close(out.features, read_dense(reference, coordinates, 2, corner), rtol=0, atol=1e-12)


def test_downsample_and_upsample_match_dense_strided_convolutions():
    coordinates = random_coordinates(500, extent=6)
    features = torch.randn(len(coordinates), 3, dtype=torch.float64)
    down_kernel = torch.randn(8, 3, 5, dtype=torch.float64)
    up_kernel = torch.randn(8, 5, 2, dtype=torch.float64)
    fine = SparseTensor(coordinates, features)
    coarse = downsample_conv(fine, down_kernel)
    back = upsample_conv(coarse, up_kernel)

    corner = torch.full((3,), -6)  # even, so fine cell parity = coordinate parity
    dense = to_dense(coordinates, features, 1, corner, [12, 12, 12])
    dense_coarse = F.conv3d(dense, me_kernel_to_dense(down_kernel), stride=2)
    # the coarse level is exactly the set of parents floor(x / 2) * 2, at stride 2
    parents = torch.cat([coordinates[:, :1], coordinates[:, 1:].div(2, rounding_mode="floor") * 2], dim=1)
    assert coarse.tensor_stride == 2
    assert torch.equal(torch.unique(parents, dim=0), torch.unique(coarse.coordinates, dim=0))
    torch.testing.assert_close(
        coarse.features, read_dense(dense_coarse, coarse.coordinates, 2, corner // 2), rtol=0, atol=1e-12
    )

    dense_up = F.conv_transpose3d(
        to_dense(coarse.coordinates, coarse.features, 2, corner // 2, [6, 6, 6]),
        me_kernel_to_dense(up_kernel).transpose(0, 1),
        stride=2,
    )
    assert back.coordinates is coordinates and back.tensor_stride == 1
    torch.testing.assert_close(back.features, read_dense(dense_up, coordinates, 1, corner), rtol=0, atol=1e-12)


def small_level(seed: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    coordinates = random_coordinates(60, extent=3, seed=seed)
    features = torch.randn(len(coordinates), channels, dtype=torch.float64, requires_grad=True)
    return coordinates, features


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submanifold_conv_gradcheck(kernel_size):
    coordinates, features = small_level(1, 2)
    kernel = torch.randn(kernel_size**3, 2, 3, dtype=torch.float64, requires_grad=True)
    level = SparseTensor(coordinates, features.detach())

    def conv(f, w):
        return submanifold_conv(level.replace_features(f), w).features

    # fast mode (a random vector-Jacobian product instead of the full Jacobian) keeps k=5 under a second
    assert torch.autograd.gradcheck(conv, (features, kernel), fast_mode=kernel_size == 5)


def test_downsample_conv_gradcheck():
    coordinates, features = small_level(2, 2)
    kernel = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    level = SparseTensor(coordinates, features.detach())

    def conv(f, w):
        return downsample_conv(level.replace_features(f), w).features

    assert torch.autograd.gradcheck(conv, (features, kernel))


def test_upsample_conv_gradcheck():
    coordinates, features = small_level(3, 2)
    fine = SparseTensor(coordinates, features.detach())
    coarse = downsample_conv(fine, torch.randn(8, 2, 2, dtype=torch.float64))
    coarse_features = torch.randn(coarse.num_voxels, 2, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)

    def conv(f, w):
        return upsample_conv(coarse.replace_features(f), w).features

    assert torch.autograd.gradcheck(conv, (coarse_features, kernel))


def test_kernel_maps_are_built_once_per_level(monkeypatch):
    built = []

    def counting(build):
        def wrapper(*args):
            built.append(build.__name__)
            return build(*args)

        return wrapper

    monkeypatch.setattr(torch_backend, "submanifold_map", counting(torch_backend.submanifold_map))
    monkeypatch.setattr(torch_backend, "downsample_map", counting(torch_backend.downsample_map))
    coordinates = random_coordinates(300, extent=5)
    level = SparseTensor(coordinates, torch.randn(len(coordinates), 2))
    first = submanifold_conv(level, torch.randn(27, 2, 2))
    submanifold_conv(first, torch.randn(27, 2, 2))
    coarse = downsample_conv(level, torch.randn(8, 2, 2))
    upsample_conv(coarse, torch.randn(8, 2, 2))
    assert sorted(built) == ["downsample_map", "submanifold_map"]
