"""N:M-sparse matrices on the sparse tensor cores (`nm_mma.cu`, kernel "nmsp"): slots, layout, launch, batch 1-64.

    slots(packed)               # 1 or 2: the most nonzeros any aligned group of 4 columns holds; None if more
    rec = layout(packed)        # built once per matrix, cached on it under ("nmsp",)
    y = spmm(x, packed, cfg)    # x (B, K) fp16/bf16 on the GPU, B <= cfg.block_b (8, 16, 32 or 64)
    y = spmm_host(x, packed)    # the same registers, ldmatrix and mma.sp emulated on the CPU (tests): float32 (B, N)

Why: mma.sp takes a 2:4-sparse A as its kept values plus 2-bit positions, so an N:M matrix (2:4, 1:4, 2:8) needs
no software expansion on its way to the tensor cores, where the unstructured batched kernels (bmma, tmma) spend
~6-20 instructions per nonzero on it. Bytes per weight: 1:4 0.5625 (3.56x fewer than fp16 dense), 2:4 / 2:8 1.125
(nm_mma.cu's header gives the layout).

Config (SpmmConfig(kernel="nmsp", ...)): block_b = padded batch 8 / 16 / 32 / 64; num_warps = 4 or 8 (one 16-row
band each); split_k = blocks along K: 2-8 form one thread-block cluster, whose blocks add their partial sums through
distributed shared memory (deterministic, no workspace); 16 or 32 add fp32 atomics into the split-K workspace of
cuda_mma.workspace; num_stages = 128-column chunks in flight per warp (1-3: records in registers, x staged that far
ahead); block_k 128.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.kernels.gpu import cuda_build
from sparselm.kernels.gpu.cuda_mma import BATCHES, aligned16, splits, workspace
from sparselm.kernels.gpu.cuda_nm import _mask

_SOURCE = Path(__file__).with_name("nm_mma.cu")
CHUNK = 128  # columns per record (nm_mma.cu XC)
WARPS = (4, 8)
STAGES = (1, 2, 3)
SPLITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)  # 2-8: one cluster; 16, 32: atomics into a workspace
_VT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_nmsp_launch.restype = i32
        # (vt, S, BP, W, D), (x, rec, y, ws, cnt), (N, K, bsz, ldx, ldy, n_chunks, per, splits), stream
        lib.sl_nmsp_launch.argtypes = [i32] * 5 + [vp] * 5 + [i32] * 8 + [vp]
        lib.sl_nmsp_error_string.restype = ctypes.c_char_p
        lib.sl_nmsp_error_string.argtypes = [i32]
    else:
        lib.sl_nmsp_host.restype = i32
        lib.sl_nmsp_host.argtypes = [i32] * 3 + [vp] * 3 + [i32] * 4


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load
available = _LIB.available
build_error = _LIB.build_error


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "nmsp"."""
    if (cfg.block_b not in BATCHES or cfg.num_warps not in WARPS or cfg.block_k != CHUNK
            or cfg.split_k not in SPLITS or isinstance(cfg.split_k, bool)
            or cfg.num_stages not in STAGES or isinstance(cfg.num_stages, bool)
            or cfg.unroll != 1 or not cfg.smem or cfg.persist):
        raise ValueError(f"SpmmConfig nmsp: block_b (padded batch) in {BATCHES}, num_warps in {WARPS}, num_stages "
                         f"in {STAGES}, block_k {CHUNK}, split_k in {SPLITS}, no persist / unroll / smem=False; "
                         f"got {cfg}")


