"""Triton kernels for y = x @ W.T with W in sparselm-bitmask v1 (FORMAT.md), plus a tile decompressor.

Decode of one (BLOCK_N rows x BLOCK_K columns) tile, viewed as (BLOCK_N, WORDS, 32), for every position in
parallel (lanes run along the 32 bits of a mask word):
    word   = mask word w of row n                                  (one int32 load per word)
    idx    = chunk_ptr[n, chunk] + exclusive_cumsum_w(popc(word)) + popc(word & (2^i - 1))
    W[n,c] = bit i of word ? values[idx] (* scale) : 0              (c = 32 w + i)
`chunk_ptr` (int32, FORMAT.md "Auxiliary arrays") makes the tiles independent; the only scan is over WORDS.
Then CUDA-core FMAs (batch <= 8) or tensor cores (tl.dot, batch padded to >= 16).

Measured on an H200 this is issue-bound (~17 SASS instructions per weight position, zero or not): 0.6-0.97x
cuBLAS at batch 1 (see .notes / benchmarks/results/gpu_kernels.json); csr8_spmv.py works per nonzero instead.
"""

from __future__ import annotations

import triton
import triton.language as tl

SCALE_NONE, SCALE_ROW, SCALE_GROUP = 0, 1, 2  # int8: no scales / one per row (applied once) / per group


