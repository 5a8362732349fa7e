"""Per-nonzero Triton kernel over a load-time repack in which each nonzero is ONE 32-bit word ("vc32").

    word = (column << 16) | bits(value)      value: fp16 or bf16, column < 65536
    y[b, n] = sum_{i in row n} value(word_i) * x[b, column(word_i)]

Why this layout (measured on an H200 before it: docs/notes/gpu.md): the bitmask kernel does ~17 instructions
per weight *position* and is issue-bound; the csr8 kernel works per nonzero but needs the 256-column segment
table (a dependent load before every value load) and walks 16 segments of uneven length in lock-step, idling a
third of its slots. Here a row's words are contiguous (row-major, as `values`), so a program needs only
`row_ptr` before it streams them, every slot up to the row's length is useful, and one 4-byte load gives both
the value and its column: a warp-wide load is one 128-byte line. With the default lane layout (VEC = 1: the
compiler cannot prove 16-byte alignment, so it puts one word per lane) the 32 lanes of a warp take 32
consecutive nonzeros of one row, whose columns span ~128 positions at 75% sparsity, so the x gather touches ~2
cache lines per warp instruction instead of one per lane. VEC > 1 (rows padded to VEC words) trades that
locality for vector loads; the benchmark measures both.

Bytes per weight position at density d: 4 d (+ 4/K for row_ptr): 1.0 at 75% (dense fp16: 2.0), 0.4 at 90%.
At 50% it reads as many bytes as dense, so dispatch keeps it for sparser layers only (by measurement).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _decode_words(w, BF16: tl.constexpr):
    """(column, fp32 value) of vc32 words: the layout's only definition on the kernel side."""
    col = (w >> 16) & 0xFFFF
    bits = (w & 0xFFFF).to(tl.int16)
    if BF16:
        v = bits.to(tl.bfloat16, bitcast=True).to(tl.float32)
    else:
        v = bits.to(tl.float16, bitcast=True).to(tl.float32)
    return col, v


