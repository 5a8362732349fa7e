"""The CUDA C++ tensor-core kernel for batched y = x W^T over the bitmask format (`bitmask_mma.cu`).

    y = spmm(x, packed, cfg)        # x (B, K) fp16/bf16 on the GPU, B <= cfg.block_b (8, 16, 32 or 64)
    y = spmm_host(x, packed, bp)    # the same staging and expansion on the CPU (tests): float32 (B, N)

Why: at batch 8-64 the per-nonzero kernels pay B activation loads per nonzero (0.4x cuBLAS at batch 16,
gpu_kernels.json); here each warp expands its 16 x 16 tiles of W straight into mma.sync A fragments (cost per
weight position, independent of B) and x is the B operand. It reads the canonical format (mask words + packed
values) plus `chunk_ptr` at 128 columns with each row's end appended: 2.5 bytes per fp16 nonzero at 75%, against
grp8's 3.2.

Config (SpmmConfig(kernel="bmma", ...)): block_b = padded batch 8 / 16 / 32 / 64; num_warps = 4 or 8 warps per
block; block_n = rows per block, 16 per band (x is staged once per block), the num_warps * 16 / block_n warps of a
band splitting each chunk's mask words (more warps on layers with few rows: the profile found the kernel
latency-bound at ~3.7 warps per scheduler); num_stages = 4 chunks staged (3 in flight); split_k = blocks along K (fp32 partial sums in a per-matrix
workspace; the last split of a row block writes y and zeroes the workspace, so one launch and CUDA-graph safe).
Values fp16 with fp16 x, bf16 with bf16 x; K a multiple of 8 (x rows are copied as 16-byte vectors).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.kernels.gpu import cuda_build

_SOURCE = Path(__file__).with_name("bitmask_mma.cu")
CHUNK = 128  # columns per staged chunk (bitmask_mma.cu CH)
BATCHES = (8, 16, 32, 64)
WARPS = (4, 8)
STAGES = (4,)  # chunks staged per block (3 in flight; 8 timed no faster: gpu_kernels_batched_bmma_stages.json)
BANDS = (1, 2, 4, 8)  # 16-row bands per block (block_n = 16 x bands); warps per band = num_warps / bands
_VT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_bmma_launch.restype = i32
        # (vt, BP, W, KS), (x, vals, words, cp, y, ws, cnt), nnz,
        # (N, K, bsz, ldx, ldy, n_words, n_chunks, per, splits, cap), stream
        lib.sl_bmma_launch.argtypes = [i32] * 4 + [vp] * 8 + [ctypes.c_longlong] + [i32] * 10 + [vp]
        lib.sl_bmma_smem.restype = ctypes.c_size_t
        lib.sl_bmma_smem.argtypes = [i32] * 5
        lib.sl_bmma_error_string.restype = ctypes.c_char_p
        lib.sl_bmma_error_string.argtypes = [i32]
    else:
        lib.sl_bmma_host.restype = i32
        lib.sl_bmma_host.argtypes = [i32] * 3 + [vp] * 6 + [ctypes.c_longlong] + [i32] * 5


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load  # load("device" | "host"): the CDLL, or None when it cannot be built
available = _LIB.available
build_error = _LIB.build_error


def fits(p, cfg) -> bool:
    """Whether one block of cfg fits the GPU's shared memory for this matrix (True without a GPU: nothing to launch)."""
    if not torch.cuda.is_available():
        return True
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return smem_bytes(p, cfg) <= int(getattr(props, "shared_memory_per_block_optin", 232448))


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 16) -> bool:
    """fp16 / bf16 values (x of the same dtype), K a multiple of 8, padded batch 8-64, < 2^31 nonzeros."""
    n, k = p.shape
    if p.values.dtype not in _VT or k % 8 or batch not in BATCHES or p.values.numel() >= 2**31:
        return False
    return x_dtype is None or x_dtype == p.values.dtype


def aux(p) -> tuple[torch.Tensor, torch.Tensor]:
    """(cp, dst), cached on the matrix under ("bmma",): cp (N, ceil(K/128) + 1) int32 = chunk_ptr at 128 columns
    with each row's end appended (a chunk's nonzeros are values[cp[n, c] : cp[n, c + 1]]); dst (N, ceil(K/128))
    int32 = where row n's 16-byte value vectors of chunk c start in its warp's staging buffer (the exclusive sum of
    the vector counts of the rows above it in its 16-row band). With them, `cap(p)`."""
    if ("bmma",) not in p._cptr:
        had = CHUNK in p._cptr
        cp = p.chunk_ptr(CHUNK)
        end = p.row_ptr[1:].to(torch.int32).to(cp.device)[:, None]
        full = torch.cat([cp, end], dim=1).contiguous()
        if not had:  # only built for this: the extended copy holds it
            del p._cptr[CHUNK]
        # the vectors a row copies per chunk (the kernel's span_of), per 16-row band: offsets and the largest total,
        # which sizes every warp's staging buffer (read on the host once, here, never at call time)
        start, stop = full[:, :-1].long(), full[:, 1:].long()
        nvec = (stop - (start & ~7) + 7) >> 3
        n, nch = nvec.shape
        banded = torch.cat([nvec, nvec.new_zeros((-n) % 16, nch)]).view(-1, 16, nch)
        incl = banded.cumsum(1)
        dst = (incl - banded).reshape(-1, nch)[:n].to(torch.int32).contiguous()
        p._rowmax[("bmma",)] = max(1, int(incl[:, -1].max())) if incl.numel() else 1
        p._cptr[("bmma",)] = (full, dst)
    return p._cptr[("bmma",)]


