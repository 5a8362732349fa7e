"""The CUDA C++ batch-1 delta4 kernel (`delta4_gemv.cu`): its layout, build, launch, and CPU emulation.

    vals, steps, base, cptr = layout(packed)   # built once per matrix, cached on it under ("d4cu",)
    y = gemv(x, packed, cfg)                   # x (B, K) fp16/bf16 on the GPU, B <= cfg.block_b (1, 2, 4, 8)
    y = gemv_host(x, packed, batch=1)          # the same arithmetic on the CPU (tests): float32 (B, N)

Why: grp8 (cuda_grp8.py) reads 3.2 bytes per fp16 nonzero at 75% sparsity, a 2.5x ceiling against cuBLAS's 2 bytes
per weight. delta4 stores a nonzero's column as a 4-bit step from the previous one: at 75%, 2.68 bytes per fp16
nonzero (ceiling 2.98x) and 1.67 per int8 one (4.79x; benchmarks/results/layout_bytes.json); delta4_gemv.cu's
header gives the layout. Gaps over 15 columns are bridged by zero-valued "stepping stones": 1.3 per 100 nonzeros
at 75% sparsity, 26 at 90% (where the mask-based kernels win; autotune measures). Batches 2-8 (`block_b`): x
staged transposed as float32 (4 K B bytes of shared memory), one vector load and B multiply-adds per nonzero, so a
small batch costs little more than one row.

Build (cuda_build.py, as cuda_grp8.py): nvcc for the GPU's architecture, cached by content hash; no nvcc or a
failed build: `available()` is False with the reason in `build_error()`. The host build (g++ -x c++ of the same
file) is what CPU tests run.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.compress.format import CompressedTensor, unpack_mask
from sparselm.kernels.gpu import cuda_build
from sparselm.kernels.gpu.cuda_grp8 import smem_limit

_SOURCE = Path(__file__).with_name("delta4_gemv.cu")
CHUNK = 16      # entries per chunk: one lane's 16 values (32 bytes fp16), 15 steps in a 64-bit word, a base
MAX_STEP = 15   # the largest column step a nibble holds
MAX_K = 65536   # base columns are uint16
UNROLLS = (1, 2)
BATCHES = (1, 2, 4, 8)
LANES = (32, 16, 8)  # lanes per row (SpmmConfig.slots): fewer than a warp, batch 1 with x staged only
_VT = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}
_XT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_d4_launch.restype = i32
        # (vt, xt, B, smem, unroll, lanes, minb), (x, vals, steps, base, cptr, scales, y), (N, K, bsz, ldx, ldy,
        # blocks, threads), stream
        lib.sl_d4_launch.argtypes = [i32] * 7 + [vp] * 7 + [i32] * 7 + [vp]
        lib.sl_error_string.restype = ctypes.c_char_p
        lib.sl_error_string.argtypes = [i32]
    else:
        lib.sl_d4_host.restype = i32
        lib.sl_d4_host.argtypes = [i32] * 6 + [vp] * 7 + [i32] * 3


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load
available = _LIB.available
build_error = _LIB.build_error


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "d4cu": block_b (padded batch) in BATCHES, persist = blocks per SM (>= 1),
    num_warps = warps per block (1-32), unroll = chunks per load step (1 or 2), smem = x staged per block (else via
    L1: batch 1 only), slots = lanes per row (32, or 16 / 8 at batch 1 with smem: 32 / slots rows per warp)."""
    ok_int = lambda v, lo, hi: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi  # noqa: E731
    if not (cfg.block_b in BATCHES and ok_int(cfg.persist, 1, 1 << 20) and ok_int(cfg.num_warps, 1, 32)
            and cfg.unroll in UNROLLS and not isinstance(cfg.unroll, bool) and (cfg.smem or cfg.block_b == 1)
            and not (cfg.lean or cfg.col16 or cfg.use_dot) and cfg.split_k == 1  # other kernels' fields
            and cfg.slots in LANES and (cfg.slots == 32 or (cfg.block_b == 1 and cfg.smem))):
        raise ValueError(f"SpmmConfig d4cu: block_b in {BATCHES}, persist (blocks per SM) >= 1, num_warps 1-32, "
                         f"unroll in {UNROLLS}, smem False at block_b 1 only, slots (lanes per row) in {LANES} "
                         f"(16 / 8 at block_b 1 with smem), no lean / col16 / use_dot / split_k; got {cfg}")


