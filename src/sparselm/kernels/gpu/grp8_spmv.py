"""Per-nonzero Triton kernel over 32-slot groups with one base column each and an 8-bit offset per nonzero
("grp8"): 3 bytes per fp16 nonzero (2 with int8 values) instead of vc32's 4, with no prefix sum to decode.

Layout (FORMAT.md "Auxiliary arrays", built at load time by `PackedBitmask.grp8`): each row's nonzeros, in
column order, are cut greedily into groups of at most 32 whose columns lie within 256 of the group's first
column (`base`); group g owns slots [32 g, 32 g + 32) of `gvals` (values) and `goffs` (uint8, column - base),
zero-padded; `gbase[g]` is the base (16 bits), `gptr[n]` the first group of row n.

    y[b, n] = sum_{g in row n} sum_{s < 32} gvals[32g+s] * x[b, gbase[g] + goffs[32g+s]]   (* scale)

Why: vc32 (one 32-bit word per nonzero) reaches ~3 TB/s on its own bytes on an H200, so at 75% sparsity it is
bound by its 1.0 byte per weight position (dense fp16: 2.0). Cutting the column to 8 bits relative to a group
base brings that to ~0.77 (0.52 with int8 values). Groups never straddle rows and start on 32-slot boundaries,
so a warp-wide load of 32 slots is one group: its base is one broadcast load and its columns span <= 256
positions of x (<= 4 cache lines of fp16), which keeps the x gather cheap. At 75% sparsity a group of 32 spans
~128 columns, so groups are nearly always full; at 90% they split more often (padding counted in the bytes).
"""

from __future__ import annotations

import triton
import triton.language as tl

GROUP = 32  # slots per group: one warp-wide load
SPAN = 256  # columns a group may cover: the 8-bit offset


