"""The CUDA C++ batch-1 kernel for N:M-sparse matrices (`nm_gemv.cu`, kernel "nmcu"): pattern, layout, launch.

    pattern(packed)             # (M, slots per group) when every group of M columns has at most that many nonzeros
    vals, idx = layout(packed)  # built once per matrix, cached on it under ("nmcu",)
    y = gemv(x, packed, cfg)    # x (B, K) fp16/bf16 on the GPU, B <= cfg.block_b (1, 2 or 4)
    y = gemv_host(x, packed)    # the same arithmetic on the CPU (tests): float32 (B, N)
    h = gemv(x, gate_up, cfg, glu=True)   # batch 1: silu(x G^T) * (x U^T) for gate_up = [G; U], (1, N / 2)
    s, n = gemv(x, p, cfg, norm=(res, w, eps))   # batch 1: s = res + x W^T, n = RMSNorm(s) * w (add_rmsnorm)

1:4 masks with fp16 x may stage x as a pair table (cfg.pairs; nm_pairs.cuh): one shared-memory load fetches two
slots' activations and the products run in half2, about half the instructions per kept position of the 16-bit
staging, for 8 bytes of shared memory per column of x.

Why: a matrix pruned N:M (`sparselm prune --pattern 1:4`, 2:8, 2:4) has the same slot count in every group, so a
slot needs only its index inside its group (2 bits for M = 4, 4 for M = 8) and rows need no start pointers:
2.25-2.5 bytes per fp16 nonzero, against 2.7-3.3 for the unstructured layouts (nm_gemv.cu's header). M and the
slots per group are read off the mask (the smallest layout that holds it), so any N:M-conforming matrix qualifies,
whichever pattern pruned it; an unstructured one does not (`supports` is False and autotune skips the kernel).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.compress.format import CompressedTensor, unpack_mask
from sparselm.kernels.gpu import cuda_build
from sparselm.kernels.gpu.cuda_delta4 import row_scales, serves_values
from sparselm.kernels.gpu.cuda_grp8 import smem_limit

_SOURCE = Path(__file__).with_name("nm_gemv.cu")
STEP = 256  # slots per warp step: 32 lanes x 8
PAIR_BLOCK = 2048  # pair table bytes per 256 columns (nm_pairs.cuh)
PATTERNS = {4: (1, 2), 8: (1, 2, 4)}  # M -> slots per group the kernel is built for (8 / slots groups per lane)
UNROLLS = (1, 2, 4)
PAIR_UNROLLS = (1, 2, 4, 8)  # the pair table's builds (8: short rows' loads in fewer rounds)
BATCHES = (1, 2, 4)  # padded batch: 2 and 4 stage x transposed (4 kx B bytes), 1 or 2 steps per load round
_BITS = {4: 2, 8: 4}  # index bits per slot
_VT = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}
_XT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_nm_launch.restype = i32
        # (vt, xt, m, n, B, unroll, minb, x16), (x, vals, idx, scales, y), (N, K, steps, kx, bsz, ldx, ldy, glu,
        # blocks, threads), (res, w, res_out, xn), eps, counter, stream
        lib.sl_nm_launch.argtypes = [i32] * 8 + [vp] * 5 + [i32] * 10 + [vp] * 4 + [ctypes.c_float] + [vp] * 2
        lib.sl_error_string.restype = ctypes.c_char_p
        lib.sl_error_string.argtypes = [i32]
    else:
        lib.sl_nm_host.restype = i32
        lib.sl_nm_host.argtypes = [i32] * 7 + [vp] * 5 + [i32] * 6
        # (xt, y, res, w, res_out, xn, D, eps, threads)
        lib.sl_norm_host.restype = i32
        lib.sl_norm_host.argtypes = [i32] + [vp] * 5 + [i32, ctypes.c_float, i32]


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load
available = _LIB.available
build_error = _LIB.build_error


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "nmcu": block_b (padded batch) 1, 2 or 4; x staged (x16, batch 1 only: as
    16-bit activations, else float32; pairs, batch 1 only and not with x16: as the pair table); num_warps = warps per
    block (1-32), persist = blocks per SM (>= 1), unroll = steps per load round (1, 2, 4; 1 or 2 at batches 2-4); no
    other kernel's fields."""
    ok_int = lambda v, lo, hi: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi  # noqa: E731
    if not (cfg.block_b in BATCHES and cfg.smem and ok_int(cfg.num_warps, 1, 32) and ok_int(cfg.persist, 1, 1 << 20)
            and cfg.unroll in (PAIR_UNROLLS if cfg.pairs else UNROLLS) and not isinstance(cfg.unroll, bool)
            and cfg.slots == 32 and cfg.split_k == 1
            and not (cfg.lean or cfg.col16 or cfg.use_dot)
            and (cfg.block_b == 1 or (cfg.unroll <= 2 and not cfg.x16))
            and not (cfg.pairs and (cfg.x16 or cfg.block_b > 1))):
        raise ValueError(f"SpmmConfig nmcu: block_b in {BATCHES}, num_warps 1-32, persist (blocks per SM) >= 1, unroll "
                         f"in {UNROLLS} (1 or 2 and no x16 at block_b 2-4; pairs: block_b 1, not with x16, unroll in "
                         f"{PAIR_UNROLLS}), no "
                         f"slots / split_k / lean / col16 / "
                         f"use_dot / smem=False; got {cfg}")


