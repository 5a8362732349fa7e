"""The decode loop's fused Triton kernels (kernels/gpu/fused.py), compiled on a GPU or under the interpreter on the
CPU: equal to the eager PyTorch ops they replace (fp16 rounding points kept), and the decoder's fused path equal to
its eager path."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton loads; on a GPU the compiled kernels are what is tested (setting
    os.environ.setdefault("TRITON_INTERPRET", "1")  # it there also broke kernels already compiled by earlier tests)
pytest.importorskip("triton", reason="the GPU kernels need triton: pip install triton")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

from sparselm.kernels.gpu.fused import (  # noqa: E402
    add_rmsnorm, decode_attention, decode_attention_qkv, rope_qkv, silu_mul)
from sparselm.runtime import StaticDecoder, sparsify  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def trunc_bf16(x):
    """fp32 -> bf16 by truncation: what Triton's CPU interpreter does where the GPU and PyTorch round to nearest."""
    return (x.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


def ulps_close(a, b, ulps=1):
    """|a - b| within `ulps` units in the last place of fp16 (relative) or 1e-6 absolute."""
    tol = ulps * torch.finfo(a.dtype).eps * b.float().abs() + 1e-6
    return bool(((a.float() - b.float()).abs() <= tol).all())


@pytest.mark.parametrize("with_delta,dtype", [(True, torch.float16), (False, torch.float16), (True, torch.bfloat16)])
def test_add_rmsnorm_matches_hf(with_delta, dtype):
    torch.manual_seed(0)
    d = 40  # not a power of two: the masked tail
    norm = LlamaRMSNorm(d, eps=1e-5).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(d) * 0.5 + 1)
    h = torch.randn(2, 3, d, device=DEVICE).to(dtype)
    delta = torch.randn(2, 3, d, device=DEVICE).to(dtype) if with_delta else None
    s, n = add_rmsnorm(h, delta, norm.weight, 1e-5)
    ref_s = h + delta if with_delta else h
    # bit-exact: with PyTorch's rounding, or (bf16 under the CPU interpreter) with truncating conversions
    assert torch.equal(s, ref_s) or (dtype == torch.bfloat16 and torch.equal(s, trunc_bf16(h.float() + delta.float())))
    with torch.no_grad():
        assert ulps_close(n, norm(ref_s), ulps=2 if dtype == torch.float16 else 3)


@pytest.mark.parametrize("hd,dtype", [(16, torch.float16), (24, torch.bfloat16)])  # 24: not a power of two
def test_rope_qkv_matches_eager_and_writes_the_cache(hd, dtype):
    torch.manual_seed(0)
    b, t, h, hkv, max_len = 2, 3, 4, 2, 9
    qkv = torch.randn(b, t, (h + 2 * hkv) * hd, device=DEVICE).to(dtype)
    positions = torch.tensor([2, 3, 4], device=DEVICE)
    ang = positions.float()[:, None] * (1.0 / 10000 ** (torch.arange(0, hd, 2, device=DEVICE).float() / hd))
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    kc = torch.zeros(b, hkv, max_len, hd, device=DEVICE).to(dtype)
    vc = torch.zeros_like(kc)
    q = rope_qkv(qkv, cos, sin, positions, h, hkv, hd, kc, vc)
    rot = lambda x: torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)  # noqa: E731
    qe, ke, ve = qkv.split([h * hd, hkv * hd, hkv * hd], -1)
    qe = qe.view(b, t, h, hd).transpose(1, 2)
    ke = ke.view(b, t, hkv, hd).transpose(1, 2)
    def same(out, x):  # bit-exact with PyTorch's rounding, or with the interpreter's truncation (bf16); compiled on
        # a GPU within one rounding of the two products (not bit-exact there when first run, session 24: a sum that
        # cancels magnifies one ulp of a product, so the bound is on the products' size, not the result's)
        ref = x * cos + rot(x) * sin
        if torch.equal(out, ref):
            return True
        if DEVICE == "cuda":
            scale = (x.float() * cos.float()).abs() + (rot(x).float() * sin.float()).abs()
            return bool(((out.float() - ref.float()).abs() <= torch.finfo(dtype).eps * scale + 1e-6).all())
        a, r = trunc_bf16(x.float() * cos.float()), trunc_bf16(rot(x).float() * sin.float())
        return dtype == torch.bfloat16 and torch.equal(out, trunc_bf16(a.float() + r.float()))

    assert same(q, qe)
    assert same(kc[:, :, 2:5], ke)
    assert torch.equal(vc[:, :, 2:5], ve.view(b, t, hkv, hd).transpose(1, 2))
    assert not kc[:, :, :2].any() and not kc[:, :, 5:].any()


