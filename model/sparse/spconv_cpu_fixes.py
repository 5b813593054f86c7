"""Workarounds for two bugs of spconv 2.3.8's CPU path (the last release; spconv is unmaintained).

This is the project's only monkeypatch, kept here so that it is visible in one place. `spconv_backend`
calls `install()` the first time it convolves CPU tensors; nothing is patched when this package is
imported, and GPU code paths behave exactly as before (both replacements defer to the originals for
them). The patch is process-wide once installed, which is also what makes spconv correct on CPU for any
other caller in the process.

1. Backward on a machine without a CUDA device crashes. `spconv.pytorch.ops.indice_conv_backward` calls
   `get_current_stream()` (`torch.cuda.current_stream().cuda_stream`) before it takes its CPU branch
   (the forward got this fix upstream, traveller59/spconv#366; the backward did not). With a CPU-only torch
   it raises `AssertionError: Torch not compiled with CUDA enabled`; with a CUDA build of torch on a machine
   without a GPU, as on this project's development and CI machines, it raises
   `RuntimeError: Found no NVIDIA driver on your system`. Fix: `ops.get_current_stream` returns 0 (the
   stream argument is unused by the CPU branch) while CUDA is unavailable, else the real stream.
2. Wrong sums with more than one torch thread. `GatherCPU::scatter_add` (spconv/csrc/sparse/gather.py)
   declares its row pointers outside the `tv::kernel_1d` OpenMP lambda and captures them by reference,
   so threads overwrite each other's pointers: 0.7-1.8 % of output rows wrong, in forward and backward
   of every CPU convolution, whenever `torch.get_num_threads() > 1` (spconv's OpenMP team follows torch's
   thread count). Fix: `ops.SpconvOps` becomes a proxy whose `scatter_add_cpu` is torch's `index_add_`
   on zero-copy views of the same buffers; every other attribute is the real class's.

Scope: spconv's CPU wheel (`CPU_ONLY_BUILD`) runs CPU convolutions through the patched Python code. A CUDA
wheel runs CPU tensors through its C++ GEMM path instead, which this patch does not reach (untested).
"""

from __future__ import annotations

import threading

import torch

_install_lock = threading.Lock()
_installed = False


class _SpconvOpsWithSafeScatter:
    """Stands in for `spconv.core_cc.csrc.sparse.all.SpconvOps` inside `spconv.pytorch.ops`."""

    def __init__(self, spconv_ops: type) -> None:
        self._spconv_ops = spconv_ops

    def __getattr__(self, name: str):
        return getattr(self._spconv_ops, name)

    @staticmethod
    def scatter_add_cpu(out, source, indices) -> None:
        """out[indices[j]] += source[j] for j < len(indices), on the tensorview buffers (no copies)."""
        rows = torch.from_numpy(indices.numpy_view())
        target = torch.from_numpy(out.numpy_view())
        target.index_add_(0, rows, torch.from_numpy(source.numpy_view())[: rows.shape[0]])


def install() -> None:
    """Apply both fixes to `spconv.pytorch.ops` (idempotent, thread-safe)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from spconv.pytorch import ops

        real_get_current_stream = ops.get_current_stream

        def get_current_stream() -> int:
            return real_get_current_stream() if torch.cuda.is_available() else 0

        ops.get_current_stream = get_current_stream
        ops.SpconvOps = _SpconvOpsWithSafeScatter(ops.SpconvOps)
        _installed = True
