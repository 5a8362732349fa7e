"""Registry of sparse matmul backends, one per device type (the plug-in point for the CPU kernels).

A backend is fn(x2d, layer) -> y2d | None: y2d = x2d @ W.T (no bias) for the SparseLinear `layer` whose buffers
(bitmask, values, row_ptr, scales; `layer.compressed` bundles them) live on x2d's device; None declines and
SparseLinear falls back to a dense matmul. `layer.kernel_state` is a dict the backend may cache derived data in
(cleared when the module moves). Example (what sparselm.kernels.cpu.backend does):

    from sparselm.runtime import register_backend
    def cpu_backend(x2d, layer):
        ct = layer.compressed
        return sparse_matmul(x2d, ct.bitmask, ct.values, ct.row_ptr, *ct.shape, scales=ct.scales,
                             group_size=ct.group_size)
    register_backend("cpu", cpu_backend)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

BackendFn = Callable[[torch.Tensor, Any], Optional[torch.Tensor]]  # (x2d, SparseLinear) -> y2d | None
_BACKENDS: dict[str, BackendFn] = {}


def register_backend(device_type: str, fn: BackendFn | None) -> None:
    """Use `fn` for SparseLinear inputs on `device_type` ("cpu", "cuda", ...); None unregisters."""
    if fn is None:
        _BACKENDS.pop(device_type, None)
    else:
        _BACKENDS[device_type] = fn


def get_backend(device_type: str) -> BackendFn | None:
    """The registered backend for `device_type`, loading the built-in CUDA / CPU one on first use.

    The CPU backend JIT-compiles its SIMD kernels on first call (seconds, cached) and declines (dense fallback)
    for batches above its limit or when no compiler is available; SPARSELM_CPU_DENSE=1 keeps CPU layers dense.
    """
    if device_type == "cuda" and "cuda" not in _BACKENDS:
        from sparselm.runtime.gpu_backend import cuda_backend  # imports triton: only where CUDA is used

        _BACKENDS["cuda"] = cuda_backend
    if device_type == "cpu" and "cpu" not in _BACKENDS and os.environ.get("SPARSELM_CPU_DENSE") != "1":
        from sparselm.kernels.cpu.backend import cpu_backend

        _BACKENDS["cpu"] = cpu_backend
    return _BACKENDS.get(device_type)


def registered_backends() -> list[str]:
    return sorted(_BACKENDS)