def slots(p) -> int | None:
    """1 or 2: the most nonzeros in any aligned group of 4 columns (1 also for an all-zero matrix); None when a
    group holds more, K is not a multiple of 8 (x's 16-byte staging) or the values are not fp16 / bf16. Cached."""
    key = ("nmsp-slots",)
    if key not in p._cptr:
        n, k = p.shape
        s = None
        if p.values.dtype in _VT and k % 8 == 0 and n and k:
            most = int(_mask(p).view(n, k // 4, 4).sum(-1).max())
            s = max(1, most) if most <= 2 else None
        p._cptr[key] = s
    return p._cptr[key]


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 16) -> bool:
    """A mask with at most 2 nonzeros per aligned group of 4 (`slots`), fp16 / bf16 values (x of the same dtype),
    padded batch 8-64."""
    if batch not in BATCHES or slots(p) is None:
        return False
    return x_dtype is None or x_dtype == p.values.dtype


def layout(p) -> torch.Tensor:
    """The records (int32, 4 words per 16-byte vector), cached under ("nmsp",); nm_mma.cu's header gives the order.
    Built from the dense weight with a few vectorized passes on the matrix's device."""
    key = ("nmsp",)
    if key in p._cptr:
        return p._cptr[key]
    s = slots(p)
    if s is None:
        raise ValueError("nmsp: the matrix has a group of 4 columns with more than 2 nonzeros (or K % 8 != 0, or "
                         "values other than fp16 / bf16)")
    n, k = p.shape
    nb, nch = -(-n // 16), -(-k // CHUNK)
    dev = p.values.device
    mask = torch.zeros(nb * 16, nch * CHUNK, dtype=torch.bool, device=dev)
    mask[:n, :k] = _mask(p)
    w = torch.zeros(nb * 16, nch * CHUNK, dtype=p.values.dtype, device=dev)
    w[mask] = p.values
    m4, w4 = mask.view(nb * 16, -1, 4), w.view(nb * 16, -1, 4)
    col = torch.arange(4, device=dev)
    if s == 1:
        pos = m4.to(torch.int8).argmax(-1)  # the nonzero's place in its group (0 where the group is empty)
        kept = w4.gather(-1, pos[..., None].long())[..., 0]
        # [b, h, g, c, j, s2, q, t] -> per lane (g, t): vector j holds steps 2 j + s2, halves (s2, q, h)
        v = kept.view(nb, 2, 8, nch, 2, 2, 2, 4).permute(0, 3, 4, 2, 7, 5, 6, 1)
        # position words (vector g holds steps 0-3): for (row g + 8 h, group 4 q + t), the position's high bit at
        # 8 q + 4 h + t (metadata lane q's byte), its low bit at 16 + 4 t + h + 2 q (lane t's nibble)
        q_, h_, t_ = (torch.arange(n_, device=dev).view(*sh_) for n_, sh_ in ((2, (2, 1, 1)), (2, (1, 2, 1)),
                                                                             (4, (1, 1, 4))))
        f = pos.long().view(nb, 2, 8, nch, 4, 2, 4).permute(0, 3, 2, 4, 5, 1, 6)  # [b, c, g, s, q, h, t]
        bits = ((f >> 1) << (8 * q_ + 4 * h_ + t_)) + ((f & 1) << (16 + 4 * t_ + h_ + 2 * q_))
        idx = bits.sum((-3, -2, -1))  # [b, c, g, s]: disjoint bits, so the sum is the OR
    else:
        # the 2 kept places of each group, ascending: nonzeros first, then the lowest free places (value 0)
        score = m4.to(torch.int32) * 8 - col
        two = score.topk(2, dim=-1).indices.sort(-1).values
        kept = w4.gather(-1, two)
        # [b, h, g, c, s, q, t, slot] -> per lane: vector s, words r = h + 2 q, halves slot
        v = kept.view(nb, 2, 8, nch, 4, 2, 4, 2).permute(0, 3, 4, 2, 6, 5, 1, 7)
        nib = (two[..., 0] | (two[..., 1] << 2)).long()
        sh = 16 * torch.arange(2, device=dev)[:, None] + 4 * torch.arange(4, device=dev)[None, :]  # [h, t]
        f = nib.view(nb, 2, 8, nch, 4, 2, 4).permute(0, 3, 2, 5, 4, 1, 6)  # [b, c, g, j=q, s, h, t]
        idx = (f << sh).sum((-2, -1))  # [b, c, g, j, s]
    vals = v.contiguous().view(nb, nch, -1).view(torch.int32)
    idx = torch.where(idx >= 2**31, idx - 2**32, idx).to(torch.int32).view(nb, nch, -1)
    p._cptr[key] = torch.cat([vals, idx], dim=-1).reshape(-1).contiguous()
    return p._cptr[key]


def nbytes(p) -> int:
    """Bytes the kernel reads for W: its records (values and index words; no mask, no row pointers)."""
    rec = layout(p)
    return rec.numel() * rec.element_size()


def _check(x: torch.Tensor, p, block_b: int) -> None:
    n, k = p.shape
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= block_b:
        raise ValueError(f"nmsp: x must be (B, {k}) with 1 <= B <= {block_b} (the config's padded batch), got "
                         f"{tuple(x.shape)}")
    if not supports(p, x.dtype, block_b):
        raise ValueError(f"nmsp: needs at most 2 nonzeros in every aligned group of 4 columns, K a multiple of 8, "
                         f"fp16 values with fp16 x or bf16 with bf16 and a padded batch in {BATCHES}; got slots "
                         f"{slots(p)}, values {p.values.dtype}, x {x.dtype}, K {k}, batch {block_b}")


def spmm(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x W^T on the GPU (cfg: block_b, num_warps, split_k, num_stages). `out`: a contiguous (B, N)
    tensor."""
    _check(x, p, cfg.block_b)
    n, k = p.shape
    lib, y = _LIB.prepare("nmsp", x, p, out)
    x = aligned16(x)
    rec = layout(p)
    n_chunks = -(-k // CHUNK)
    per, nsplit = splits(n_chunks, cfg.split_k)
    ws, cnt = workspace(p, cfg.block_b) if nsplit > 8 else (None, None)
    code = lib.sl_nmsp_launch(_VT[x.dtype], slots(p), cfg.block_b, cfg.num_warps, cfg.num_stages, x.data_ptr(),
                              rec.data_ptr(), y.data_ptr(), ws if ws is None else ws.data_ptr(),
                              cnt if cnt is None else cnt.data_ptr(), n, k, x.shape[0], k, n, n_chunks, per, nsplit,
                              torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"nmsp launch failed: {lib.sl_nmsp_error_string(code).decode()} (code {code})")
    return y


def spmm_host(x: torch.Tensor, p, block_b: int = 16) -> torch.Tensor:
    """The kernel's registers, ldmatrix and mma.sp on the CPU: float32 (B, N), for the CPU tests."""
    _check(x, p, block_b)
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"nmsp host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    rec = layout(p).cpu()
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    code = lib.sl_nmsp_host(_VT[x.dtype], slots(p), block_b, x.data_ptr(), rec.data_ptr(), y.data_ptr(), n, k,
                            x.shape[0], -(-k // CHUNK))
    if code == -2:
        raise AssertionError("nmsp host: a metadata index pair the tensor cores would reject (idx0 >= idx1)")
    if code != 0:
        raise ValueError(f"nmsp host: unsupported values {p.values.dtype} / batch {block_b}")
    return y