@triton.jit
def _load_words(w_ptr, start, cnt, t, TILE: tl.constexpr, VEC: tl.constexpr, BF16: tl.constexpr):
    """(column, fp32 value, valid) of words [t, t + TILE) of rows starting at `start` with `cnt` words."""
    lane = tl.arange(0, TILE)
    if VEC > 1:  # rows padded to VEC words: the hint and a VEC-constant mask let loads become vectors
        base = tl.multiple_of(start + t, VEC)
        ok = (t // VEC + lane // VEC)[None, :] < (cnt // VEC)[:, None]
    else:
        base = start + t
        ok = (t + lane)[None, :] < cnt[:, None]
    w = tl.load(w_ptr + base[:, None] + lane[None, :], mask=ok, other=0)  # (BN, TILE) int32
    col, v = _decode_words(w, BF16)
    return col, v, ok


@triton.jit
def _vc32_step(x_ptr, w_ptr, start, cnt, t, TILE: tl.constexpr, VEC: tl.constexpr, BF16: tl.constexpr):
    """Batch-1 products of words [t, t + TILE) of rows starting at `start` with `cnt` words, (BLOCK_N, TILE)."""
    col, v, ok = _load_words(w_ptr, start, cnt, t, TILE, VEC, BF16)
    return v * tl.load(x_ptr + col, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def vc32_spmv_kernel(x_ptr, w_ptr, rp_ptr, y_ptr, N, B, stride_xb, stride_yb, n_progs, steps,
                     BLOCK_N: tl.constexpr, TILE: tl.constexpr, BLOCK_B: tl.constexpr, VEC: tl.constexpr,
                     BF16: tl.constexpr, PERSIST: tl.constexpr = 0, STAGES: tl.constexpr = 2):
    """One program: rows [pid_n*BLOCK_N, +BLOCK_N) x batch rows [pid_b*BLOCK_B, +BLOCK_B); TILE words per row
    per step. Padding words (VEC > 1) are 0: value 0.0 at column 0, harmless.

    PERSIST 1 (batch 1 only, BLOCK_B 1): n_progs programs, each walking row blocks pid, pid + n_progs, ... in
    exactly `steps` TILE-word steps each (the longest row's, >= 1) as ONE flat loop pipelined by Triton
    (tl.range num_stages=STAGES): the next row's row_ptr and word loads are issued while this row's gather and
    FMAs run. Flat, not a row-block loop around the per-row loop, because Triton only pipelines innermost loops;
    see grp8i_spmv_kernel for the trade-off (shorter rows take masked steps)."""
    pid_n = tl.program_id(0)
    if PERSIST:
        n_rb = tl.cdiv(N, BLOCK_N)
        mine = (n_rb - pid_n + n_progs - 1) // n_progs  # row blocks of this program (0 when pid_n >= n_rb)
        part = tl.zeros((BLOCK_N, TILE), dtype=tl.float32)
        for i in tl.range(0, mine * steps, num_stages=STAGES):
            s = i % steps
            rn = (pid_n + (i // steps) * n_progs) * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = rn < N
            start = tl.load(rp_ptr + rn, mask=n_ok, other=0)
            cnt = tl.load(rp_ptr + rn + 1, mask=n_ok, other=0) - start
            prod = _vc32_step(x_ptr, w_ptr, start, cnt, s * TILE, TILE, VEC, BF16)
            part = tl.where(s == 0, prod, part + prod)  # a new row block starts from zero
            if s == steps - 1:
                tl.store(y_ptr + rn, tl.sum(part, axis=1).to(y_ptr.dtype.element_ty), mask=n_ok)
    else:
        pid_b = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        start = tl.load(rp_ptr + rn, mask=n_ok, other=0)
        cnt = tl.load(rp_ptr + rn + 1, mask=n_ok, other=0) - start
        ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_ok = ob < B
        part = tl.zeros((BLOCK_N, TILE), dtype=tl.float32)  # batch 1: per-slot sums, reduced once at the end
        part3 = tl.zeros((BLOCK_N, BLOCK_B, TILE), dtype=tl.float32)  # batch > 1
        for t in range(0, tl.max(cnt, axis=0), TILE):
            if BLOCK_B == 1:
                part += _vc32_step(x_ptr + pid_b * stride_xb, w_ptr, start, cnt, t, TILE, VEC, BF16)
            else:
                col, v, ok = _load_words(w_ptr, start, cnt, t, TILE, VEC, BF16)
                xv = tl.load(x_ptr + ob[None, :, None] * stride_xb + col[:, None, :],
                             mask=ok[:, None, :] & b_ok[None, :, None], other=0.0).to(tl.float32)
                part3 += v[:, None, :] * xv
        if BLOCK_B == 1:
            acc = tl.sum(part, axis=1)[:, None]
        else:
            acc = tl.sum(part3, axis=2)
        tl.store(y_ptr + ob[None, :] * stride_yb + rn[:, None], acc.to(y_ptr.dtype.element_ty),
                 mask=n_ok[:, None] & b_ok[None, :])


@triton.jit
def vc32t_spmm_kernel(xt_ptr, w_ptr, rp_ptr, y_ptr, N, B, stride_yb,
                      BLOCK_N: tl.constexpr, TILE: tl.constexpr, BLOCK_B: tl.constexpr, BF16: tl.constexpr):
    """Small batches (2-16) over the same words, with x transposed to (K, B): a nonzero's B activations are one
    contiguous run (32 bytes at batch 16), so each nonzero costs one vector gather instead of B scalar ones —
    the batched vc32 kernel above gathers x[b, col] once per batch row and fell to 0.2-0.7x cuBLAS at batch
    4-8. Every program walks its rows' words once and accumulates all batch rows."""
    pid_n = tl.program_id(0)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    start = tl.load(rp_ptr + rn, mask=n_ok, other=0)
    cnt = tl.load(rp_ptr + rn + 1, mask=n_ok, other=0) - start
    lane = tl.arange(0, TILE)
    ob = tl.arange(0, BLOCK_B)
    b_ok = ob < B
    part = tl.zeros((BLOCK_N, TILE, BLOCK_B), dtype=tl.float32)
    for t in range(0, tl.max(cnt, axis=0), TILE):
        ok = (t + lane)[None, :] < cnt[:, None]
        w = tl.load(w_ptr + start[:, None] + t + lane[None, :], mask=ok, other=0)
        col, v = _decode_words(w, BF16)
        xv = tl.load(xt_ptr + col[:, :, None] * B + ob[None, None, :], mask=ok[:, :, None] & b_ok[None, None, :],
                     other=0.0).to(tl.float32)
        part += v[:, :, None] * xv
    acc = tl.sum(part, axis=1)  # (BLOCK_N, BLOCK_B)
    tl.store(y_ptr + ob[None, :] * stride_yb + rn[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & b_ok[None, :])