def test_silu_mul_matches_eager():
    torch.manual_seed(0)
    gu = (torch.randn(3, 2 * 1100, device=DEVICE) * 3).half()  # two column blocks, a masked tail
    g, u = gu.chunk(2, -1)
    assert ulps_close(silu_mul(gu), torch.nn.functional.silu(g) * u, ulps=2)


@pytest.mark.parametrize("sparse,max_len", [(False, 16), (True, 16), (False, 8200)])  # 8200: SDPA for decode steps
def test_decoder_fused_ops_equal_eager(sparse, max_len, monkeypatch):
    calls = []  # decode steps (t == 1) within DECODE_ATTENTION_MAX_LEN run decode_attention_qkv, the rest do not
    monkeypatch.setattr("sparselm.kernels.gpu.fused.decode_attention_qkv",
                        lambda *a, **k: calls.append(1) or decode_attention_qkv(*a, **k))
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval().to(DEVICE)
    if sparse:
        sparsify(model, values_dtype="float32")
    ids = torch.randint(0, 53, (1, 4), device=DEVICE)
    fused = StaticDecoder(model, max_len=max_len, use_graph=False, fused_ops=True)
    assert fused.fused_ops
    t1, l1 = fused.generate(ids, 6, return_logits=True)
    eager = StaticDecoder(model, max_len=max_len, use_graph=False, fused_ops=False)
    t2, l2 = eager.generate(ids, 6, return_logits=True)
    assert torch.equal(t1, t2)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    assert len(calls) == (5 * cfg.num_hidden_layers if max_len <= 8192 else 0)  # 5 decode steps after the prefill


def test_attention_buckets_rule():
    from sparselm.runtime.decode import attention_buckets

    assert attention_buckets(32) == [(0, 32, 4)]
    assert attention_buckets(64) == [(0, 32, 4), (32, 64, 8)]
    assert attention_buckets(152) == [(0, 32, 4), (32, 64, 8), (64, 32, 4), (128, 16, 2)]
    assert attention_buckets(4096) == [(0, 32, 4), (32, 64, 8), (64, 32, 4), (128, 16, 2), (256, None, None)]


