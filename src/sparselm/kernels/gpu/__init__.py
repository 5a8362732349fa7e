"""Triton kernels for y = x @ W.T with W in sparselm-bitmask v1 (see bitmask_spmm.py for the decode math).

    from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, spmm
    y = spmm(x, PackedBitmask.from_compressed(ct), SpmmConfig(block_n=16))
"""

import os
import sys

import torch


def _interpret_stdlib() -> None:
    """Re-wrap triton.language's own @triton.jit helpers (tl.sum, tl.cumsum, tl.zeros, ...) for the interpreter.

    Triton fixes compiled-vs-interpreted when each function is decorated; if something imported triton before
    TRITON_INTERPRET was set (transformers does, when it loads a model class), its standard library stays
    compiled-only and interpreted kernels that call it fail. Wrapping those helpers the way interpret mode
    would have restores them.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for mod in {tl, tl.core, tl.standard, tl.math, getattr(tl, "random", tl)}:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and not isinstance(obj, InterpretedFunction):
                setattr(mod, name, InterpretedFunction(obj.fn))


if not torch.cuda.is_available():
    # No GPU: Triton runs kernels only in its interpreter (numpy on the CPU). CI runs the kernels this way.
    _loaded = "triton" in sys.modules
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if _loaded and os.environ["TRITON_INTERPRET"] == "1":
        _interpret_stdlib()

from sparselm.kernels.gpu.ops import PackedBitmask, SpmmConfig, decompress_gpu, spmm  # noqa: E402

__all__ = ["PackedBitmask", "SpmmConfig", "decompress_gpu", "spmm"]
