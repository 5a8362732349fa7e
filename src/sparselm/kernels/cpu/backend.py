"""The CPU backend of ``sparselm.runtime.SparseLinear``: y2d = x2d @ W.T with the bitmask SIMD kernels.

    from sparselm.kernels.cpu.backend import register
    register()                      # SparseLinear on CPU now runs sparse_matmul (batch <= max_batch)
    register(act_quant=True)        # int8 layers: dynamic int8 activations + VNNI dot products
    register(measure=False)         # always the sparse kernel up to max_batch (no timing)

Dispatch: sparse for decode-sized batches (rows of x <= max_batch), dense otherwise (SparseLinear's fallback,
returned None).  Why 16: at batch 1 the kernel reads ~(1 - sparsity) of the dense bytes and wins; as the batch
grows the dense GEMM amortises its weight reads over more rows and becomes compute-bound, where the per-column
mask decode is overhead (benchmarks/results/cpu_kernels.json holds the measured crossover).

Within that, `measure` (on by default) times the kernel against the dense product once per (shape, batch bucket,
dtypes) and keeps the faster (`decisions()` lists them). Why: the crossover depends on the host. On the 2-core
AMD EPYC the kernels were built on, 50% fp32 layers decoded 1.42x dense; on a 2-core Intel Xeon (AVX-512 fp16)
the same demo model ran 0.75-0.87x dense, while 75% fp32 still ran 1.32x and int8 2.10x (session 28).
"""

from __future__ import annotations

import time

import torch

from sparselm.kernels.cpu.spmm import best_isa, check_format, sparse_matmul

MAX_BATCH = 16  # rows of x; above this the dense GEMM (MKL) wins on this 2-core EPYC (see module docstring)
_options = {"max_batch": MAX_BATCH, "act_quant": False, "threads": None, "measure": True}
_decisions: dict[tuple, dict] = {}  # key -> {"path": "sparse" | "dense", "sparse_ms", "dense_ms"}


def _bucket(rows: int) -> int:
    return 1 << (rows - 1).bit_length()


def _median_ms(kind: str, fn, reps: int = 5) -> float:
    """Median wall ms of `reps` calls of fn (kind: "sparse" or "dense", for tests that stand in for the clock)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[reps // 2]


_ROTATE_BYTES = 64 << 20  # weights cycled through per timing: past the last-level cache, as a decode step reads them


def _sparse_is_faster(x2d: torch.Tensor, layer, act_quant: bool) -> bool:
    """The kernel against F.linear on the dense weight, each over copies of the weights that together exceed the
    cache (a decode step streams every layer from memory; a hot loop over one copy would favour the dense GEMM),
    alternating 3 rounds, once per key; ties go to the kernel (it reads fewer bytes). The dense weight for the
    timing is transient: a layer keeps a dense copy only once it runs densely. A layer built with
    cache_dense=False always takes the kernel: its dense path would decompress on every call."""
    if layer.cache_dense is False:
        return True
    key = (layer.out_features, layer.in_features, _bucket(x2d.shape[0]), str(layer.values.dtype), layer.group_size,
           str(x2d.dtype), act_quant, _options["threads"])
    if key not in _decisions:
        from sparselm.compress import decompress

        w = decompress(layer.compressed, x2d.dtype)
        n = max(2, min(32, -(-_ROTATE_BYTES // (w.numel() * w.element_size()))))
        dense_w = [w] + [w.clone() for _ in range(n - 1)]
        bufs = [(layer.bitmask, layer.values, layer.row_ptr, layer.scales)] + [
            tuple(t.clone() if t is not None else None for t in (layer.bitmask, layer.values, layer.row_ptr,
                                                                   layer.scales)) for _ in range(n - 1)]
        sparse = lambda: [_sparse(x2d, layer, act_quant, b) for b in bufs]  # noqa: E731
        dense = lambda: [torch.nn.functional.linear(x2d, d) for d in dense_w]  # noqa: E731
        sparse(), dense()  # first calls: pool start-up, allocations
        s_ms, d_ms = [], []
        for _ in range(3):
            s_ms.append(_median_ms("sparse", sparse) / n)
            d_ms.append(_median_ms("dense", dense) / n)
        s, d = sorted(s_ms)[1], sorted(d_ms)[1]
        _decisions[key] = {"path": "sparse" if s <= d else "dense", "sparse_ms": round(s, 4), "dense_ms": round(d, 4)}
        del dense_w, bufs
    return _decisions[key]["path"] == "sparse"


def decisions() -> dict[str, dict]:
    """The measured choices so far, "NxK b<bucket> <values>": {"path", "sparse_ms", "dense_ms"}."""
    return {f"{k[0]}x{k[1]} b{k[2]} {k[3].replace('torch.', '')}": v for k, v in _decisions.items()}


def _sparse(x2d: torch.Tensor, layer, act_quant: bool, bufs: tuple | None = None) -> torch.Tensor:
    """The kernel on the layer's arrays, or on copies of them (bufs: bitmask, values, row_ptr, scales)."""
    bitmask, values, row_ptr, scales = bufs or (layer.bitmask, layer.values, layer.row_ptr, layer.scales)
    return sparse_matmul(x2d, bitmask, values, row_ptr, layer.out_features, layer.in_features, scales=scales,
                         group_size=layer.group_size, threads=_options["threads"], act_quant=act_quant)


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
    if _options["measure"] and not _sparse_is_faster(x2d, layer, act_quant):
        return None
    return _sparse(x2d, layer, act_quant)


def register(max_batch: int = MAX_BATCH, act_quant: bool = False, threads: int | None = None,
             measure: bool = True) -> None:
    """Register ``cpu_backend`` with ``sparselm.runtime`` and set its options (see the module docstring); options
    that change what a timing measures also forget the recorded decisions."""
    if max_batch < 0:
        raise ValueError(f"max_batch: must be >= 0, got {max_batch}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    from sparselm.runtime.backends import register_backend  # runtime imports compress; keep kernels import-light

    if (act_quant, threads) != (_options["act_quant"], _options["threads"]):
        _decisions.clear()
    _options.update(max_batch=max_batch, act_quant=act_quant, threads=threads, measure=measure)
    register_backend("cpu", cpu_backend)