def min_blocks(cfg, forty: bool = True) -> int:
    """Blocks per SM the kernel is compiled to keep resident: 2 (a 32-register build, no spills at 1-2 steps per
    round) where the config asks for 2048 threads per SM or more; 3 (40 registers, blocks of at most 512 threads)
    for the pair table where it asks for 1536-2047 threads in such blocks (`forty`: benchmarks/nm_ab.py turns it
    off for builds that predate it); else 1."""
    threads = 32 * cfg.num_warps * cfg.persist
    if cfg.block_b != 1:
        return 1
    if threads >= 2048 and cfg.unroll <= 2:
        return 2
    return 3 if forty and cfg.pairs and cfg.num_warps <= 16 and 1536 <= threads < 2048 else 1


def _mask(p) -> torch.Tensor:
    ct = p._ct or CompressedTensor(p.shape, p.words.view(torch.uint8), p.values, p.row_ptr)
    return unpack_mask(ct.bitmask, p.shape[1])


def pattern(p) -> tuple[int, int] | None:
    """(M, slots per group) of the smallest layout that holds the matrix's mask, or None (not N:M with N <= M / 2,
    K not a multiple of 4, or values the kernel does not serve). Cached on the matrix."""
    key = ("nmcu-pattern",)
    if key not in p._cptr:
        n, k = p.shape
        best, vbytes = None, p.values.element_size()
        if p.values.dtype in _VT and n and k:
            mask = _mask(p)
            for m, slots in PATTERNS.items():
                if k % m:
                    continue
                most = int(mask.view(n, k // m, m).sum(-1).max())
                fit = next((s for s in slots if s >= most), None)
                if fit is None:
                    continue
                size = (k // m) * fit * (8 * vbytes + _BITS[m])
                if best is None or size < best[0]:
                    best = (size, m, fit)
        p._cptr[key] = None if best is None else (best[1], best[2])
    return p._cptr[key]


def _steps(p) -> int:
    m, s = pattern(p)
    return -(-(p.shape[1] // m) * s // STEP)


def kx(p) -> int:
    """Staged x columns: the padded groups' (steps 256 M / slots >= K)."""
    m, s = pattern(p)
    return _steps(p) * STEP // s * m


def staged_bytes(p, batch: int = 1, x16: bool = False, pairs: bool = False, unroll: int = 1) -> int:
    """Shared memory per block for x: float32 x batch, 16-bit (x16), or the pair table (8 bytes per column, plus
    2048 bytes of alignment slack; with 2+ steps per round also the copy of x the table is built from)."""
    if pairs:
        return kx(p) // 256 * PAIR_BLOCK + PAIR_BLOCK + ((2 * p.shape[1] + 15) // 16 * 16 if unroll > 1 else 0)
    return (2 if x16 else 4 * batch) * kx(p)


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 1, x16: bool = False, pairs: bool = False,
             unroll: int = 1) -> bool:
    """Padded batch 1, 2 or 4; an N:M mask (`pattern`); fp16 values with fp16 x, bf16 with bf16, int8 (8-bit codes,
    per-row scales or none) with either; x's staged copy (`staged_bytes`) within one block's shared memory. pairs:
    batch 1, a 1:4 layout (M = 4, one slot per group), fp16 x, fp16 or int8 values, fewer than 2^32 slots."""
    if batch not in BATCHES or pattern(p) is None or staged_bytes(p, batch, x16, pairs, unroll) > smem_limit():
        return False
    if pairs and (batch != 1 or pattern(p) != (4, 1) or x_dtype not in (None, torch.float16)
                  or p.values.dtype not in (torch.float16, torch.int8) or p.shape[0] * _steps(p) * STEP >= 2 ** 32):
        return False  # (the pair kernel's slot offsets are 32-bit)
    return serves_values(p, x_dtype)


def layout(p) -> tuple[torch.Tensor, torch.Tensor]:
    """(vals (N steps 256,) in the values' dtype (int8 codes biased: v ^ 0x80), idx (N steps 32,) int16 (M = 4) or
    int32 (M = 8)), built with a few vectorized passes and cached on the matrix under ("nmcu",); nm_gemv.cu's header
    gives the order."""
    key = ("nmcu",)
    if key in p._cptr:
        return p._cptr[key]
    if pattern(p) is None:
        raise ValueError("nmcu: the matrix is not N:M with N <= M / 2 (or its values are not served)")
    n, k = p.shape
    m, s = pattern(p)
    g, steps, j = k // m, _steps(p), 8 // s
    gp = steps * STEP // s  # groups per row, padded
    pos = _mask(p).view(n, g, m)
    rank = pos.to(torch.int32).cumsum(-1) - 1  # a nonzero's slot within its group
    r, gi, mi = pos.nonzero(as_tuple=True)  # row-major: the order of `values`
    sl = rank[r, gi, mi].long()
    vals = torch.zeros(n, gp, s, dtype=p.values.dtype, device=p.values.device)
    idx = torch.zeros(n, gp, s, dtype=torch.int64, device=p.values.device)
    vals[r, gi, sl] = p.values
    idx[r, gi, sl] = mi
    # group (t, jj, lane) = 32 J t + 32 jj + lane -> lane-major per step: lane l's 8 slots are (jj, slot)
    order = lambda t: t.view(n, steps, j, 32, s).permute(0, 1, 3, 2, 4).reshape(n, steps, 32, 8)  # noqa: E731
    vals, idx = order(vals), order(idx)
    if vals.dtype == torch.int8:  # stored biased, v + 128 as a byte (zero slots 0x80): the decoders' form
        vals = (vals.view(torch.uint8) ^ 0x80).view(torch.int8)
    bits = _BITS[m]
    code = (idx << (bits * torch.arange(8, device=idx.device))).sum(-1)  # disjoint fields: the sum is the OR
    width = 16 if m == 4 else 32
    code = torch.where(code >= 2 ** (width - 1), code - 2 ** width, code).to(torch.int16 if m == 4 else torch.int32)
    p._cptr[key] = (vals.reshape(-1).contiguous(), code.reshape(-1).contiguous())
    return p._cptr[key]


def nbytes(p) -> int:
    """Bytes the kernel reads for W: values, index words and per-row scales."""
    scales = p.scales.numel() * 4 if p.scales is not None else 0
    return scales + sum(t.numel() * t.element_size() for t in layout(p))


def _check(x: torch.Tensor, p, x16: bool = False, batch: int = 1, pairs: bool = False, unroll: int = 1) -> None:
    k = p.shape[1]
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= batch:
        raise ValueError(f"nmcu: x must be (B, {k}) with 1 <= B <= {batch} (the config's padded batch), got "
                         f"{tuple(x.shape)}")
    if not supports(p, x.dtype, batch, x16, pairs, unroll):
        raise ValueError(f"nmcu: needs an N:M mask (at most 1 or 2 nonzeros per 4 columns, or 1, 2 or 4 per 8), x's "
                         f"padded float32 copy within {smem_limit()} bytes of shared memory, and values fp16 (x fp16) "
                         f"/ bf16 (x bf16) / int8 with per-row scales (pairs: 1:4, fp16 x, fp16 / int8 "
                         f"values); got pattern {pattern(p)}, values {p.values.dtype}, x {x.dtype}, pairs {pairs}")


def _check_glu(x: torch.Tensor, p) -> None:
    if x.shape[0] != 1 or p.shape[0] % 2:
        raise ValueError(f"nmcu glu: one row of x and an even number of matrix rows (gate rows, then up rows), got x "
                         f"{tuple(x.shape)} and {p.shape[0]} rows")


def _check_norm(x: torch.Tensor, p, cfg, norm) -> None:
    res, w, eps = norm
    n = p.shape[0]
    if x.shape[0] != 1 or cfg.block_b != 1:
        raise ValueError(f"nmcu norm: batch 1 only (x {tuple(x.shape)}, block_b {cfg.block_b})")
    if res.shape[-1] != n or res.numel() != n or w.shape != (n,) or res.dtype != x.dtype or w.dtype != x.dtype:
        raise ValueError(f"nmcu norm: res ({n},) / (1, {n}) and weight ({n},) in x's dtype {x.dtype}, got res "
                         f"{tuple(res.shape)} {res.dtype}, weight {tuple(w.shape)} {w.dtype}")
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"nmcu norm: eps must be a positive float, got {eps!r}")


def _counter(p, device: torch.device) -> torch.Tensor:
    """The matrix's arrival counter for the norm epilogue (one int32, zero between launches: the last block resets
    it). Made on first use, outside any graph capture in the decoder (its warm-up steps run first)."""
    key = ("nmcu-counter", str(device))
    if key not in p._cptr:
        p._cptr[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return p._cptr[key]


def _unit_scales(p, device: torch.device) -> torch.Tensor:
    """Ones (N,) float32 for an int8 matrix stored without scales, made once per matrix and device."""
    key = ("nmcu-unit-scales", str(device))
    if key not in p._cptr:
        p._cptr[key] = torch.ones(p.shape[0], dtype=torch.float32, device=device)
    return p._cptr[key]


def gemv(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None, glu: bool = False,
         norm: tuple | None = None):
    """y (B, N) = x W^T on the GPU, B <= cfg.block_b: cfg.num_warps warps per block, cfg.persist blocks per SM,
    cfg.unroll steps per load round, cfg.x16 x staged as 16-bit activations (batch 1), cfg.pairs as the pair table.
    glu (batch 1, W = [gate rows; up rows]): y (1, N / 2) = silu(x gate^T) * (x U^T), each step rounded as the
    product and kernels/gpu/fused.py silu_mul would round it (fp16 exp / division may differ in the last bit).
    norm = (res, w, eps) (batch 1, not with glu): returns (s, n), both (1, N): s = res + y and n = w * s / rms(s),
    rounded as fused.add_rmsnorm rounds (the last block to finish computes them; nm_epilogue.cuh)."""
    _check(x, p, cfg.x16, cfg.block_b, cfg.pairs, cfg.unroll)
    if glu:
        _check_glu(x, p)
    if norm is not None:
        if glu:
            raise ValueError("nmcu: glu and norm epilogues are exclusive")
        _check_norm(x, p, cfg, norm)
    n, k = p.shape
    lib, y = _LIB.prepare("nmcu", x, p, out, rows=n // 2 if glu else None)
    x = x.contiguous()
    vals, idx = layout(p)
    m, s = pattern(p)
    scales = row_scales(p, x.device)
    if scales is None and p.values.dtype == torch.int8:  # the pair kernel reads int8 scales without a null check
        scales = _unit_scales(p, x.device)
    blocks = max(1, min(cfg.persist * torch.cuda.get_device_properties(x.device).multi_processor_count,
                        -(-n // cfg.num_warps)))
    res = w = res_out = xn = counter = None
    eps = 0.0
    if norm is not None:
        res, w, eps = norm[0].reshape(1, n).contiguous(), norm[1].contiguous(), norm[2]
        res_out, xn, counter = torch.empty_like(res), torch.empty_like(res), _counter(p, x.device)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    code = lib.sl_nm_launch(_VT[p.values.dtype], _XT[x.dtype], m, s, cfg.block_b, cfg.unroll, min_blocks(cfg),
                            _staging(cfg.x16, cfg.pairs), x.data_ptr(), vals.data_ptr(), idx.data_ptr(),
                            ptr(scales), y.data_ptr(), n, k, _steps(p), kx(p),
                            x.shape[0], x.stride(0), y.stride(0), int(glu), blocks, 32 * cfg.num_warps,
                            ptr(res), ptr(w), ptr(res_out), ptr(xn), eps, ptr(counter),
                            torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"nmcu launch failed: {lib.sl_error_string(code).decode()} (code {code})")
    return y if norm is None else (res_out, xn)


def norm_host(y: torch.Tensor, res: torch.Tensor, w: torch.Tensor, eps: float, threads: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The norm epilogue's arithmetic on the CPU for a block of `threads` threads: y (the product as the kernel
    stores it), res and w in one activation dtype, D elements each -> (s, n) as gemv(..., norm=) returns them."""
    if y.dtype not in _XT or res.dtype != y.dtype or w.dtype != y.dtype or not y.numel() == res.numel() == w.numel():
        raise ValueError(f"nmcu norm_host: y, res and w of one size in fp16 / bf16, got {y.dtype} {tuple(y.shape)}, "
                         f"{res.dtype} {tuple(res.shape)}, {w.dtype} {tuple(w.shape)}")
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"nmcu host emulation unavailable ({build_error('host')})")
    y, res, w = (t.reshape(1, -1).contiguous().cpu() for t in (y, res, w))
    s, n = torch.empty_like(res), torch.empty_like(res)
    if lib.sl_norm_host(_XT[y.dtype], y.data_ptr(), res.data_ptr(), w.data_ptr(), s.data_ptr(), n.data_ptr(),
                        y.shape[1], float(eps), threads) != 0:
        raise ValueError(f"nmcu norm_host: threads must be a multiple of 32 in 32-1024, got {threads}")
    return s, n


def _staging(x16: bool, pairs: bool) -> int:
    """The launch's staging mode (nm_gemv.cu XS_*): 0 float32, 1 16-bit, 2 the pair table."""
    return 2 if pairs else int(x16)


def gemv_host(x: torch.Tensor, p, unroll: int = 1, x16: bool = False, batch: int = 1,
              pairs: bool = False, glu: bool = False) -> torch.Tensor:
    """The kernel's arithmetic on the CPU (float32 (B, N)): what the CPU tests check against a dense reference.
    x16: read x from a 16-bit copy (converted per nonzero), as the x16 build does; pairs: the pair table and half2
    products, each rounding as the GPU's; batch: the padded batch of the kernel to emulate (2 / 4: x transposed);
    glu: as gemv's (outputs rounded to x's dtype, returned as float32)."""
    _check(x, p, x16, batch, pairs)
    if glu:
        _check_glu(x, p)
    if unroll not in (PAIR_UNROLLS if pairs else UNROLLS):
        raise ValueError(f"nmcu: unroll must be one of {PAIR_UNROLLS if pairs else UNROLLS}, got {unroll}")
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"nmcu host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    vals, idx = (t.cpu() for t in layout(p))
    m, s = pattern(p)
    scales = row_scales(p, "cpu")
    y = torch.empty(x.shape[0], n // 2 if glu else n, dtype=torch.float32)
    code = lib.sl_nm_host(_VT[p.values.dtype], _XT[x.dtype], m, s, batch, unroll, _staging(x16, pairs), x.data_ptr(),
                          vals.data_ptr(), idx.data_ptr(), None if scales is None else scales.data_ptr(), y.data_ptr(),
                          n, k, _steps(p), kx(p), x.shape[0], int(glu))
    if code != 0:
        raise ValueError(f"nmcu host: unsupported values {p.values.dtype} with x {x.dtype} or pattern {(m, s)}")
    return y
