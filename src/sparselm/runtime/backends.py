"""Registry of sparse matmul backends, one per device type (the plug-in point for the CPU kernels).

A backend computes y2d = x2d @ W.T for a CompressedTensor W that lives on x2d's device, or returns None to
decline (then SparseLinear falls back to a dense matmul). Example (the CPU helper's kernel):

    from sparselm.runtime import register_backend
    def cpu_backend(x2d, ct):
        return sparse_matmul(x2d, ct.bitmask, ct.values, ct.row_ptr, *ct.shape, scales=ct.scales,
                             group_size=ct.group_size)
    register_backend("cpu", cpu_backend)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from sparselm.compress.format import CompressedTensor

BackendFn = Callable[[torch.Tensor, CompressedTensor], Optional[torch.Tensor]]
_BACKENDS: dict[str, BackendFn] = {}


def register_backend(device_type: str, fn: BackendFn | None) -> None:
    """Use `fn` for SparseLinear inputs on `device_type` ("cpu", "cuda", ...); None unregisters."""
    if fn is None:
        _BACKENDS.pop(device_type, None)
    else:
        _BACKENDS[device_type] = fn


def get_backend(device_type: str) -> BackendFn | None:
    """The registered backend for `device_type`, loading the built-in CUDA one on first use."""
    if device_type == "cuda" and "cuda" not in _BACKENDS:
        from sparselm.runtime.gpu_backend import cuda_backend  # imports triton: only where CUDA is used

        _BACKENDS["cuda"] = cuda_backend
    return _BACKENDS.get(device_type)


def registered_backends() -> list[str]:
    return sorted(_BACKENDS)
