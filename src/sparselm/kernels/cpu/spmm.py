"""y = x @ W.T for a bitmask-compressed W on the CPU (SIMD kernels in sparse_matmul.cpp).

    y[b, n] = sum_{k : mask[n, k]} x[b, k] * v(n, k),      v(n, k) = values[i]            (fp32 / bf16 / fp16)
                                                           v(n, k) = values[i] * scales[n, k // group_size]   (int8)

where i is the rank of (n, k) among the nonzeros in row-major order.  The kernel reads ~(1 - sparsity) of the
value bytes of the dense weight plus 1 bit per position, so at batch 1 (memory bound) it beats a dense GEMV once
sparsity is high enough.  ISA paths: "avx512" > "avx2" > "scalar" (compiled C), and "torch" (pure torch
fallback when no compiler is available: decodes W each call, correct but slow).
"""

from __future__ import annotations

import functools
import os

import torch

from sparselm.kernels.cpu import _build

ISAS = ("avx512", "avx2", "scalar", "torch")
_ISA_CODE = {"scalar": 0, "avx2": 1, "avx512": 2}
_VTYPE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.int8: 3}
_ACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_num_threads: int | None = None


def available_isa() -> list[str]:
    """Kernel paths usable on this machine, fastest first, e.g. ``["avx512", "avx2", "scalar", "torch"]``."""
    return list(_available())


@functools.lru_cache(maxsize=1)
def _available() -> tuple[str, ...]:
    lib = _build.load()
    if lib is None:
        return ("torch",)
    flags = lib.sl_isa_flags()
    out = tuple(name for name in ("avx512", "avx2") if flags >> _ISA_CODE[name] & 1)
    return out + ("scalar", "torch")


def best_isa() -> str:
    """The path used when none is requested: ``$SPARSELM_CPU_ISA`` if set, else the fastest available."""
    forced = os.environ.get("SPARSELM_CPU_ISA")
    if forced:
        return _check_isa(forced)
    return _available()[0]


def _check_isa(isa: str) -> str:
    if isa not in ISAS:
        raise ValueError(f"isa: unknown kernel path {isa!r}; expected one of {ISAS}")
    if isa not in _available():
        raise ValueError(f"isa: path {isa!r} is not available on this machine (available: {available_isa()})")
    return isa