def test_decoder_attention_buckets_follow_the_position(monkeypatch):
    """Decode steps at positions 28..67 run bucket 0's, 1's and 2's key splits in turn (eager steps choose as the
    graphs do), with the default split's tokens and logits within the sums' reordering."""
    seen = []
    monkeypatch.setattr("sparselm.kernels.gpu.fused.decode_attention_qkv",
                        lambda *a, **k: seen.append(a[9:11]) or decode_attention_qkv(*a, **k))
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval().to(DEVICE)
    ids = torch.randint(0, 53, (1, 28), device=DEVICE)
    t1, l1 = StaticDecoder(model, max_len=96, use_graph=False, fused_ops=True).generate(ids, 41, return_logits=True)
    assert seen[:4] == [(32, 4)] * 4 and seen[4:36] == [(64, 8)] * 32 and seen[36:] == [(32, 4)] * 4
    seen.clear()
    t2, l2 = StaticDecoder(model, max_len=96, use_graph=False, fused_ops=True, attn_buckets=False).generate(
        ids, 41, return_logits=True)
    assert set(seen) == {(None, None)} and torch.equal(t1, t2)
    for kw in ({"max_len": 8200, "fused_ops": True}, {"fused_ops": False}):  # SDPA steps: one bucket, one graph
        assert StaticDecoder(model, **{"max_len": 96, "use_graph": False, **kw}).buckets == [(0, None, None)]
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
@pytest.mark.parametrize("sparse", [False, True])
def test_decoder_prefill_graph_and_timing(sparse, monkeypatch):
    """prefill_graph and a step graph per attention bucket give the eager decoder's tokens and logits to the bit
    (the same kernels), only the PREFILL_GRAPHS most recently used lengths keep a graph, and
    generate records its prefill / decode split (throughput() reports it)."""
    monkeypatch.setattr("sparselm.runtime.decode.PREFILL_GRAPHS", 2)
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=53, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160)
    model = LlamaForCausalLM(cfg).eval().half().to(DEVICE)
    if sparse:
        sparsify(model)
    eager = StaticDecoder(model, max_len=140, use_graph=False)  # eager steps: the graphs' attention buckets
    graphed = StaticDecoder(model, max_len=140, prefill_graph=True)
    for t in (4, 30, 4, 124):  # steps up to position 129: all four buckets
        ids = torch.randint(0, 53, (1, t), device=DEVICE)
        t1, l1 = eager.generate(ids, 6, return_logits=True)
        t2, l2 = graphed.generate(ids, 6, return_logits=True)
        assert torch.equal(t1, t2) and torch.equal(l1, l2), t
        assert graphed.last_timing["steps"] == 5 and graphed.last_timing["prefill_ms"] > 0
    assert sorted(graphed._prefill) == [4, 124] and len(graphed._graphs) == 4
    r = graphed.throughput(prompt_len=5, new_tokens=8)
    assert r["decode_tokens_per_s"] > 0 and r["step_ms"] > 0 and r["tokens_per_s"] > 0


def test_decoder_fused_ops_need_a_llama_block():
    cfg = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, hidden_act="gelu")
    with pytest.raises(ValueError, match="fused_ops"):
        StaticDecoder(LlamaForCausalLM(cfg).eval(), max_len=8, fused_ops=True)


@pytest.mark.parametrize("pos,hd,dtype", [(0, 48, torch.float16), (63, 48, torch.float16), (64, 32, torch.float32),
                                          (130, 48, torch.bfloat16)])
def test_decode_attention_matches_sdpa_over_the_valid_keys(pos, hd, dtype):
    """One new token per sequence, grouped-query heads, head_dim not a power of two, positions at and past a key
    block's edge (one split, two, five, nine): SDPA over keys 0..pos; the keys past pos (garbage here) never count."""
    torch.manual_seed(pos)
    b, h, hkv, max_len = 2, 4, 2, 150
    q = torch.randn(b, h, 1, hd, device=DEVICE).to(dtype)
    kc = torch.randn(b, hkv, max_len, hd, device=DEVICE).to(dtype)
    vc = torch.randn(b, hkv, max_len, hd, device=DEVICE).to(dtype)
    out = decode_attention(q, kc, vc, torch.tensor([pos], device=DEVICE))
    assert out.shape == (b, 1, h * hd) and out.dtype == dtype
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), kc[:, :, :pos + 1].float(), vc[:, :, :pos + 1].float(), enable_gqa=True)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.float(), ref.transpose(1, 2).reshape(b, 1, h * hd), rtol=tol, atol=tol)
    for _ in range(2):  # more, smaller key splits; each call leaves the merge counters ready for the next
        again = decode_attention(q, kc, vc, torch.tensor([pos], device=DEVICE), block_n=16)
        torch.testing.assert_close(again.float(), out.float(), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="one token"):
        decode_attention(q.expand(b, h, 2, hd), kc, vc, torch.tensor([pos], device=DEVICE))
    with pytest.raises(ValueError, match="HKV dividing H"):
        decode_attention(q[:, :3], kc, vc, torch.tensor([pos], device=DEVICE))


def rope_tables(pos, hd, dtype):
    ang = pos * (1.0 / 10000 ** (torch.arange(0, hd, 2, device=DEVICE).float() / hd))
    emb = torch.cat([ang, ang])[None]  # (1, hd): one position
    return emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("hd,dtype,hkv,b,block_n", [(64, torch.float16, 2, 2, 8), (48, torch.bfloat16, 2, 1, 8),
                                                    (48, torch.float16, 4, 2, None), (64, torch.bfloat16, 4, 1, 8)])
