"""The CPU backend of ``sparselm.runtime.SparseLinear``: y2d = x2d @ W.T with the bitmask SIMD kernels.

    from sparselm.kernels.cpu.backend import register
    register()                      # SparseLinear on CPU now runs sparse_matmul (batch <= max_batch)
    register(act_quant=True)        # int8 layers: dynamic int8 activations + VNNI dot products

Dispatch: sparse for decode-sized batches (rows of x <= max_batch), dense otherwise (SparseLinear's fallback,
returned None).  Why 16: at batch 1 the kernel reads ~(1 - sparsity) of the dense bytes and wins; as the batch
grows the dense GEMM amortises its weight reads over more rows and becomes compute-bound, where the per-column
mask decode is overhead (benchmarks/results/cpu_kernels.json holds the measured crossover).
"""

from __future__ import annotations

import torch

from sparselm.kernels.cpu.spmm import best_isa, check_format, sparse_matmul

MAX_BATCH = 16  # rows of x; above this the dense GEMM (MKL) wins on this 2-core EPYC (see module docstring)
_options = {"max_batch": MAX_BATCH, "act_quant": False, "threads": None}


def cpu_backend(x2d: torch.Tensor, layer) -> torch.Tensor | None:
    """Backend function for ``register_backend("cpu", ...)``: ``layer`` is a SparseLinear (its buffers bitmask,
    values, row_ptr, scales, group_size, out_features, in_features, kernel_state).  None declines (dense)."""
    if x2d.device.type != "cpu" or x2d.shape[0] > _options["max_batch"] or layer.values.device.type != "cpu":
        return None
    if x2d.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None
    if best_isa() == "torch":  # no compiled kernels: SparseLinear's cached dense weight beats decoding per call
        return None
    if not layer.kernel_state.get("cpu_format_checked"):
        # sparse_matmul trusts row_ptr against the mask popcounts; check once per layer (cleared on .to()).
        check_format(layer.bitmask, layer.values, layer.row_ptr, layer.out_features, layer.in_features)
        layer.kernel_state["cpu_format_checked"] = True
    act_quant = _options["act_quant"] and layer.values.dtype == torch.int8
    return sparse_matmul(x2d, layer.bitmask, layer.values, layer.row_ptr, layer.out_features, layer.in_features,
                         scales=layer.scales, group_size=layer.group_size, threads=_options["threads"],
                         act_quant=act_quant)


def register(max_batch: int = MAX_BATCH, act_quant: bool = False, threads: int | None = None) -> None:
    """Register ``cpu_backend`` with ``sparselm.runtime`` and set its options (see the module docstring)."""
    if max_batch < 0:
        raise ValueError(f"max_batch: must be >= 0, got {max_batch}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    from sparselm.runtime.backends import register_backend  # runtime imports compress; keep kernels import-light

    _options.update(max_batch=max_batch, act_quant=act_quant, threads=threads)
    register_backend("cpu", cpu_backend)