def set_num_threads(threads: int | None) -> None:
    """Default thread count of ``sparse_matmul`` (None: follow ``torch.get_num_threads()``)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    global _num_threads
    _num_threads = threads


def get_num_threads() -> int:
    """Thread count used when ``sparse_matmul(threads=None)``."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def _validate(x, bitmask, values, row_ptr, N, K, scales, group_size) -> int:
    """Cheap O(1)-ish checks (shapes, dtypes, ends of row_ptr); returns the number of int8 groups per row."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _ACT_DTYPES:
        raise TypeError(f"x: expected a float32/bfloat16/float16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x: last dimension must be K={K}, got shape {tuple(x.shape)}")
    if N < 0 or K < 0:
        raise ValueError(f"N, K: must be >= 0, got N={N}, K={K}")
    words = (K + 31) // 32
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (N, 4 * words):
        raise ValueError(f"bitmask: expected uint8 of shape {(N, 4 * words)}, got {bitmask.dtype} "
                         f"{tuple(bitmask.shape)}")
    if values.dtype not in _VTYPE or values.dim() != 1:
        raise ValueError(f"values: expected a 1-D float32/bfloat16/float16/int8 tensor, got {values.dtype} "
                         f"{tuple(values.shape)}")
    if row_ptr.dtype != torch.int64 or tuple(row_ptr.shape) != (N + 1,):
        raise ValueError(f"row_ptr: expected int64 of shape {(N + 1,)}, got {row_ptr.dtype} {tuple(row_ptr.shape)}")
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel():
        raise ValueError(f"row_ptr: must start at 0 and end at values.numel()={values.numel()}, got "
                         f"{int(row_ptr[0])}..{int(row_ptr[-1])}")
    for name, t in (("x", x), ("bitmask", bitmask), ("values", values), ("row_ptr", row_ptr)):
        if t.device.type != "cpu":
            raise ValueError(f"{name}: must be a CPU tensor, got device {t.device}")
    if values.dtype != torch.int8:
        if scales is not None:
            raise ValueError("scales: only int8 values take scales")
        return 0
    if scales is None:
        raise ValueError("scales: required for int8 values")
    if group_size is None:
        if scales.dim() != 2 or scales.shape[1] != 1:
            raise ValueError("group_size: required when scales has more than one column")
        group_size = max(K, 1)
    if group_size < 1:
        raise ValueError(f"group_size: must be >= 1, got {group_size}")
    G = (K + group_size - 1) // group_size
    if scales.dtype != torch.float32 or tuple(scales.shape) != (N, max(G, 1)):
        raise ValueError(f"scales: expected float32 of shape {(N, max(G, 1))}, got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    return max(G, 1)


def sparse_matmul(x: torch.Tensor, bitmask: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, N: int,
                  K: int, scales: torch.Tensor | None = None, group_size: int | None = None,
                  threads: int | None = None, isa: str | None = None, act_quant: bool = False) -> torch.Tensor:
    """y = x @ W.T with W given by (bitmask, values, row_ptr[, scales, group_size]) of shape (N, K).

    x: (..., K) float32 / bfloat16 / float16; returns (..., N) in x's dtype (accumulation in fp32).
    threads: worker threads over rows (default ``get_num_threads()``).  isa: force a path from ``ISAS``
    (default ``best_isa()``).  act_quant (int8 values only): quantize each row of x to int8 on the fly
    (symmetric, scale max|x|/127) and use exact integer dot products (AVX-512 VNNI where available, the same
    arithmetic emulated elsewhere): ~4x fewer instructions than dequantizing W, at activation-rounding error
    (~0.5% relative).  Raises ValueError/TypeError naming the bad argument.
    """
    G = _validate(x, bitmask, values, row_ptr, N, K, scales, group_size)
    if G and group_size is None:
        group_size = max(K, 1)
    if act_quant and values.dtype != torch.int8:
        raise ValueError(f"act_quant: needs int8 values, got {values.dtype}")
    isa = _check_isa(isa) if isa is not None else best_isa()
    threads = get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if isa == "torch":
        xq = _quantize_rows(x2.float()) if act_quant else x2
        return _torch_fallback(xq, bitmask, values, row_ptr, N, K, scales, group_size).to(x.dtype).reshape(*lead, N)
    lib = _build.load()
    words = (K + 31) // 32
    B = x2.shape[0]
    # fp32, contiguous, zero-padded to whole 64-column steps: the SIMD loops read x a step at a time.
    kpad = 64 * ((K + 63) // 64)
    if K != kpad or x2.dtype != torch.float32 or not x2.is_contiguous():
        xp = torch.zeros(B, kpad, dtype=torch.float32)
        xp[:, :K] = x2
    else:
        xp = x2
    y = torch.empty(B, N, dtype=torch.float32)
    bitmask, values, row_ptr = bitmask.contiguous(), values.contiguous(), row_ptr.contiguous()
    sc = scales.contiguous() if scales is not None else None
    rc = lib.sl_spmm(_ISA_CODE[isa], _VTYPE[values.dtype], xp.data_ptr(), xp.shape[1], B, bitmask.data_ptr(), words,
                     values.data_ptr(), values.numel(), row_ptr.data_ptr(), N, K,
                     sc.data_ptr() if sc is not None else None, G, group_size or 0, y.data_ptr(), N, threads,
                     1 if act_quant else (2 if x2.dtype == torch.bfloat16 else 0))
    if rc != 0:
        raise RuntimeError(f"sl_spmm failed with code {rc} (isa={isa}, values={values.dtype}, N={N}, K={K})")
    return (y if x.dtype == torch.float32 else y.to(x.dtype)).reshape(*lead, N)


def check_format(bitmask: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, N: int, K: int) -> None:
    """Full check that row_ptr matches the mask popcounts and padding bits are clear (O(N*K/8), ~0.1 ms per
    4096x4096 layer with the C library).  ``sparse_matmul`` trusts this invariant (it only checks shapes and the
    ends of row_ptr per call), so run it once when a layer is loaded; raises ValueError naming the row."""
    _validate(torch.zeros(K), bitmask, values, row_ptr, N, K, torch.ones(N, 1) if values.dtype == torch.int8
              else None, None)
    bitmask, row_ptr = bitmask.contiguous(), row_ptr.contiguous()
    lib = _build.load()
    if lib is not None:
        bad = lib.sl_check(bitmask.data_ptr(), (K + 31) // 32, row_ptr.data_ptr(), N, K)
    else:
        ones = (((bitmask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(N, -1))
        counts_ok = ones.sum(1) == row_ptr.diff()
        pad_ok = ones[:, K:].sum(1) == 0
        rows = (~(counts_ok & pad_ok)).nonzero()
        bad = int(rows[0]) if len(rows) else -1
    if bad == N:
        raise ValueError("row_ptr: must start at 0")
    if bad >= 0:
        raise ValueError(f"row_ptr: row {bad} disagrees with the bitmask popcount "
                         f"(or bitmask: padding bits set past column K-1={K - 1})")


def _quantize_rows(x2: torch.Tensor) -> torch.Tensor:
    """x_hat = clamp(round(x / s), -127, 127) * s with s = max|x| / 127 per row (1 for an all-zero row)."""
    s = x2.abs().amax(-1, keepdim=True) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x2 / s).clamp(-127, 127) * s


def has_vnni() -> bool:
    """Whether ``act_quant=True`` runs on AVX-512 VNNI integer dot products here (else it is emulated)."""
    lib = _build.load()
    return bool(lib is not None and lib.sl_isa_flags() >> 3 & 1)


def _torch_fallback(x2, bitmask, values, row_ptr, N, K, scales, group_size) -> torch.Tensor:
    """Portable path: decode W to dense fp32 and use torch's GEMM.  Correct, slow (decodes every call)."""
    shifts = torch.arange(8, dtype=torch.uint8)
    nonzero = ((bitmask.unsqueeze(-1) >> shifts) & 1).reshape(N, -1)[:, :K].bool()
    W = torch.zeros(N, K, dtype=torch.float32)
    W[nonzero] = values.float()
    if scales is not None:
        W = W * scales[:, torch.arange(K) // group_size]
    return x2.float() @ W.T


def describe() -> dict:
    """Build and machine facts for benchmark reports: paths, threading, compiler error if any."""
    lib = _build.load()
    return {"isa": available_isa(), "vnni": has_vnni(), "threaded": bool(lib and lib.sl_has_openmp()),
            "build_error": _build.build_error(), "threads": get_num_threads()}