def test_decode_attention_qkv_equals_rope_then_attention(hd, dtype, hkv, b, block_n):
    """The fused rotary + cache write + attention against rope_qkv then decode_attention: the caches to the bit, the
    output to the bit under the interpreter (compiled: within 4 ulps, the scores' sums may run in another order):
    head_dim 48 pads BLOCK_D, GQA (4 query heads on 2) and MHA; positions 0, inside the first key
    block, and past several blocks (block 8 / the default 32: the merge runs, the position's block is not the
    first). The caches hold earlier tokens, which only the position's row may change."""
    h, max_len = 4, 40
    for pos in (0, 5, 35):
        torch.manual_seed(pos)
        qkv = torch.randn(b, 1, (h + 2 * hkv) * hd, device=DEVICE).to(dtype)
        cos, sin = rope_tables(pos, hd, dtype)
        kc = torch.randn(b, hkv, max_len, hd, device=DEVICE).to(dtype)
        vc = torch.randn_like(kc)
        k_ref, v_ref, k_fused, v_fused = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        p = torch.tensor([pos], device=DEVICE)
        q = rope_qkv(qkv, cos, sin, p, h, hkv, hd, k_ref, v_ref)
        ref = decode_attention(q, k_ref, v_ref, p, block_n=block_n)
        out = decode_attention_qkv(qkv, cos, sin, p, h, hkv, hd, k_fused, v_fused, block_n=block_n)
        assert out.shape == (b, 1, h * hd) and out.dtype == dtype
        assert torch.equal(k_fused, k_ref) and torch.equal(v_fused, v_ref), pos
        if DEVICE == "cuda":  # compiled, the two kernels may lay out (and so sum) the scores in another order
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(out, ref, rtol=4 * eps, atol=4 * eps * ref.abs().max().item())
        else:
            assert torch.equal(out, ref), pos
        other = torch.arange(max_len, device=DEVICE) != pos
        assert torch.equal(k_fused[:, :, other], kc[:, :, other]) and torch.equal(v_fused[:, :, other], vc[:, :, other])
        assert not torch.equal(k_fused[:, :, pos], kc[:, :, pos])  # the new token's rotated key was written


def test_decode_attention_qkv_rotary_table():
    """cos / sin as (L, hd) tables indexed by the kernel at the device-side position give the one-row call's
    output and caches to the bit; a table shorter than the cache (a position could fall outside it) or of mixed
    shapes is a ValueError."""
    b, h, hkv, hd, max_len = 1, 4, 2, 32, 24
    ang = torch.arange(max_len, device=DEVICE).float()[:, None] * (
        1.0 / 10000 ** (torch.arange(0, hd, 2, device=DEVICE).float() / hd))[None]
    emb = torch.cat([ang, ang], -1)
    cos_t, sin_t = emb.cos().half(), emb.sin().half()
    for pos in (0, 7, 23):
        torch.manual_seed(pos)
        qkv = torch.randn(b, 1, (h + 2 * hkv) * hd, device=DEVICE).half()
        kc = torch.randn(b, hkv, max_len, hd, device=DEVICE).half()
        vc = torch.randn_like(kc)
        k2, v2 = kc.clone(), vc.clone()
        p = torch.tensor([pos], device=DEVICE)
        one = decode_attention_qkv(qkv, cos_t[pos:pos + 1], sin_t[pos:pos + 1], p, h, hkv, hd, kc, vc)
        tab = decode_attention_qkv(qkv, cos_t, sin_t, p, h, hkv, hd, k2, v2)
        assert torch.equal(one, tab) and torch.equal(kc, k2) and torch.equal(vc, v2), pos
    with pytest.raises(ValueError, match="max_len"):
        decode_attention_qkv(qkv, cos_t[:-1], sin_t[:-1], p, h, hkv, hd, kc, vc)
    with pytest.raises(ValueError, match="tables"):
        decode_attention_qkv(qkv, cos_t, sin_t[:, :-1], p, h, hkv, hd, kc, vc)