@triton.jit
def _popc(v, NATIVE: tl.constexpr):
    """Population count of int32 lanes: one PTX popc on the GPU; a SWAR sum where inline asm cannot run.

    NATIVE (in every kernel here): compiled for a GPU. False under TRITON_INTERPRET=1.
    """
    if NATIVE:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        u = v.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _decode_tile(words_ptr, values_ptr, cptr_ptr, scales_ptr, rn, n_ok, c, N, K, n_words, n_chunks,
                 n_groups, group_size, BLOCK_K: tl.constexpr, SCALE_MODE: tl.constexpr, NATIVE: tl.constexpr):
    """Dense fp32 tile W[rn, c*BLOCK_K : (c+1)*BLOCK_K] as (BLOCK_N, WORDS, 32), and its columns (WORDS, 32).

    idx(n, w, i) = chunk_ptr[n, c] + exclusive_cumsum_w(popc(word)) + popc(word & (2^i - 1)): element-wise
    except a short scan over the WORDS axis (1/32 of the positions).
    """
    WORDS: tl.constexpr = BLOCK_K // 32
    rw = c * WORDS + tl.arange(0, WORDS)
    word = tl.load(words_ptr + rn[:, None] * n_words + rw[None, :],
                   mask=n_ok[:, None] & (rw < n_words)[None, :], other=0)  # (BN, WORDS) int32
    cnt = _popc(word, NATIVE)
    base = tl.load(cptr_ptr + rn * n_chunks + c, mask=n_ok, other=0)  # (BN,)
    wbase = base[:, None] + tl.cumsum(cnt, axis=1) - cnt  # (BN, WORDS): first nonzero of each word
    i = tl.arange(0, 32)
    below = (1 << i) - 1  # bits under column i of its word; i = 31 wraps to 0x7fffffff, as wanted
    w3 = word[:, :, None]
    nz = (w3 & (1 << i)[None, None, :]) != 0  # (BN, WORDS, 32)
    idx = wbase[:, :, None] + _popc(w3 & below[None, None, :], NATIVE)
    w = tl.load(values_ptr + idx, mask=nz, other=0).to(tl.float32)
    cols = (c * BLOCK_K + 32 * tl.arange(0, WORDS))[:, None] + i[None, :]  # (WORDS, 32)
    if SCALE_MODE == 2:
        s = tl.load(scales_ptr + rn[:, None, None] * n_groups + (cols // group_size)[None, :, :],
                    mask=n_ok[:, None, None] & (cols < K)[None, :, :], other=0.0)
        w = w * s
    return w, cols


@triton.jit
def bitmask_spmm_kernel(x_ptr, words_ptr, values_ptr, cptr_ptr, scales_ptr, y_ptr,
                        N, K, B, n_words, n_chunks, n_groups, group_size, stride_xb, stride_yb,
                        chunks_per_split,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
                        SCALE_MODE: tl.constexpr, USE_DOT: tl.constexpr, ATOMIC: tl.constexpr,
                        NATIVE: tl.constexpr):
    """y[b, n] (+)= sum_c W[n, c] x[b, c] over this program's row block, batch block and K split."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    n_ok = rn < N
    b_ok = rb < B
    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, BLOCK_B, 32), dtype=tl.float32)  # FMA path, batch > 1: per-lane partial sums
    acc1 = tl.zeros((BLOCK_N, BLOCK_K // 32, 32), dtype=tl.float32)  # FMA path, batch 1: per-position sums
    c_lo = pid_s * chunks_per_split
    c_hi = tl.minimum(c_lo + chunks_per_split, n_chunks)
    for c in range(c_lo, c_hi):
        w, cols = _decode_tile(words_ptr, values_ptr, cptr_ptr, scales_ptr, rn, n_ok, c, N, K, n_words,
                               n_chunks, n_groups, group_size, BLOCK_K, SCALE_MODE, NATIVE)
        if USE_DOT:
            w2 = tl.reshape(w, (BLOCK_N, BLOCK_K))
            cols2 = c * BLOCK_K + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + rb[:, None] * stride_xb + cols2[None, :],
                         mask=b_ok[:, None] & (cols2 < K)[None, :], other=0.0)  # (BB, BK)
            if NATIVE:
                acc += tl.dot(w2.to(xt.dtype), tl.trans(xt))
            else:  # the interpreter's bf16 dot is wrong (triton 3.9): same math in fp32
                acc += tl.dot(w2.to(xt.dtype).to(tl.float32), tl.trans(xt.to(tl.float32)))
        elif BLOCK_B == 1:
            xb = tl.load(x_ptr + pid_b * stride_xb + cols, mask=cols < K, other=0.0).to(tl.float32)
            acc1 += w * xb[None, :, :]  # one FFMA per position; reduced once after the loop
        else:
            # CUDA cores, a few batch rows: (BN, BB, WORDS, 32) products, reduced over words in-thread
            xt = tl.load(x_ptr + rb[:, None, None] * stride_xb + cols[None, :, :],
                         mask=b_ok[:, None, None] & (cols < K)[None, :, :], other=0.0).to(tl.float32)
            acc3 += tl.sum(w[:, None, :, :] * xt[None, :, :, :], axis=2)
    if not USE_DOT:
        if BLOCK_B == 1:
            acc = tl.sum(tl.sum(acc1, axis=2), axis=1)[:, None]
        else:
            acc = tl.sum(acc3, axis=2)
    if SCALE_MODE == 1:
        s = tl.load(scales_ptr + rn, mask=n_ok, other=0.0)
        acc = acc * s[:, None]
    out_ptr = y_ptr + rb[None, :] * stride_yb + rn[:, None]
    out_mask = n_ok[:, None] & b_ok[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptr, acc, mask=out_mask)
    else:
        tl.store(out_ptr, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def bitmask_decompress_kernel(words_ptr, values_ptr, cptr_ptr, scales_ptr, w_ptr,
                              N, K, n_words, n_chunks, n_groups, group_size,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_MODE: tl.constexpr,
                              NATIVE: tl.constexpr):
    """Dense W (N, K) from the bitmask format, one (BLOCK_N, BLOCK_K) tile per program."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1)
    n_ok = rn < N
    w, cols = _decode_tile(words_ptr, values_ptr, cptr_ptr, scales_ptr, rn, n_ok, c, N, K, n_words,
                           n_chunks, n_groups, group_size, BLOCK_K, SCALE_MODE, NATIVE)
    if SCALE_MODE == 1:
        s = tl.load(scales_ptr + rn, mask=n_ok, other=0.0)
        w = w * s[:, None, None]
    tl.store(w_ptr + rn[:, None, None] * K + cols[None, :, :], w.to(w_ptr.dtype.element_ty),
             mask=n_ok[:, None, None] & (cols < K)[None, :, :])