def cap(p) -> int:
    """Value vectors per warp staging buffer for this matrix (the most any 16-row band's chunk needs)."""
    aux(p)
    return p._rowmax[("bmma",)]


def smem_bytes(p, cfg) -> int:
    """Dynamic shared memory one block of cfg needs for this matrix (0 where the library is not built)."""
    lib = load("device")
    if lib is None:
        return 0
    per, _ = splits(aux(p)[0].shape[1] - 1, cfg.split_k)
    return int(lib.sl_bmma_smem(cfg.block_b, cfg.num_warps, band_warps(cfg), cap(p), per))


def workspace(p, block_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 (block_b, N) partial sums, int32 per-row-block counters), zero between calls; cached per padded batch
    under ("bmma-ws", block_b)."""
    key = ("bmma-ws", block_b)
    if key not in p._cptr:
        n = p.shape[0]
        dev = p.values.device
        p._cptr[key] = (torch.zeros(block_b, n, device=dev, dtype=torch.float32),
                        torch.zeros(-(-n // 16), device=dev, dtype=torch.int32))
    return p._cptr[key]


def splits(n_chunks: int, split_k: int) -> tuple[int, int]:
    """(chunks per split, splits) for at most split_k splits, none of them empty."""
    per = -(-n_chunks // max(1, min(split_k, n_chunks)))
    return per, -(-n_chunks // per)


def aligned16(x: torch.Tensor) -> torch.Tensor:
    """x contiguous at a 16-byte aligned address (the tensor-core kernels stage it with 16-byte copies)."""
    x = x.contiguous()
    return x.clone() if x.data_ptr() % 16 else x


def check_input(kernel: str, x: torch.Tensor, p, block_b: int, supported) -> None:
    """The batched tensor-core kernels' (bmma, tmma) input rules; `supported`: the kernel's `supports`."""
    n, k = p.shape
    if x.dim() != 2 or x.shape[1] != k or not 1 <= x.shape[0] <= block_b:
        raise ValueError(f"{kernel}: x must be (B, {k}) with 1 <= B <= {block_b} (the config's padded batch), got "
                         f"{tuple(x.shape)}")
    if not supported(p, x.dtype, block_b):
        raise ValueError(f"{kernel}: needs fp16 values with fp16 x or bf16 with bf16, K a multiple of 8 and a "
                         f"padded batch in {BATCHES}; got values {p.values.dtype}, x {x.dtype}, K {k}, "
                         f"batch {block_b}")


def _check(x: torch.Tensor, p, block_b: int) -> None:
    check_input("bmma", x, p, block_b, supports)


def spmm(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x W^T on the GPU (cfg: block_b, num_warps, split_k). `out`: a contiguous (B, N) tensor of x's
    dtype."""
    _check(x, p, cfg.block_b)
    n, k = p.shape
    bsz = x.shape[0]
    lib, y = _LIB.prepare("bmma", x, p, out)
    x = aligned16(x)
    cp, dst = aux(p)
    n_chunks = cp.shape[1] - 1
    per, nsplit = splits(n_chunks, cfg.split_k)
    ws, cnt = workspace(p, cfg.block_b)
    code = lib.sl_bmma_launch(_VT[x.dtype], cfg.block_b, cfg.num_warps, band_warps(cfg), x.data_ptr(),
                              p.values.data_ptr(), p.words.data_ptr(), cp.data_ptr(), dst.data_ptr(), y.data_ptr(),
                              ws.data_ptr(),
                              cnt.data_ptr(), p.values.numel(), n, k, bsz, k, n, p.words.shape[1], n_chunks, per,
                              nsplit, cap(p), torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"bmma launch failed: {lib.sl_bmma_error_string(code).decode()} (code {code})")
    return y


def band_warps(cfg) -> int:
    """Warps that share each 16-row band (splitting its chunks' mask words): num_warps * 16 / block_n."""
    return cfg.num_warps * 16 // cfg.block_n


def spmm_host(x: torch.Tensor, p, block_b: int = 16, band_warps: int = 1) -> torch.Tensor:
    """The kernel's staging, expansion and fragment layouts on the CPU (mma emulated by the PTX fragment layout):
    float32 (B, N). What the CPU tests check against a dense reference."""
    _check(x, p, block_b)
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"bmma host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    cp, dst = (t.cpu() for t in aux(p))
    vals, words = p.values.cpu(), p.words.cpu().contiguous()  # alive through the call
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    code = lib.sl_bmma_host(_VT[x.dtype], block_b, band_warps, x.data_ptr(), vals.data_ptr(), words.data_ptr(), cp.data_ptr(),
                            dst.data_ptr(), y.data_ptr(), vals.numel(), n, k, x.shape[0], words.shape[1], cp.shape[1] - 1)
    if code != 0:
        raise ValueError(f"bmma host: unsupported values {p.values.dtype} / batch {block_b} / band warps {band_warps}")
    return y
