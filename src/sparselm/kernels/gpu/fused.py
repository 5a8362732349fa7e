"""Fused elementwise Triton kernels for the decode loop (runtime/decode.py): one launch where eager PyTorch
issues 5-12.

Why: at batch 1 a Llama-2-7B decode step on an H200 spent ~2.3 ms of its ~6.3 ms in ~40 small kernels per layer
(RMSNorm alone is 6: cast, pow, mean, rsqrt, mul, mul), each costing ~2 us even inside a CUDA graph. Every weight
byte saved by the sparse kernels is worth less while that fixed cost stays. These kernels keep the eager
rounding points (fp16/bf16 results of each PyTorch op are rounded where PyTorch rounds them), so they agree
with the eager path to the last bit or within an ulp where a transcendental differs (exp, rsqrt):

    add_rmsnorm(h, d, w):  s = h + d;  n = w * (s * rsqrt(mean(s^2) + eps))      -> (s, n)     [HF LlamaRMSNorm]
    rope_qkv(qkv, cos, sin, pos):  q' = q cos + rot(q) sin -> (B, H, T, hd);  K[:, :, pos] = k', V[:, :, pos] = v
    silu_mul(gu):  silu(g) * u  for gu = [g | u] along the last dim
    decode_attention(q, K, V, pos):  softmax(q K[:, :, :pos+1]^T / sqrt(hd)) V[:, :, :pos+1] -> (B, 1, H hd)
    decode_attention_qkv(qkv, cos, sin, pos, ...):  rope_qkv then decode_attention, one launch, the same bits

decode_attention is the one new-token step (T = 1) of attention over the static cache. SDPA spans the whole cache
with a boolean mask, which it turns into an additive one per call (3 fill / where kernels), and its flash kernel
ran 5.6 us per 7B layer; this kernel reads the position from the device (graph replays stay valid), visits only
keys 0..pos and writes the heads side by side, as o_proj wants them (benchmarks/results/decode_profile_*.json).
decode_attention_qkv also does rope_qkv's work, saving its launch (rope_qkv ran ~1.8 us per 7B layer on an H200;
the fused kernel's own time is not yet measured: benchmarks/decode_attention.py has the row for it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparselm.kernels.gpu.pdl import triton_options


@triton.jit
def _add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, s_ptr, n_ptr, D, eps, HAS_D: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (pdl.py): let the next kernel start, then wait for the last one's writes
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    ok = offs < D
    x = tl.load(h_ptr + row * D + offs, mask=ok, other=0.0)
    if HAS_D:
        x = (x.to(tl.float32) + tl.load(d_ptr + row * D + offs, mask=ok, other=0.0).to(tl.float32)).to(
            s_ptr.dtype.element_ty)  # the residual sum, rounded like the eager fp16 add
        tl.store(s_ptr + row * D + offs, x, mask=ok)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / D
    nf = (xf * (1.0 / tl.sqrt(var + eps))).to(n_ptr.dtype.element_ty)  # rounded before the weight, as in HF
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(n_ptr + row * D + offs, (w * nf.to(tl.float32)).to(n_ptr.dtype.element_ty), mask=ok)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + delta, RMSNorm(h + delta)) over the last dim; delta None: (h, RMSNorm(h))."""
    d = h.shape[-1]
    h2 = h.reshape(-1, d)
    if not h2.is_contiguous():
        h2 = h2.contiguous()
    s = torch.empty_like(h2) if delta is not None else h2
    n = torch.empty_like(h2)
    d2 = delta.reshape(-1, d).contiguous() if delta is not None else h2
    _add_rmsnorm_kernel[(h2.shape[0],)](h2, d2, weight, s, n, d, eps, HAS_D=delta is not None,
                                        BLOCK=triton.next_power_of_2(d), num_warps=4 if d <= 4096 else 8,
                                        **triton_options())
    return s.view(h.shape), n.view(h.shape)


@triton.jit
def _rope_row(x_ptr, d, dok, c, s, HD):
    """One head's x[d] cos + rot(x)[d] sin (rot(x) = [-x2, x1]) in the activation dtype, rounded after each eager op
    (x*cos, rot(x)*sin, their sum) so that it equals the eager rotary to the bit; c, s: cos / sin[d] in float32."""
    half = HD // 2
    rot = tl.where(d < half, d + half, d - half)
    sign = tl.where(d < half, -1.0, 1.0)
    x = tl.load(x_ptr + d, mask=dok, other=0.0)
    xr = tl.load(x_ptr + rot, mask=dok, other=0.0).to(tl.float32) * sign
    a = (x.to(tl.float32) * c).to(x.dtype).to(tl.float32)
    r = (xr * s).to(x.dtype).to(tl.float32)
    return (a + r).to(x.dtype)


