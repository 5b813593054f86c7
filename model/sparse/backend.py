"""Which sparse-convolution implementation runs the convolutions, chosen explicitly by the caller.

TORCH (default): pure PyTorch, nothing to install, CPU and CUDA. SPCONV: spconv 2.x (`pip install spconv`
on CPU, `spconv-cu126` on GPU). MINKOWSKI: MinkowskiEngine 0.5.x, a parity backend used only when
`import MinkowskiEngine` works; it is not a project dependency.
"""

from __future__ import annotations

import enum
import importlib.util
from types import ModuleType


class SparseBackend(enum.Enum):
    TORCH = "torch"
    SPCONV = "spconv"
    MINKOWSKI = "minkowski"


def as_backend(backend: SparseBackend | str) -> SparseBackend:
    """`backend` as the enum; a string must be one of the enum values."""
    if isinstance(backend, SparseBackend):
        return backend
    try:
        return SparseBackend(backend)
    except ValueError:
        choices = ", ".join(repr(b.value) for b in SparseBackend)
        raise ValueError(f"unknown sparse backend {backend!r}; expected one of {choices}") from None


def is_available(backend: SparseBackend | str) -> bool:
    """Whether the backend's library can be imported here (the pure-PyTorch one always can)."""
    backend = as_backend(backend)
    if backend is SparseBackend.TORCH:
        return True
    package = "spconv" if backend is SparseBackend.SPCONV else "MinkowskiEngine"
    if importlib.util.find_spec(package) is None:
        return False
    try:
        backend_module(backend)
    except ImportError:
        return False
    return True


def available_backends() -> list[SparseBackend]:
    """The backends that can run here, the default (TORCH) first."""
    return [b for b in SparseBackend if is_available(b)]


def backend_module(backend: SparseBackend | str) -> ModuleType:
    """The module implementing `submanifold_conv`, `downsample_conv`, `upsample_conv` for `backend`.

    Imports the backend's library on first use; raises ImportError with the install hint when it is missing.
    """
    backend = as_backend(backend)
    if backend is SparseBackend.TORCH:
        from bifusion.model.sparse import torch_backend

        return torch_backend
    if backend is SparseBackend.SPCONV:
        try:
            from bifusion.model.sparse import spconv_backend
        except ImportError as error:
            raise ImportError(
                f"sparse backend 'spconv' needs spconv 2.3 (pip install spconv, or spconv-cu126 on GPU): {error}"
            ) from error
        return spconv_backend
    try:
        from bifusion.model.sparse import minkowski_backend
    except ImportError as error:
        raise ImportError(
            "sparse backend 'minkowski' needs MinkowskiEngine 0.5.x, which is not a project dependency "
            f"(see shared/reference/sparse_backend.md for the build recipe): {error}"
        ) from error
    return minkowski_backend