@triton.jit
def grp8_spmv_kernel(x_ptr, vals_ptr, offs_ptr, base_ptr, gp_ptr, scales_ptr, y_ptr,
                     N, B, n_groups, group_size, stride_xb, stride_yb,
                     BLOCK_N: tl.constexpr, TILE: tl.constexpr, BLOCK_B: tl.constexpr, VEC: tl.constexpr,
                     SCALE_MODE: tl.constexpr):
    """One program: rows [pid_n*BLOCK_N, +BLOCK_N) x batch rows [pid_b*BLOCK_B, +BLOCK_B); TILE slots (a multiple
    of 32) per row per step. VEC > 1: tell the compiler slots start 32-aligned, so it may load vectors."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    g0 = tl.load(gp_ptr + rn, mask=n_ok, other=0)
    ng = tl.load(gp_ptr + rn + 1, mask=n_ok, other=0) - g0
    start = g0 * 32
    lane = tl.arange(0, TILE)
    ob = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = ob < B
    part = tl.zeros((BLOCK_N, TILE), dtype=tl.float32)
    part3 = tl.zeros((BLOCK_N, BLOCK_B, TILE), dtype=tl.float32)
    for t in range(0, tl.max(ng, axis=0) * 32, TILE):
        if VEC > 1:
            base = tl.multiple_of(start + t, 32)
        else:
            base = start + t
        ok = (t // 32 + lane // 32)[None, :] < ng[:, None]  # constant over each group: vector loads stay legal
        idx = base[:, None] + lane[None, :]
        v = tl.load(vals_ptr + idx, mask=ok, other=0).to(tl.float32)
        off = tl.load(offs_ptr + idx, mask=ok, other=0).to(tl.int32)
        gb = tl.load(base_ptr + idx // 32, mask=ok, other=0).to(tl.int32) & 0xFFFF
        col = gb + off
        if SCALE_MODE == 2:
            v = v * tl.load(scales_ptr + rn[:, None] * n_groups + col // group_size, mask=ok, other=0.0)
        if BLOCK_B == 1:
            xv = tl.load(x_ptr + pid_b * stride_xb + col, mask=ok, other=0.0).to(tl.float32)
            part += v * xv
        else:
            xv = tl.load(x_ptr + ob[None, :, None] * stride_xb + col[:, None, :],
                         mask=ok[:, None, :] & b_ok[None, :, None], other=0.0).to(tl.float32)
            part3 += v[:, None, :] * xv
    if BLOCK_B == 1:
        acc = tl.sum(part, axis=1)[:, None]
    else:
        acc = tl.sum(part3, axis=2)
    if SCALE_MODE == 1:
        acc = acc * tl.load(scales_ptr + rn, mask=n_ok, other=0.0)[:, None]
    tl.store(y_ptr + ob[None, :] * stride_yb + rn[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & b_ok[None, :])


@triton.jit
def _grp8i_step(x_ptr, vals_ptr, offs_ptr, base_ptr, scales_ptr, rn, start, nq, t, n_groups, group_size,
                BLOCK_N: tl.constexpr, TILE: tl.constexpr, SCALE_MODE: tl.constexpr, COL16: tl.constexpr = 0,
                MASKED: tl.constexpr = 1):
    """Products of slots [t, t + TILE) of rows rn (first slot `start`, nq quads each), shape (BLOCK_N, TILE/4, 4):
    the one definition of the interleaved layout's loads, shared by the per-row-block and persistent loops.

    COL16 (same results): column = (base + offset) & 0xFFFF instead of (base & 0xFFFF) + offset. Offline sm_90
    SASS (docs/notes/gpu.md "SASS analysis"): the default form is two zero-extended terms, which LLVM adds as
    64-bit byte offsets (SHL + IMAD.HI per term, IADD3 + IADD3.X: ~8 instructions per nonzero for the x
    address); the masked sum stays 32-bit (VIADD.16x2 for 2 columns, then LEA + LEA.HI.X): loop 149 -> 129
    instructions per 8 nonzeros per thread (fp16), 148 -> 135 (int8).

    COL16 2 (the lean kernel's form, K <= 32768 only): column = base + offset with the int16 base sign-extended
    as loaded; exact because every base is < 32768 there, and it skips the 16-bit repacking (PRMT / LOP3 per
    nonzero) that COL16 1 costs. MASKED 0: every slot of the step exists (the caller guarantees it), so the loads
    carry no predicate and no zero fill."""
    r = tl.arange(0, TILE // 4)  # lane-major position inside the step: quad r // 32, lane r % 32
    j = tl.arange(0, 4)  # the group inside the quad
    base = tl.multiple_of(start + t, 128)
    idx = base[:, None, None] + (4 * r)[None, :, None] + j[None, None, :]
    gidx = tl.multiple_of((base // 32)[:, None, None] + (4 * (r // 32))[None, :, None], (4, 4, 1)) + \
        j[None, None, :]
    if MASKED:
        ok = ((t // 128 + r // 32)[None, :, None] < nq[:, None, None]) & (j < 4)[None, None, :]
        v = tl.load(vals_ptr + idx, mask=ok, other=0).to(tl.float32)
        off = tl.load(offs_ptr + idx, mask=ok, other=0).to(tl.int32)
        gb = tl.load(base_ptr + gidx, mask=ok, other=0).to(tl.int32)  # the int16 base, sign-extended
    else:
        v = tl.load(vals_ptr + idx).to(tl.float32)
        off = tl.load(offs_ptr + idx).to(tl.int32)
        gb = tl.load(base_ptr + gidx).to(tl.int32)
    if COL16 == 2:  # K <= 32768: the sign-extended base is the base
        col = gb + off
    elif COL16:  # the sum's low 16 bits: exact (every column < K <= 65536), and lets the compiler add 16-bit pairs
        col = (gb + off) & 0xFFFF
    else:
        col = (gb & 0xFFFF) + off
    if MASKED:
        if SCALE_MODE == 2:
            v = v * tl.load(scales_ptr + rn[:, None, None] * n_groups + col // group_size, mask=ok, other=0.0)
        return v * tl.load(x_ptr + col, mask=ok, other=0.0).to(tl.float32)
    if SCALE_MODE == 2:
        v = v * tl.load(scales_ptr + rn[:, None, None] * n_groups + col // group_size)
    # unsigned: the address is x + 2 * zext(col), which keeps the column sum in 32 bits (a sign-extended index
    # lets LLVM split it into two 64-bit adds: 12.4 instead of 13.6 SASS instructions per nonzero offline)
    return v * tl.load(x_ptr + col.to(tl.uint32)).to(tl.float32)


@triton.jit
def _grp8i_rows(gp_ptr, rb, N, BLOCK_N: tl.constexpr):
    """(rows, in-range mask, first slot, quads per row) of row block rb (rows are padded to whole quads)."""
    rn = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    g0 = tl.load(gp_ptr + rn, mask=n_ok, other=0)
    nq = (tl.load(gp_ptr + rn + 1, mask=n_ok, other=0) - g0) // 4
    return rn, n_ok, tl.multiple_of(g0 * 32, 128), nq


@triton.jit
def _grp8i_store(y_ptr, scales_ptr, part, rn, n_ok, SCALE_MODE: tl.constexpr):
    acc = tl.sum(tl.sum(part, axis=2), axis=1)
    if SCALE_MODE == 1:
        acc = acc * tl.load(scales_ptr + rn, mask=n_ok, other=0.0)
    tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def grp8i_spmv_kernel(x_ptr, vals_ptr, offs_ptr, base_ptr, gp_ptr, scales_ptr, y_ptr,
                      N, n_groups, group_size, stride_xb, n_progs, steps,
                      BLOCK_N: tl.constexpr, TILE: tl.constexpr, SCALE_MODE: tl.constexpr,
                      PERSIST: tl.constexpr = 0, STAGES: tl.constexpr = 2, COL16: tl.constexpr = 0,
                      LEAN: tl.constexpr = 0):
    """Batch 1 over the interleaved grp8 layout (`PackedBitmask.grp8(interleave=4)`): rows padded to whole quads
    of 4 groups (128 slots), and inside a quad slot 32j + l (group j, lane l) stored at 4l + j. A lane then loads
    the 4 values (8 bytes), 4 offsets (4 bytes) and the quad's 4 bases (8 bytes, the same for every lane) of its
    4 nonzeros as three vectors — 5 loads per 4 nonzeros instead of 12 — while each of its 4 x gathers still
    spans one group across the warp's lanes (32 consecutive nonzeros: ~2 cache lines).

    PERSIST 0: one program per row block of BLOCK_N rows, looping over its rows' TILE-slot steps.
    PERSIST 1: n_progs programs (a few per SM); program pid takes row blocks pid, pid + n_progs, ... and walks
    every one of them in exactly `steps` TILE-slot steps (steps = the longest row's, >= 1, from the host). Why:
    a row block is only ~1-2 steps, each a dependent chain gptr -> values/offsets/bases -> x gather -> FMA, so
    one program per row block is latency-bound with nothing to overlap. Here the steps of all of a program's
    row blocks form ONE flat loop whose iteration i maps to (row block, step) by arithmetic on i alone, so
    Triton's software pipeliner (tl.range num_stages=STAGES) can issue iteration i+1's gptr and data loads
    while iteration i's FMAs run. The flat loop is deliberate: Triton pipelines innermost loops only (a loop
    holding another scf.for is left alone), so a row-block loop around today's per-row loop would not
    pipeline; and mapping i -> (row block, step) from the loaded row lengths would make every address depend
    on the previous iteration's loads. The price: rows shorter than the longest take masked (no-traffic) steps,
    so matrices with a few very long rows run slower here (autotune measures, and keeps PERSIST 0 there).

    COL16 1: the 32-bit column sum (`_grp8i_step`), same results with fewer instructions per nonzero.

    LEAN 1 (PERSIST 0, BLOCK_N 1, K <= 32768; COL16 2): the row's whole TILE-slot steps run with no load masks,
    then one masked step takes the remainder. The H200 profile (benchmarks/results/gpu_profile_h200.json) found
    these kernels under 58-80% issue pressure at 20-29 executed instructions per nonzero; the masked form pays a
    zero fill (PRMT) and predicate setup on every gather, and the 16-bit column repacking, which this drops."""
    pid = tl.program_id(0)
    if LEAN:
        rn, n_ok, start, nq = _grp8i_rows(gp_ptr, pid, N, 1)
        part = tl.zeros((1, TILE // 4, 4), dtype=tl.float32)
        n_full = (tl.max(nq, axis=0) * 128) // TILE * TILE  # slots covered by whole steps
        for t in range(0, n_full, TILE):
            part += _grp8i_step(x_ptr, vals_ptr, offs_ptr, base_ptr, scales_ptr, rn, start, nq, t, n_groups,
                                group_size, 1, TILE, SCALE_MODE, 2, 0)
        if n_full < tl.max(nq, axis=0) * 128:
            part += _grp8i_step(x_ptr, vals_ptr, offs_ptr, base_ptr, scales_ptr, rn, start, nq, n_full, n_groups,
                                group_size, 1, TILE, SCALE_MODE, 2, 1)
        _grp8i_store(y_ptr, scales_ptr, part, rn, n_ok, SCALE_MODE)
    elif PERSIST == 0:
        rn, n_ok, start, nq = _grp8i_rows(gp_ptr, pid, N, BLOCK_N)
        part = tl.zeros((BLOCK_N, TILE // 4, 4), dtype=tl.float32)
        for t in range(0, tl.max(nq, axis=0) * 128, TILE):
            part += _grp8i_step(x_ptr, vals_ptr, offs_ptr, base_ptr, scales_ptr, rn, start, nq, t, n_groups,
                                group_size, BLOCK_N, TILE, SCALE_MODE, COL16)
        _grp8i_store(y_ptr, scales_ptr, part, rn, n_ok, SCALE_MODE)
    else:
        n_rb = tl.cdiv(N, BLOCK_N)
        mine = (n_rb - pid + n_progs - 1) // n_progs  # row blocks of this program (0 when pid >= n_rb)
        part = tl.zeros((BLOCK_N, TILE // 4, 4), dtype=tl.float32)
        for i in tl.range(0, mine * steps, num_stages=STAGES):
            s = i % steps
            rn, n_ok, start, nq = _grp8i_rows(gp_ptr, pid + (i // steps) * n_progs, N, BLOCK_N)
            prod = _grp8i_step(x_ptr, vals_ptr, offs_ptr, base_ptr, scales_ptr, rn, start, nq, s * TILE, n_groups,
                               group_size, BLOCK_N, TILE, SCALE_MODE, COL16)
            part = tl.where(s == 0, prod, part + prod)  # a new row block starts from zero
            if s == steps - 1:
                _grp8i_store(y_ptr, scales_ptr, part, rn, n_ok, SCALE_MODE)