def min_blocks(cfg) -> int:
    """Blocks per SM the kernel is compiled to keep resident (its __launch_bounds__): 2 where the config asks for
    2048 threads per SM or more in the one variant that has a 32-register build (batch 1, x staged, 1 chunk per
    step, 32 lanes per row), else 1. Why: at 40 registers a 32-warp block occupied its SM alone (H200 profile)."""
    threads = 32 * cfg.num_warps * cfg.persist
    one_build = cfg.block_b == 1 and cfg.smem and cfg.unroll == 1 and cfg.slots == 32
    return 2 if one_build and threads >= 2048 else 1


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 1, smem: bool = True) -> bool:
    """K <= 65536; fp16 values with fp16 x, bf16 with bf16, int8 (8-bit codes, per-row scales or none) with either;
    batch (the padded one) in BATCHES, with x's 4 K batch bytes fitting in one block's shared memory when staged
    (smem; always when batch > 1). Not int4 codes or per-group scales (grp8cu serves those)."""
    k = p.shape[1]
    if k > MAX_K or batch not in BATCHES or ((smem or batch > 1) and 4 * k * batch > smem_limit()):
        return False
    return serves_values(p, x_dtype)


def serves_values(p, x_dtype: torch.dtype | None = None) -> bool:
    """The values the float32-staging kernels decode (d4cu, nmcu): fp16 with fp16 x, bf16 with bf16, int8 codes of 8
    bits with per-row scales or none, with either."""
    if p.values.dtype not in _VT:
        return False
    if p.values.dtype == torch.int8 and ((p._ct is not None and p._ct.bits != 8) or
                                         (p.scales is not None and p.scales.numel() != p.shape[0])):
        return False
    if x_dtype is not None and (x_dtype not in _XT or (p.values.dtype != torch.int8 and p.values.dtype != x_dtype)):
        return False
    return True


