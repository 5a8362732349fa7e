"""The CUDA C++ batch-1 grp8 kernel (`grp8_gemv.cu`): build, launch, and its CPU emulation.

    y = gemv(x, packed, cfg)          # x (1, K) fp16/bf16 on the GPU; cfg = SpmmConfig(kernel="grp8cu", ...)
    y = gemv_host(x, packed)          # the same arithmetic on the CPU (tests): float32 (1, N)

Why a second language: the Triton grp8 kernels run under high issue pressure (gpu_profile_h200.json: 20-30
executed SASS instructions per nonzero); this kernel stages x in shared memory (or reads it through L1:
`smem=False`) and computes two gather addresses per 16-bit-lane add, ~9 instructions per nonzero at sm_90
(offline count, `benchmarks/sass_count.py --cuda`). Batches 2-16 (`block_b`): x transposed in shared memory.

Build (cuda_build.py): `nvcc` (from $CUDA_HOME/bin or PATH) compiles the one file into a shared library for the GPU's architecture,
cached by content hash under $SPARSELM_CACHE/cuda-kernels (as the CPU kernels are), loaded with ctypes and launched
on torch's current stream, so CUDA-graph capture records it like any other kernel. No nvcc, or a failed build:
`available()` is False with the reason in `build_error()`, and autotune simply never offers the config.
The host build (g++ -x c++ of the same file) is what CPU tests run: index math, decoders and lane sums are shared.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.kernels.gpu import cuda_build

_SOURCE = Path(__file__).with_name("grp8_gemv.cu")
MAX_K = 32768  # 2 * column must fit 16 bits (the kernel adds doubled offsets to doubled bases in 16-bit lanes)
_VT = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}  # int4 codes (int8-held, bits 4): 3
_XT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_grp8_launch.restype = i32
        # (vt, xt, B, smem, unroll), (x, vals, gscale), (G, magic), (offs, base2, gptr, scales, y), 7 ints, stream
        lib.sl_grp8_launch.argtypes = ([i32] * 5 + [vp] * 3 + [i32, ctypes.c_uint] + [vp] * 5 + [i32] * 7
                                       + [vp])
        lib.sl_error_string.restype = ctypes.c_char_p
        lib.sl_error_string.argtypes = [i32]
    else:
        lib.sl_grp8_host.restype = i32
        lib.sl_grp8_host.argtypes = [i32] * 4 + [vp] * 3 + [i32, ctypes.c_uint] + [vp] * 5 + [i32] * 3


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load  # load("device" | "host"): the CDLL, or None when it cannot be built
available = _LIB.available
build_error = _LIB.build_error


#: shared memory one block may opt into on an H100 / H200 (227 KB): the batched kernel keeps x transposed there.
#: The current GPU's own limit is used when there is one (an A100 allows 163 KB).
SMEM_LIMIT = 232448
BATCHES = (1, 2, 4, 8, 16)


def smem_limit() -> int:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", SMEM_LIMIT))
    return SMEM_LIMIT


def _bits(p) -> int:
    return p._ct.bits if p._ct is not None else 8


def _vt(p) -> int:
    return 3 if _bits(p) == 4 else _VT[p.values.dtype]


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "grp8cu": warps per block and blocks per SM, the interleaved layout."""
    if cfg.block_b not in (1, 2, 4, 8, 16) or cfg.vec != 4 or (cfg.block_b > 1 and not cfg.smem):
        raise ValueError(f"SpmmConfig grp8cu: the interleaved layout (vec 4), block_b (padded batch) 1, 2, 4, "
                         f"8 or 16, x through L1 (smem False) at block_b 1 only; got block_b {cfg.block_b} "
                         f"vec {cfg.vec} smem {cfg.smem}")
    if not (isinstance(cfg.persist, int) and not isinstance(cfg.persist, bool) and cfg.persist >= 1):
        raise ValueError(f"SpmmConfig grp8cu: persist = blocks per SM, an int >= 1, got {cfg.persist!r}")
    if not (isinstance(cfg.num_warps, int) and 1 <= cfg.num_warps <= 32):
        raise ValueError(f"SpmmConfig grp8cu: num_warps = warps per block, 1-32, got {cfg.num_warps!r}")
    if cfg.unroll not in (1, 2, 4, 8) or isinstance(cfg.unroll, bool) or (cfg.unroll > 1 and cfg.block_b > 1):
        raise ValueError(f"SpmmConfig grp8cu: unroll 1, 2, 4 or 8 (batch 1 only), got {cfg.unroll!r} at "
                         f"block_b {cfg.block_b}")


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 1) -> bool:
    """Whether the kernel serves this matrix: K <= 32768; fp16 values with fp16 x, bf16 with bf16, int8 / int4
    values (scales per row or per group) with either; batch (the padded one) 1-16 with B * K * 2 bytes of x fitting
    in one block's shared memory."""
    n, k = p.shape
    if k > MAX_K or p.values.dtype not in _VT:
        return False
    if batch not in BATCHES or (batch > 1 and 2 * k * batch > smem_limit()):
        return False
    if x_dtype is not None and (x_dtype not in _XT or (p.values.dtype != torch.int8 and p.values.dtype != x_dtype)):
        return False
    return True