@triton.jit
def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, T, H, HKV, HD, max_len,
                     stride_row, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (pdl.py): let the next kernel start, then wait for the last one's writes
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    bt = tl.program_id(0)  # b * T + t
    head = tl.program_id(1)  # [0, H): a query head; [H, H + HKV): a key/value head
    b = bt // T
    t = bt % T
    offs = tl.arange(0, BLOCK)
    ok = offs < HD
    c = tl.load(cos_ptr + t * HD + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + t * HD + offs, mask=ok, other=0.0).to(tl.float32)
    row = qkv_ptr + bt * stride_row
    y = _rope_row(row + head * HD, offs, ok, c, s, HD)  # q heads, then k heads: column head * HD either way
    if head < H:
        tl.store(q_ptr + ((b * H + head) * T + t) * HD + offs, y, mask=ok)
    else:
        j = head - H
        p = tl.load(pos_ptr + t)
        dst = ((b * HKV + j) * max_len + p) * HD + offs
        tl.store(k_ptr + dst, y, mask=ok)
        v = tl.load(row + H * HD + HKV * HD + j * HD + offs, mask=ok, other=0.0)
        tl.store(v_ptr + dst, v, mask=ok)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, n_heads: int,
             n_kv: int, head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """qkv (B, T, (H + 2 HKV) hd) -> rotated q (B, H, T, hd); rotated k and v written into the caches
    (B, HKV, max_len, hd) at `positions` (T,)."""
    b, t, _ = qkv.shape
    q = torch.empty(b, n_heads, t, head_dim, device=qkv.device, dtype=qkv.dtype)
    rows = qkv.reshape(b * t, -1)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    _rope_qkv_kernel[(b * t, n_heads + n_kv)](rows, cos.contiguous(), sin.contiguous(), positions, q, k_cache,
                                             v_cache, t, n_heads, n_kv, head_dim, k_cache.shape[2],
                                             rows.stride(0), BLOCK=triton.next_power_of_2(head_dim), num_warps=1,
                                             **triton_options())
    return q


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, I, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # programmatic dependent launch (pdl.py): let the next kernel start, then wait for the last one's writes
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < I
    g = tl.load(gu_ptr + row * 2 * I + offs, mask=ok, other=0.0)
    u = tl.load(gu_ptr + row * 2 * I + I + offs, mask=ok, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    a = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)  # silu, rounded as the eager op's result
    tl.store(out_ptr + row * I + offs, (a * u).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """silu(g) * u for gu = cat([g, u], -1)."""
    i2 = gu.shape[-1]
    rows = gu.reshape(-1, i2).contiguous()
    out = torch.empty(rows.shape[0], i2 // 2, device=gu.device, dtype=gu.dtype)
    block = 1024
    _silu_mul_kernel[(rows.shape[0], triton.cdiv(i2 // 2, block))](rows, out, i2 // 2, BLOCK=block, num_warps=4,
                                                                  **triton_options())
    return out.view(*gu.shape[:-1], i2 // 2)


@triton.jit
def _decode_attn_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, ml_ptr, acc_ptr, cnt_ptr, cos_ptr, sin_ptr, cos_stride,
                        H, HKV, max_len, HD, scale, S, stride_row, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_S: tl.constexpr, ROPE: tl.constexpr, PDL: tl.constexpr):
    """ROPE False: q_ptr holds the rotated q (B H, hd) and the caches already hold key / value pos. ROPE True: q_ptr
    holds the raw q/k/v projection rows (B, row stride stride_row), and the rotary + cache write of rope_qkv happen
    here (decode_attention_qkv), with the rotary of position p at cos_ptr + p cos_stride (stride 0: one row)."""
    if PDL:  # programmatic dependent launch (pdl.py): let the next kernel start, then wait for the last one's writes
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    bh = tl.program_id(0)  # b * H + h: one query head of one sequence
    sp = tl.program_id(1)  # keys [sp BLOCK_N, (sp + 1) BLOCK_N): one load round per program, no loop (a loop's
    # dependent rounds cost ~4 us each at 32 programs: decode_attention_loop.json)
    two = tl.arange(0, 2)
    p = tl.max(tl.load(pos_ptr + two, mask=two < 1, other=0), axis=0)  # the new token's position: keys 0..p
    start = sp * BLOCK_N
    if start <= p:
        b = bh // H
        group = H // HKV  # grouped-query attention: H / HKV query heads share a key/value head
        kvh = (bh % H) // group
        d = tl.arange(0, BLOCK_D)
        dok = d < HD
        n = start + tl.arange(0, BLOCK_N)
        offs = (b * HKV + kvh) * max_len * HD + n[:, None] * HD + d[None, :]
        if ROPE:
            row = q_ptr + b * stride_row
            cos_d = tl.load(cos_ptr + p * cos_stride + d, mask=dok, other=0.0).to(tl.float32)
            sin_d = tl.load(sin_ptr + p * cos_stride + d, mask=dok, other=0.0).to(tl.float32)
            q = _rope_row(row + (bh % H) * HD, d, dok, cos_d, sin_d, HD).to(tl.float32) * scale
            # key p is not in the cache yet (and this program's own write below need not be visible to its loads)
            ok = (n < p)[:, None] & dok[None, :]
        else:
            q = tl.load(q_ptr + bh * HD + d, mask=dok, other=0.0).to(tl.float32) * scale
            ok = (n <= p)[:, None] & dok[None, :]
        k = tl.load(k_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if ROPE:
            if p < start + BLOCK_N:  # this block holds key p: rotate k, take v, from the projection row
                k_p = _rope_row(row + (H + kvh) * HD, d, dok, cos_d, sin_d, HD)
                v_p = tl.load(row + (H + HKV + kvh) * HD + d, mask=dok, other=0.0)
                if (bh % H) % group == 0:  # one writer per key/value head; the group's other heads only read it
                    dst = (b * HKV + kvh) * max_len * HD + p * HD + d
                    tl.store(k_ptr + dst, k_p, mask=dok)
                    tl.store(v_ptr + dst, v_p, mask=dok)
                here = (n == p)[:, None]  # the values the cache now holds (same dtype: decode_attention_qkv)
                k = tl.where(here, k_p.to(tl.float32)[None, :], k)
                v = tl.where(here, v_p.to(tl.float32)[None, :], v)
        nok = n <= p
        sc = tl.where(nok, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m = tl.max(sc, axis=0)
        w = tl.exp(sc - m)
        l_sum = tl.sum(w, axis=0)
        acc = tl.sum(w[:, None] * v, axis=0)
        active = p // BLOCK_N + 1  # programs holding valid keys
        if active == 1:
            tl.store(o_ptr + bh * HD + d, (acc / l_sum).to(o_ptr.dtype.element_ty), mask=dok)
        else:  # partial (max, sum, weighted values) to the workspace; the last to arrive merges them
            slot = bh * S + sp
            tl.store(ml_ptr + 2 * slot + two, tl.where(two == 0, m, l_sum))
            tl.store(acc_ptr + slot * BLOCK_D + d, acc)
            if tl.atomic_add(cnt_ptr + bh, 1, sem="acq_rel") == active - 1:
                s = tl.arange(0, BLOCK_S)
                sok = s < active
                base = bh * S + s
                ms = tl.load(ml_ptr + 2 * base, mask=sok, other=float("-inf"), cache_modifier=".cg")
                ls = tl.load(ml_ptr + 2 * base + 1, mask=sok, other=0.0, cache_modifier=".cg")
                accs = tl.load(acc_ptr + base[:, None] * BLOCK_D + d[None, :], mask=sok[:, None], other=0.0,
                               cache_modifier=".cg")
                mx = tl.max(ms, axis=0)
                f = tl.where(sok, tl.exp(ms - mx), 0.0)
                out = tl.sum(f[:, None] * accs, axis=0) / tl.sum(f * ls, axis=0)
                tl.store(o_ptr + bh * HD + d, out.to(o_ptr.dtype.element_ty), mask=dok)
                tl.store(cnt_ptr + bh, 0)  # ready for the next call (graph replays included)


_WORKSPACE: dict = {}  # (device, B H, splits, BLOCK_D) -> (max/sum, partial outputs, arrival counters)


def _workspace(device: torch.device, bh: int, splits: int, block_d: int):
    """Per shape, allocated once (outside any graph capture: the decoder's warm-up makes the first call) and shared
    by every layer's call: they run one after another on the decode stream, and each call leaves the counters at 0."""
    key = (str(device), bh, splits, block_d)
    if key not in _WORKSPACE:
        _WORKSPACE[key] = (torch.empty(bh * splits * 2, device=device, dtype=torch.float32),
                           torch.empty(bh * splits * block_d, device=device, dtype=torch.float32),
                           torch.zeros(bh, device=device, dtype=torch.int32))
    return _WORKSPACE[key]


def _check_caches(name: str, b: int, h: int, hd: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    hkv = k_cache.shape[1] if k_cache.dim() == 4 else 0
    if (k_cache.dim() != 4 or not hkv or h % hkv or k_cache.shape != v_cache.shape or k_cache.shape[0] != b
            or k_cache.shape[3] != hd or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
        raise ValueError(f"{name}: caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)} must be (B={b}, HKV, "
                         f"max_len, hd={hd}), contiguous, HKV dividing H={h}")


def _launch_decode_attn(src: torch.Tensor, stride_row: int, cos: torch.Tensor | None, sin: torch.Tensor | None,
                        cos_stride: int, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                        b: int, h: int, hd: int, block_n: int | None, num_warps: int | None) -> torch.Tensor:
    """One launch of _decode_attn_kernel over src: the rotated q (cos None) or the raw q/k/v rows (ROPE)."""
    hkv, max_len = k_cache.shape[1], k_cache.shape[2]
    block_n = block_n or max(32, triton.next_power_of_2(triton.cdiv(max_len, 64)))
    splits, block_d = triton.cdiv(max_len, block_n), triton.next_power_of_2(hd)
    num_warps = num_warps or max(4, block_n * block_d // 2048)  # <= 64 elements of each key / value tile per thread
    ml, acc, cnt = _workspace(src.device, b * h, splits, block_d)
    out = torch.empty(b, 1, h * hd, device=src.device, dtype=src.dtype)
    rope = cos is not None
    _decode_attn_kernel[(b * h, splits)](src, k_cache, v_cache, positions, out, ml, acc, cnt,
                                         cos if rope else src, sin if rope else src, cos_stride, h, hkv,
                                         max_len, hd, hd ** -0.5, splits, stride_row, BLOCK_N=block_n,
                                         BLOCK_D=block_d, BLOCK_S=max(2, triton.next_power_of_2(splits)), ROPE=rope,
                                         num_warps=num_warps, **triton_options())
    return out


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                     block_n: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """One new token per sequence: q (B, H, 1, hd), caches (B, HKV, max_len, hd) holding keys / values up to
    positions[0] (a 1-element device tensor) -> the attention output (B, 1, H hd), heads side by side. The keys
    are split over programs of block_n each (default: 32, or larger so that at most 64 splits cover the cache);
    a head's programs merge their partial softmaxes through a small workspace (flash-decoding), in one launch."""
    b, h, t, hd = q.shape
    if t != 1:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} must be (B, H, 1, hd): one token")
    _check_caches("decode_attention", b, h, hd, k_cache, v_cache)
    return _launch_decode_attn(q.contiguous(), 0, None, None, 0, k_cache, v_cache, positions, b, h, hd, block_n,
                               num_warps)


def decode_attention_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                         n_heads: int, n_kv: int, head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_n: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """decode_attention(rope_qkv(qkv, cos, sin, positions, ...), k_cache, v_cache, positions) in one launch: the
    caches to the bit, the output to the bit at the 7B shape on the H200 (decode_attention.json) and within a few
    ulps elsewhere (the compiled kernels may sum the scores in another order): qkv (B, 1, (H + 2 HKV) hd) is the
    raw q/k/v projection of one new token; cos / sin hold its rotary, either one row (hd values: position
    positions[0]'s) or a table (L >= max_len, hd) that the kernel indexes at positions[0] itself, so a decode step
    computes no rotary of its own (StaticDecoder builds the table once). Each program rotates its head's q itself;
    the programs whose key block holds the position rotate its k too, use k and v from registers there, and the
    group's first head writes them into the caches."""
    if qkv.dim() != 3 or qkv.shape[1] != 1:
        raise ValueError(f"decode_attention_qkv: qkv {tuple(qkv.shape)} must be (B, 1, (H + 2 HKV) hd): one token")
    b = qkv.shape[0]
    if n_kv <= 0 or n_heads % n_kv or head_dim % 2 or qkv.shape[2] != (n_heads + 2 * n_kv) * head_dim:
        raise ValueError(f"decode_attention_qkv: qkv's last dim {qkv.shape[2]} must be (H + 2 HKV) hd for H="
                         f"{n_heads}, HKV={n_kv} (HKV dividing H), hd={head_dim} (even)")
    _check_caches("decode_attention_qkv", b, n_heads, head_dim, k_cache, v_cache)
    if k_cache.shape[1] != n_kv or k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype:
        raise ValueError(f"decode_attention_qkv: caches ({k_cache.shape[1]} heads, {k_cache.dtype}) must have "
                         f"HKV={n_kv} heads of qkv's dtype {qkv.dtype}")
    one = cos.numel() == head_dim and sin.numel() == head_dim
    table = (cos.dim() == 2 and cos.shape == sin.shape and cos.shape[1] == head_dim
             and cos.shape[0] >= k_cache.shape[2])  # positions < max_len: every index lands in the table
    if not (one or table) or cos.dtype != sin.dtype:
        raise ValueError(f"decode_attention_qkv: cos / sin {tuple(cos.shape)} / {tuple(sin.shape)} must hold "
                         f"hd={head_dim} values (one position) or be (L >= max_len={k_cache.shape[2]}, hd) tables, "
                         f"one dtype")
    rows = qkv.reshape(b, -1)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    return _launch_decode_attn(rows, rows.stride(0), cos.contiguous(), sin.contiguous(), 0 if one else head_dim,
                               k_cache, v_cache, positions, b, n_heads, head_dim, block_n, num_warps)