def layout(p) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vals (chunks * 16,), steps (chunks, 2) int32, base (chunks,) int16, cptr (N + 1,) int32), built with a few
    vectorized passes and cached on the matrix under ("d4cu",). 16-bit values lie in two planes: every chunk's
    values 0-7, then every chunk's values 8-15.

    Per row, each nonzero whose column is more than 15 past the previous one is preceded by (gap - 1) // 15 zero
    entries 15 columns apart; the row's entries are cut into chunks of 16, the last padded with zeros at the last
    column. A chunk's steps are the differences of its 16 columns (nibble i = column i - column i - 1)."""
    key = ("d4cu",)
    if key in p._cptr:
        return p._cptr[key]
    n, k = p.shape
    if k > MAX_K:
        raise ValueError(f"delta4: uint16 base columns need K <= {MAX_K}, got K={k}")
    dev = p.values.device
    ct = p._ct or CompressedTensor(p.shape, p.words.view(torch.uint8), p.values, p.row_ptr)
    cols = unpack_mask(ct.bitmask, k).nonzero()[:, 1]  # row-major: the order of `values`
    rp = p.row_ptr.to(torch.int64)
    cnt = rp[1:] - rp[:-1]
    nnz = cols.numel()
    row = torch.repeat_interleave(torch.arange(n, device=dev), cnt)
    prev = torch.cat([cols[:1], cols[:-1]])
    first = torch.zeros(nnz, dtype=torch.bool, device=dev)
    first[rp[:-1][cnt > 0]] = True
    prev = torch.where(first, cols, prev)  # a row's first nonzero needs no stones: it starts a chunk or follows
    stones = torch.clamp(cols - prev - 1, min=0) // MAX_STEP  # ceil(gap / 15) - 1 for gaps over 15, else 0
    per = 1 + stones
    src = torch.repeat_interleave(torch.arange(nnz, device=dev), per)  # the nonzero each entry comes from
    t = torch.arange(src.numel(), device=dev) - (torch.cumsum(per, 0) - per)[src]
    real = t == stones[src]
    ecol = torch.where(real, cols[src], prev[src] + MAX_STEP * (t + 1))
    evals = torch.where(real, p.values[src], torch.zeros((), dtype=p.values.dtype, device=dev))
    erow = row[src]
    ecnt = torch.bincount(erow, minlength=n) if n else torch.zeros(0, dtype=torch.int64, device=dev)
    nch = (ecnt + CHUNK - 1) // CHUNK
    cptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    cptr[1:] = torch.cumsum(nch, 0)
    q = torch.arange(erow.numel(), device=dev) - (torch.cumsum(ecnt, 0) - ecnt)[erow]
    chunk, slot = cptr[:-1][erow] + q // CHUNK, q % CHUNK
    total = int(cptr[-1])
    vals = torch.zeros(total, CHUNK, dtype=p.values.dtype, device=dev)
    vals[chunk, slot] = evals
    ccols = torch.full((total, CHUNK), -1, dtype=torch.int64, device=dev)
    ccols[chunk, slot] = ecol
    ccols = torch.cummax(ccols, dim=1).values  # padded tail slots repeat the last column: step 0
    steps = ccols[:, 1:] - ccols[:, :-1]
    if steps.numel() and not bool(((steps >= 0) & (steps <= MAX_STEP)).all()):
        raise AssertionError("delta4: a column step outside 0..15 (a bug in the layout builder)")
    word = (steps << (4 * torch.arange(1, CHUNK, device=dev))).sum(1)  # disjoint nibbles: the sum is the OR
    lo, hi = word & 0xFFFFFFFF, word >> 32
    pairs = torch.stack([lo, hi], 1)
    pairs = torch.where(pairs >= 2 ** 31, pairs - 2 ** 32, pairs).to(torch.int32)  # the same 32 bits
    base = ccols[:, 0] if total else torch.zeros(0, dtype=torch.int64, device=dev)
    base = torch.where(base >= 2 ** 15, base - 2 ** 16, base).to(torch.int16)  # uint16 bits
    if vals.element_size() == 2:  # two planes (values 0-7, then 8-15 of every chunk): coalesced 16-byte loads
        vals = torch.cat([vals[:, :CHUNK // 2], vals[:, CHUNK // 2:]])
    p._cptr[key] = (vals.reshape(-1).contiguous(), pairs.contiguous(), base.contiguous(),
                    cptr.to(torch.int32).contiguous())
    return p._cptr[key]


def nbytes(p) -> int:
    """Bytes the kernel reads for W: its four arrays plus per-row scales."""
    scales = p.scales.numel() * 4 if p.scales is not None else 0
    return scales + sum(t.numel() * t.element_size() for t in layout(p))


def _check(x: torch.Tensor, p, batch: int, smem: bool = True) -> None:
    n, k = p.shape
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= batch:
        raise ValueError(f"d4cu: x must be (B, {k}) with 1 <= B <= {batch} (the config's padded batch), got "
                         f"{tuple(x.shape)}")
    if not supports(p, x.dtype, batch, smem):
        raise ValueError(f"d4cu: needs K <= {MAX_K}, batch in {BATCHES} (4 * K * batch <= {smem_limit()} bytes when "
                         f"x is staged) and values fp16 (x fp16) / bf16 (x bf16) / int8 with per-row scales; got "
                         f"K {k}, batch {batch}, values {p.values.dtype}, x {x.dtype}")


def row_scales(p, device) -> torch.Tensor | None:
    """Per-row scales as the kernels read them (float32 (N,)), or None."""
    return None if p.scales is None else p.scales.reshape(-1).float().contiguous().to(device)


def gemv(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x W^T on the GPU, B <= cfg.block_b: cfg.num_warps warps per block, cfg.persist blocks per SM,
    cfg.smem (x staged in shared memory, else read through L1), cfg.unroll chunks per load step (1 or 2),
    cfg.slots lanes per row."""
    _check(x, p, cfg.block_b, cfg.smem)
    n, k = p.shape
    lib, y = _LIB.prepare("d4cu", x, p, out)
    x = x.contiguous()
    vals, steps, base, cptr = layout(p)
    scales = row_scales(p, x.device)
    rows_per_block = cfg.num_warps * (32 // cfg.slots)
    blocks = max(1, min(cfg.persist * torch.cuda.get_device_properties(x.device).multi_processor_count,
                        -(-n // rows_per_block)))
    code = lib.sl_d4_launch(_VT[p.values.dtype], _XT[x.dtype], cfg.block_b, int(cfg.smem), cfg.unroll, cfg.slots,
                            min_blocks(cfg), x.data_ptr(),
                            vals.data_ptr(), steps.data_ptr(), base.data_ptr(), cptr.data_ptr(),
                            None if scales is None else scales.data_ptr(), y.data_ptr(), n, k, x.shape[0], k, n,
                            blocks, 32 * cfg.num_warps, torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"d4cu launch failed: {lib.sl_error_string(code).decode()} (code {code})")
    return y


def gemv_host(x: torch.Tensor, p, unroll: int = 1, smem: bool = True, batch: int = 1, lanes: int = 32) -> torch.Tensor:
    """The kernel's arithmetic on the CPU (float32 (B, N)): what the CPU tests check against a dense reference.
    smem: x as the float32 copy the kernel stages in shared memory (else as it is, the L1 path's offsets); batch:
    the padded batch of the kernel to emulate (2-8: x transposed); lanes: per row (16 / 8 at batch 1 with smem)."""
    _check(x, p, batch, smem)
    if unroll not in UNROLLS:
        raise ValueError(f"d4cu: unroll must be one of {UNROLLS}, got {unroll}")
    if lanes not in LANES or (lanes != 32 and (batch != 1 or not smem)):
        raise ValueError(f"d4cu: lanes per row in {LANES}, 16 / 8 only at batch 1 with smem; got {lanes}")
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"d4cu host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    vals, steps, base, cptr = (t.cpu() for t in layout(p))
    scales = row_scales(p, "cpu")
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    code = lib.sl_d4_host(_VT[p.values.dtype], _XT[x.dtype], batch, int(smem), unroll, lanes, x.data_ptr(),
                          vals.data_ptr(),
                          steps.data_ptr(), base.data_ptr(), cptr.data_ptr(),
                          None if scales is None else scales.data_ptr(), y.data_ptr(), n, k, x.shape[0])
    if code != 0:
        raise ValueError(f"d4cu host: unsupported values {p.values.dtype} with x {x.dtype}, batch {batch}, "
                         f"smem {smem}")
    return y
