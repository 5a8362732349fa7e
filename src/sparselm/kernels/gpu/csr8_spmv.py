"""Per-nonzero Triton kernel for small batches over a load-time repack of the bitmask format ("csr8").

Why: the bitmask kernel (bitmask_spmm.py) spends ~17 instructions on every weight *position*, zero or not
(measured on an H200: 0.6-0.97x cuBLAS at batch 1, nearly flat in sparsity), so it is issue-bound. Here the work
is per *nonzero*: with 256-column chunks, the nonzeros of (row n, chunk c) are values[cp[n,c] : cp[n,c+1]] (the
canonical row-major values, untouched) and their columns are 256*c + cols8[i] with cols8 (nnz,) uint8 derived at
load time (FORMAT.md "Auxiliary arrays"). One program takes BLOCK_N rows x CHUNKS chunks at once and walks slot
s = 0, SLOTS, 2*SLOTS, ... of every (row, chunk) segment together:

    y[b, n] = sum_c sum_{s < cnt[n,c]} values[cp[n,c] + s] * x[b, 256*c + cols8[cp[n,c] + s]]  (* scale)

Bytes per weight position at density d: d*(value bytes + 1) + 4/256 (cp): 0.77 at 75% with fp16 values,
vs 0.64 for the bitmask kernel; the mask itself is not read.
"""

from __future__ import annotations

import triton
import triton.language as tl

CSR8_CHUNK = 256  # columns per chunk: the uint8 in-chunk column index covers exactly 256


@triton.jit
def csr8_spmv_kernel(x_ptr, values_ptr, cols_ptr, cp_ptr, scales_ptr, y_ptr,
                     N, K, B, n_cp, n_groups, group_size, stride_xb, stride_yb,
                     BLOCK_N: tl.constexpr, CHUNKS: tl.constexpr, SLOTS: tl.constexpr, BLOCK_B: tl.constexpr,
                     SCALE_MODE: tl.constexpr, VEC: tl.constexpr):
    """One program: rows [pid_n*BLOCK_N, +BLOCK_N) x every chunk, batch rows [pid_b*BLOCK_B, +BLOCK_B).

    VEC > 1: the padded layout (every segment starts on, and is padded with zeros to, a multiple of VEC
    entries), which lets values/cols load as VEC-wide vectors: the start hint and a mask constant over each
    VEC-group are what the compiler needs to see that.
    """
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rb = tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    part = tl.zeros((BLOCK_N, CHUNKS, SLOTS), dtype=tl.float32)  # batch 1: per-slot sums, reduced at the end
    part4 = tl.zeros((BLOCK_N, BLOCK_B, CHUNKS, SLOTS), dtype=tl.float32)  # batch > 1: the same per batch row
    ob = pid_b * BLOCK_B + rb
    n_chunks = n_cp - 1
    for c0 in range(0, n_chunks, CHUNKS):
        rc = c0 + tl.arange(0, CHUNKS)
        c_ok = n_ok[:, None] & (rc < n_chunks)[None, :]
        start = tl.load(cp_ptr + rn[:, None] * n_cp + rc[None, :], mask=c_ok, other=0)  # (BN, CH)
        end = tl.load(cp_ptr + rn[:, None] * n_cp + rc[None, :] + 1, mask=c_ok, other=0)
        cnt = end - start
        col0 = rc * 256
        for s0 in range(0, tl.max(tl.max(cnt, axis=1), axis=0), SLOTS):
            lane = tl.arange(0, SLOTS)
            if VEC > 1:  # hints on the per-segment base, where the compiler can use them
                base = tl.multiple_of(start + s0, (VEC, VEC))
                ok = (s0 // VEC + lane // VEC)[None, None, :] < (cnt // VEC)[:, :, None]  # VEC-constant
            else:
                base = start + s0
                ok = (s0 + lane)[None, None, :] < cnt[:, :, None]  # (BN, CH, SLOTS)
            idx = base[:, :, None] + lane[None, None, :]
            v = tl.load(values_ptr + idx, mask=ok, other=0).to(tl.float32)
            col = col0[None, :, None] + tl.load(cols_ptr + idx, mask=ok, other=0).to(tl.int32)
            if SCALE_MODE == 2:
                v = v * tl.load(scales_ptr + rn[:, None, None] * n_groups + col // group_size, mask=ok, other=0.0)
            if BLOCK_B == 1:
                xv = tl.load(x_ptr + pid_b * stride_xb + col, mask=ok, other=0.0).to(tl.float32)
                part += v * xv
            else:
                xv = tl.load(x_ptr + ob[None, :, None, None] * stride_xb + col[:, None, :, :],
                             mask=ok[:, None, :, :] & (ob < B)[None, :, None, None], other=0.0).to(tl.float32)
                part4 += v[:, None, :, :] * xv  # (BN, BB, CH, SLOTS)
    if BLOCK_B == 1:
        acc += tl.sum(tl.sum(part, axis=2), axis=1)[:, None]
    else:
        acc += tl.sum(tl.sum(part4, axis=3), axis=2)
    if SCALE_MODE == 1:
        acc = acc * tl.load(scales_ptr + rn, mask=n_ok, other=0.0)[:, None]
    tl.store(y_ptr + ob[None, :] * stride_yb + rn[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & (ob < B)[None, :])
