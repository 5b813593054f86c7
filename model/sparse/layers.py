"""nn.Modules over `SparseTensor` with MinkowskiEngine's parameter names, shapes and initialisation.

A module's parameters do not depend on the backend: `kernel` is ME's `(K, Cin, Cout)` (`(Cin, Cout)` for
k = 1), BatchNorm is a wrapped `nn.BatchNorm1d` named `bn` (keys `<name>.bn.weight/bias/running_mean/
running_var/num_batches_tracked`), and no convolution has a bias (Res16UNet34C uses none). So an ME
checkpoint loads as is, and a state_dict moves between backends unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bifusion.model.sparse.backend import SparseBackend, as_backend, backend_module
from bifusion.model.sparse.tensor import SparseTensor


class SubmanifoldConv3d(nn.Module):
    """Stride-1 conv with odd `kernel_size`, output on the input coordinates (ME MinkowskiConvolution, stride 1).

    Parameter `kernel (kernel_size^3, in_channels, out_channels)` in ME offset order (x fastest).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, backend: SparseBackend | str) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SubmanifoldConv3d needs an odd kernel_size, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.backend = as_backend(backend)
        self.kernel = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        _me_uniform_init(self.kernel, fan=in_channels * kernel_size**3)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return backend_module(self.backend).submanifold_conv(x, self.kernel)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, backend={self.backend.value}"


class DownsampleConv3d(nn.Module):
    """k=2 s=2 conv from tensor stride s to 2s (ME MinkowskiConvolution, kernel_size=2, stride=2).

    Parameter `kernel (8, in_channels, out_channels)`, offsets (0|1)^3 from the coarse voxel's corner.
    """

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend | str) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backend = as_backend(backend)
        self.kernel = nn.Parameter(torch.empty(8, in_channels, out_channels))
        _me_uniform_init(self.kernel, fan=in_channels * 8)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return backend_module(self.backend).downsample_conv(x, self.kernel)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=2, stride=2, backend={self.backend.value}"


class UpsampleConv3d(nn.Module):
    """k=2 s=2 transposed conv from stride s back onto the existing stride-s/2 coordinates (ME
    MinkowskiConvolutionTranspose, non-generative). Parameter `kernel (8, in_channels, out_channels)`."""

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend | str) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backend = as_backend(backend)
        self.kernel = nn.Parameter(torch.empty(8, in_channels, out_channels))
        _me_uniform_init(self.kernel, fan=out_channels * 8)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return backend_module(self.backend).upsample_conv(x, self.kernel)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=2, stride=2, backend={self.backend.value}"


class PointwiseConv3d(nn.Module):
    """k=1 conv, a per-voxel linear map; ME stores its kernel 2-D: `kernel (in_channels, out_channels)`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel = nn.Parameter(torch.empty(in_channels, out_channels))
        _me_uniform_init(self.kernel, fan=in_channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(x.features @ self.kernel)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=1"


class SparseBatchNorm(nn.Module):
    """BatchNorm over the voxels' features (ME MinkowskiBatchNorm; torch's momentum convention)."""

    def __init__(self, num_features: int, momentum: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(self.bn(x.features))


class SparseReLU(nn.Module):
    """ReLU on the voxels' features; `inplace` as ME's MinkowskiReLU(inplace=True) in Res16UNet."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_features(torch.relu_(x.features) if self.inplace else torch.relu(x.features))


def _me_uniform_init(kernel: nn.Parameter, fan: int) -> None:
    """MinkowskiEngine's `reset_parameters`: U(-1/sqrt(fan), 1/sqrt(fan)), fan = channels x kernel volume."""
    bound = 1.0 / math.sqrt(fan)
    with torch.no_grad():
        kernel.uniform_(-bound, bound)