def test_decode_attention_qkv_strided_rows_and_bad_shapes():
    """qkv rows with a stride (a slice of a wider projection) give the contiguous rows' result; wrong shapes are
    named in a ValueError."""
    b, h, hkv, hd, max_len, pos = 2, 4, 2, 16, 12, 9
    torch.manual_seed(0)
    wide = torch.randn(b, 1, (h + 2 * hkv) * hd + 8, device=DEVICE).half()
    qkv = wide[..., 8:]
    cos, sin = rope_tables(pos, hd, torch.float16)
    p = torch.tensor([pos], device=DEVICE)
    kc = torch.randn(b, hkv, max_len, hd, device=DEVICE).half()
    vc = torch.randn_like(kc)
    k2, v2 = kc.clone(), vc.clone()
    out = decode_attention_qkv(qkv, cos, sin, p, h, hkv, hd, kc, vc)
    assert torch.equal(out, decode_attention_qkv(qkv.contiguous(), cos, sin, p, h, hkv, hd, k2, v2))
    assert torch.equal(kc, k2) and torch.equal(vc, v2)
    with pytest.raises(ValueError, match="one token"):
        decode_attention_qkv(qkv.expand(b, 2, -1), cos, sin, p, h, hkv, hd, kc, vc)
    with pytest.raises(ValueError, match="HKV dividing H"):
        decode_attention_qkv(qkv[..., :(3 + 2 * hkv) * hd], cos, sin, p, 3, hkv, hd, kc, vc)
    with pytest.raises(ValueError, match="last dim"):
        decode_attention_qkv(qkv[..., :-hd], cos, sin, p, h, hkv, hd, kc, vc)
    with pytest.raises(ValueError, match="contiguous"):
        decode_attention_qkv(qkv, cos, sin, p, h, hkv, hd, kc.transpose(2, 3).contiguous().transpose(2, 3), vc)
    with pytest.raises(ValueError, match="dtype"):
        decode_attention_qkv(qkv, cos, sin, p, h, hkv, hd, kc.float(), vc.float())


@pytest.mark.skipif(DEVICE != "cuda", reason="autotune times CUDA kernels")
def test_deterministic_mode_decodes_the_same_bits_twice(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the decoder's autotune keeps only kernels whose sums have a
    fixed order (gpu_backend.deterministic), so two graphed decodes of a 2:4 model give the same logits to the bit;
    a row that holds an atomic split-K kernel runs dense, with a warning."""
    from sparselm.kernels.gpu import SpmmConfig
    from sparselm.runtime import gpu_backend as gb
    from sparselm.sparsity.masks import select_nm

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # PyTorch's condition for cuBLAS in that mode
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=97, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval().half().to(DEVICE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p.mul_(~select_nm(torch.rand(p.shape, device=DEVICE), 2, 4))
    sparsify(model)
    ids = torch.randint(0, 97, (1, 7), device=DEVICE)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        dec = StaticDecoder(model, max_len=40)
        table = dec.autotune()
        assert all(gb.deterministic(r["cfg"]) for r in table.values() if r["path"] == "sparse")
        t1, l1 = dec.generate(ids, 8, return_logits=True)
        t2, l2 = StaticDecoder(model, max_len=40).generate(ids, 8, return_logits=True)
        assert torch.equal(t1, t2) and torch.equal(l1, l2)
        q = model.model.layers[0].self_attn.q_proj
        key = gb.key_of(q.out_features, q.in_features, 1, gb.values_name(q), torch.float16)
        gb.record(key, "sparse", SpmmConfig(kernel="nmsp", block_k=128, block_b=8, num_warps=4, split_k=16,
                                            num_stages=1))
        x = torch.randn(1, q.in_features, device=DEVICE, dtype=torch.float16)
        with pytest.warns(RuntimeWarning, match="atomics"):
            y = gb.cuda_backend(x, q)
        torch.testing.assert_close(y, x @ q.dense_weight(torch.float16).T)
    finally:
        torch.use_deterministic_algorithms(was)
        gb._TABLE.clear()
