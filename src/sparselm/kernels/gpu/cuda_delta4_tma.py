"""The streamed batch-1 delta4 kernel (`delta4_tma.cu`, kernel "d4tma"): block splits, build, launch, emulation.

    y = gemv(x, packed, cfg)        # x (1, K) fp16/bf16 on an sm_90+ GPU; cfg: SpmmConfig(kernel="d4tma", ...)
    y = gemv_host(x, packed, cap=32, stages=3, parts=5)    # the same walk and sums on the CPU (tests)

Same layout and bytes as d4cu (cuda_delta4.layout: 2.68 bytes per fp16 nonzero at 75%), but the loads are bulk
copies (TMA) into a per-warp ring of shared-memory stages, issued by the warp's lane 0, so the bytes in flight no
longer depend on the registers a lane can spare: delta4_tma.cu's header says why that was d4cu's limit. Each warp of
the grid owns a range of rows with about the same number of chunks. Config fields: num_warps = warps per block,
persist = blocks per SM (1 or 2), block_k = chunks per stage (32 or 64: 1 or 2 per lane), num_stages = stages per
warp's ring.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.kernels.gpu import cuda_build, cuda_delta4
from sparselm.kernels.gpu.cuda_grp8 import smem_limit

_SOURCE = Path(__file__).with_name("delta4_tma.cu")
CAPS = (32, 64)  # chunks per stage: 1 or 2 per lane
_VT = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}
_XT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    lib.sl_d4t_smem.restype = i32
    lib.sl_d4t_smem.argtypes = [i32] * 5
    if kind == "device":
        lib.sl_d4t_launch.restype = i32
        # (vt, xt, stages, cap), (x, vals, steps, base, cptr, split, scales, y), (...), stream
        lib.sl_d4t_launch.argtypes = [i32] * 4 + [vp] * 8 + [i32] * 5 + [vp]  # (N, K, parts, blocks, threads)
        lib.sl_error_string.restype = ctypes.c_char_p
        lib.sl_error_string.argtypes = [i32]
    else:
        lib.sl_d4t_host.restype = i32
        lib.sl_d4t_host.argtypes = [i32] * 4 + [vp] * 8 + [i32] * 3  # (N, K, parts)


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load
build_error = _LIB.build_error


def available() -> bool:
    """Built for this GPU, and the GPU has the bulk-copy engine (compute capability 9.0 or later)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and _LIB.available()


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "d4tma": batch 1, x staged; num_warps 1-32; persist 1 or 2; block_k (chunks
    per stage) 32 or 64; num_stages 1-12; no other kernel's fields."""
    ok_int = lambda v, lo, hi: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi  # noqa: E731
    if not (cfg.block_b == 1 and cfg.smem and ok_int(cfg.num_warps, 1, 32) and ok_int(cfg.persist, 1, 2)
            and cfg.block_k in CAPS and ok_int(cfg.num_stages, 1, 12)
            and cfg.unroll == 1 and cfg.slots == 32 and cfg.split_k == 1
            and not (cfg.lean or cfg.col16 or cfg.use_dot)):
        raise ValueError(f"SpmmConfig d4tma: block_b 1, num_warps 1-32, persist (blocks per SM) 1 or 2, block_k "
                         f"(chunks per stage) in {CAPS}, num_stages 1-12, no unroll / slots / split_k "
                         f"/ lean / col16 / use_dot / smem=False; got {cfg}")


def config_key(cfg) -> str:
    return f"d4tma-w{cfg.num_warps}p{cfg.persist}c{cfg.block_k}s{cfg.num_stages}"


def _parts(p, cfg, device=None) -> tuple[int, int]:
    """(warps with rows, blocks launched): cfg.persist blocks per SM of cfg.num_warps warps (4 "SMs" without a
    device), at most one warp per row."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device is not None else 4
    parts = max(1, min(cfg.persist * sms * cfg.num_warps, p.shape[0]))
    return parts, -(-parts // cfg.num_warps)


def splits(p, parts: int) -> torch.Tensor:
    """(parts + 1,) int32 row boundaries, cached on the matrix under ("d4tma", parts): warp w owns rows
    [s[w], s[w + 1]), the first rows whose chunks start at or past w / parts of all."""
    key = ("d4tma", parts)
    if key not in p._cptr:
        cptr = cuda_delta4.layout(p)[3].to(torch.int64)
        n = p.shape[0]
        target = torch.arange(parts + 1, device=cptr.device, dtype=torch.float64) * float(cptr[-1]) / parts
        s = torch.searchsorted(cptr[:n].double().contiguous(), target).clamp(0, n)
        s[0], s[-1] = 0, n
        p._cptr[key] = torch.cummax(s, 0).values.to(torch.int32).contiguous()
    return p._cptr[key]


def smem_bytes(values: torch.dtype, stages: int, cap: int, warps: int, k: int) -> int:
    """delta4_tma.cu's dynamic shared memory (its sl_d4t_smem, which a CPU test checks this against)."""
    bars = (8 * warps * stages + 127) & ~127
    return bars + warps * stages * cap * ((16 if values == torch.int8 else 32) + 10) + 4 * k


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 1) -> bool:
    """Batch 1; the values d4cu serves (fp16 with fp16 x, bf16 with bf16, int8 with per-row scales with either)."""
    return batch == 1 and cuda_delta4.supports(p, x_dtype, batch=1, smem=True)