def aux(p) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, per-group scales or None, offsets as int32 words, doubled bases as int32 words, group starts) of the
    interleaved layout, cached on the matrix under ("grp8cu",). Per-group scales (int8 / int4) are the (N, G)
    float32 table, looked up per nonzero by column (grp8_gemv.cu group_scale); int4 codes are packed 4 per 16-bit
    word (a lane's 4 nonzeros of a quad, group j in bits 4j..4j+3)."""
    if ("grp8cu",) not in p._cptr:
        gvals, goffs, gbase, gptr = p.grp8(4)
        # base * 2 as uint16 bits (K <= 32768: fits), two per 32-bit word: the quad's 4 bases are 2 words
        base2 = (gbase.to(torch.int32) & 0xFFFF) * 2
        base2 = torch.where(base2 >= 32768, base2 - 65536, base2).to(torch.int16).contiguous()  # the same 16 bits
        gscale = p.scales.float().reshape(p.shape[0], -1).contiguous() if p.scale_mode == 2 else None
        if _bits(p) == 4:
            nib = (gvals.view(-1, 4).to(torch.int32) & 0xF) << torch.tensor([0, 4, 8, 12], device=gvals.device)
            packed = nib.sum(1)
            gvals = torch.where(packed >= 32768, packed - 65536, packed).to(torch.int16).contiguous()
        p._cptr[("grp8cu",)] = (gvals.contiguous(), gscale, goffs.contiguous().view(torch.int32),
                                base2.view(torch.int32), gptr.contiguous())
    return p._cptr[("grp8cu",)]


def group_magic(group_size: int) -> int:
    """ceil(2^32 / (2 * group_size)): the kernels find a nonzero's scale group as umulhi(2 * column, magic)."""
    return -(-(1 << 32) // (2 * group_size))


def _group_args(p, gscale) -> tuple[int, int]:
    """(scales per row, group_magic) for the kernels' per-group scale lookup; (0, 0) without per-group scales."""
    return (0, 0) if gscale is None else (gscale.shape[1], group_magic(p.group_size))


def _check(x: torch.Tensor, p, batch: int = 1) -> None:
    n, k = p.shape
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= batch:
        raise ValueError(f"grp8cu: x must be (B, {k}) with 1 <= B <= {batch} (the config's padded batch), got "
                         f"{tuple(x.shape)}")
    if not supports(p, x.dtype, batch):
        raise ValueError(f"grp8cu: needs K <= {MAX_K} (and 2 * K * batch <= {smem_limit()} bytes when batched), values "
                         f"fp16 (x fp16) / bf16 (x bf16) / int8 / int4; got K {k}, batch {batch}, "
                         f"values {p.values.dtype}, x {x.dtype}")


def gemv(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x W^T on the GPU, B <= cfg.block_b (1: the batch-1 kernel; 2-16: the batched one, x transposed
    in shared memory); cfg.num_warps warps per block, cfg.persist blocks per SM, cfg.smem (batch 1): x staged in
    shared memory, else read through L1. `out`: a contiguous (B, N) tensor of x's dtype."""
    _check(x, p, cfg.block_b)
    n, k = p.shape
    bsz = x.shape[0]
    lib, y = _LIB.prepare("grp8cu", x, p, out)
    x = x.contiguous()
    vals, gscale, offs, base2, gptr = aux(p)
    scales = p.scales.reshape(-1).contiguous() if p.scales is not None and gscale is None else None
    blocks = max(1, min(cfg.persist * torch.cuda.get_device_properties(x.device).multi_processor_count,
                        -(-n // cfg.num_warps)))
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    code = lib.sl_grp8_launch(_vt(p), _XT[x.dtype], cfg.block_b, int(cfg.smem), cfg.unroll, x.data_ptr(),
                              vals.data_ptr(), ptr(gscale), *_group_args(p, gscale), offs.data_ptr(),
                              base2.data_ptr(), gptr.data_ptr(), ptr(scales), y.data_ptr(), n, k, bsz, k, n, blocks,
                              32 * cfg.num_warps,
                              torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"grp8cu launch failed: {lib.sl_error_string(code).decode()} (code {code})")
    return y


def gemv_host(x: torch.Tensor, p, batch: int = 1, unroll: int = 1) -> torch.Tensor:
    """The kernels' arithmetic on the CPU (float32 (B, N)): what the CPU tests check against a dense reference.
    batch: the padded batch of the kernel to emulate (1: the batch-1 kernel; 2-16: the batched one); unroll: the
    batch-1 kernel's quads per load step (1, 2, 4 or 8: the same sums in the same order, tail steps differ)."""
    _check(x, p, batch)
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"grp8cu host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    vals, gscale, offs, base2, gptr = (None if t is None else t.cpu() for t in aux(p))
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    scales = p.scales.reshape(-1).contiguous().cpu() if p.scales is not None and gscale is None else None
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    code = lib.sl_grp8_host(_vt(p), _XT[x.dtype], batch, unroll, x.data_ptr(), vals.data_ptr(), ptr(gscale),
                            *_group_args(p, gscale), offs.data_ptr(),
                            base2.data_ptr(), gptr.data_ptr(), ptr(scales), y.data_ptr(), n, k, x.shape[0])
    if code != 0:
        raise ValueError(f"grp8cu host: unsupported values {p.values.dtype} with x {x.dtype}, batch {batch}, "
                         f"unroll {unroll}")
    return y
