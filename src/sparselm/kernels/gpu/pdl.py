"""Programmatic dependent launch (Hopper): a decode step's kernels overlap their launch with the kernel before.

    with programmatic_launch(supported(device)):   # StaticDecoder wraps its warm-up and graph capture in this
        ... kernels launched here carry the attribute ...

Why: a batch-1 decode step is ~300 short kernels (products of 5-30 us, elementwise kernels of 1-5 us), and each pays
its launch, block start and x staging in full after the previous kernel ends: ~2.2 us per sparse product in the 7B
step (docs/notes/gpu.md, session 23). With the launch attribute (cudaLaunchAttributeProgrammaticStreamSerialization;
Triton's launch_pdl) a kernel may be scheduled while the one before still runs; every kernel here calls
`griddepcontrol.launch_dependents` at its start and `griddepcontrol.wait` before its first dependent load, so
results are those of a serial launch. CUDA graphs captured from the stream keep the programmatic edges.

The CUDA C++ libraries (nm_gemv.cu, grp8_gemv.cu, delta4_gemv.cu) read one flag per library (`sl_set_pdl`), set
here before each launch when it changed; the Triton kernels take it as a constexpr and a launch option.
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager

import torch

_STATE = threading.local()
_LIB_FLAGS: dict[int, int] = {}  # id(library) -> the flag last set in it


def enabled() -> bool:
    """Whether launches on this thread carry the programmatic-serialization attribute."""
    return getattr(_STATE, "on", False)


@contextmanager
def programmatic_launch(on: bool = True):
    """Launches inside carry the attribute (on=True) or not; the previous setting is restored on exit."""
    prev = enabled()
    _STATE.on = bool(on)
    try:
        yield
    finally:
        _STATE.on = prev


def supported(device: torch.device | str | None = None) -> bool:
    """A CUDA device of compute capability >= 9.0, Triton built for CUDA with the launch_pdl option, and not the
    Triton interpreter (which has no grid dependency control)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return False
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] < 9:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


def sync(lib: ctypes.CDLL) -> None:
    """Set a CUDA C++ library's launch flag to this thread's setting (a ctypes call only when it changes). Libraries
    without the flag (no gemv_common.cuh: their kernels never wait, so they always launch normally) are left alone."""
    on = int(enabled())
    if _LIB_FLAGS.get(id(lib)) == on:
        return
    setter = getattr(lib, "sl_set_pdl", None)
    if setter is not None:
        setter.restype, setter.argtypes = None, [ctypes.c_int]
        setter(on)
    _LIB_FLAGS[id(lib)] = on


def triton_options() -> dict:
    """Extra launch options for a Triton kernel taking a PDL constexpr: {"PDL": bool[, "launch_pdl": True]}."""
    return {"PDL": True, "launch_pdl": True} if enabled() else {"PDL": False}