def fits(p, cfg) -> bool:
    """Whether cfg's rings and x fit one block's shared memory for this matrix."""
    return smem_bytes(p.values.dtype, cfg.num_stages, cfg.block_k, cfg.num_warps, p.shape[1]) <= smem_limit()


def supports_config(p, cfg) -> bool:
    return supports(p) and fits(p, cfg)


def aux_keys(p, cfg) -> set:
    device = torch.cuda.current_device() if torch.cuda.is_available() else None
    return {("d4cu",), ("d4tma", _parts(p, cfg, device)[0])}


def nbytes(p) -> int:
    """Bytes read for W: d4cu's arrays (the split table is a few hundred bytes, read once per block)."""
    return cuda_delta4.nbytes(p)


def _check(x: torch.Tensor, p) -> None:
    n, k = p.shape
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"d4tma: x must be (1, {k}) (batch 1), got {tuple(x.shape)}")
    if not supports(p, x.dtype):
        raise ValueError(f"d4tma: needs K <= {cuda_delta4.MAX_K} with 4 * K bytes of shared memory and values fp16 "
                         f"(x fp16) / bf16 (x bf16) / int8 with per-row scales; got K {k}, values {p.values.dtype}, "
                         f"x {x.dtype}")


def _scales(p, device) -> torch.Tensor | None:
    return None if p.scales is None else p.scales.reshape(-1).float().contiguous().to(device)


def gemv(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (1, N) = x W^T on the GPU with cfg (SpmmConfig kernel "d4tma")."""
    _check(x, p)
    if not available():
        raise RuntimeError(f"d4tma: needs an sm_90+ GPU and the built kernel ({build_error() or 'no such GPU'})")
    n, k = p.shape
    lib, y = _LIB.prepare("d4tma", x, p, out)
    x = x.contiguous()
    if not fits(p, cfg):
        raise ValueError(f"d4tma: {smem_bytes(p.values.dtype, cfg.num_stages, cfg.block_k, cfg.num_warps, k)} bytes "
                         f"of shared memory for {cfg.key()} at K {k} exceed {smem_limit()}")
    vals, steps, base, cptr = cuda_delta4.layout(p)
    parts, blocks = _parts(p, cfg, x.device)
    split = splits(p, parts)
    scales = _scales(p, x.device)
    code = lib.sl_d4t_launch(_VT[p.values.dtype], _XT[x.dtype], cfg.num_stages, cfg.block_k, x.data_ptr(),
                             vals.data_ptr(), steps.data_ptr(), base.data_ptr(), cptr.data_ptr(), split.data_ptr(),
                             None if scales is None else scales.data_ptr(), y.data_ptr(), n, k, parts, blocks,
                             32 * cfg.num_warps, torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"d4tma launch failed: {lib.sl_error_string(code).decode()} (code {code})")
    return y


def gemv_host(x: torch.Tensor, p, cap: int = 32, stages: int = 3, parts: int = 4) -> torch.Tensor:
    """The kernel's walk on the CPU (float32 (1, N)): `parts` warps' row ranges, stages of `cap` chunks through a
    ring of `stages`, lane sums carried across stages, the warp's shuffle tree per row."""
    _check(x, p)
    if cap not in CAPS or not 1 <= stages <= 12:
        raise ValueError(f"d4tma: cap (chunks per stage) in {CAPS}, stages 1-12; got {cap}, {stages}")
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"d4tma host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    vals, steps, base, cptr = (t.cpu() for t in cuda_delta4.layout(p))
    split = splits(p, max(1, min(parts, n))).cpu()
    scales = _scales(p, "cpu")
    y = torch.empty(1, n, dtype=torch.float32)
    code = lib.sl_d4t_host(_VT[p.values.dtype], _XT[x.dtype], stages, cap, x.data_ptr(), vals.data_ptr(),
                           steps.data_ptr(), base.data_ptr(), cptr.data_ptr(), split.data_ptr(),
                           None if scales is None else scales.data_ptr(), y.data_ptr(), n, k, split.numel() - 1)
    if code != 0:
        raise ValueError(f"d4tma host: unsupported values {p.values.dtype} with x {x.dtype}")
    return y


def host_smem(values: torch.dtype, stages: int, cap: int, warps: int, k: int) -> int:
    """sl_d4t_smem from the host build (what a CPU test compares smem_bytes with)."""
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"d4tma host build unavailable ({build_error('host')})")
    return lib.sl_d4t_smem(_VT[values], stages, cap, warps, k)
