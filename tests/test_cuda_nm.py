"""The N:M kernel (nm_gemv.cu, "nmcu"): pattern detection from the mask, its slot layout, and the kernel's arithmetic
checked on the CPU through the host build of the same source; the GPU build against that emulation and the dense
reference on a GPU machine (`-k gpu_build`)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_nm
from sparselm.sparsity.masks import select_nm
from tiny_models import sparse_weight

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                reason="the host build of nm_gemv.cu needs a C++ compiler")


def nm_weight(n: int, k: int, keep: int, m: int, seed: int = 0) -> torch.Tensor:
    """Random values, `keep` of every `m` consecutive columns kept (by random scores), a few rows all zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).masked_fill(select_nm(torch.rand(n, k, generator=g), keep, m), 0.0)
    w[n // 2] = 0.0
    return w


@pytest.mark.parametrize("keep,m,expect", [(1, 4, (4, 1)), (2, 4, (4, 2)), (2, 8, (8, 2)), (1, 8, (8, 1)),
                                           (4, 8, (8, 4)), (3, 8, (8, 4))])
def test_pattern_is_the_smallest_layout_that_holds_the_mask(keep, m, expect):
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(9, 512, keep, m), "float16"))
    assert cuda_nm.pattern(p) == expect and cuda_nm.supports(p)


def test_unstructured_odd_widths_and_other_values_are_not_served():
    unstructured = PackedBitmask.from_compressed(compress_tensor(sparse_weight(16, 512, 0.75, seed=1), "float16"))
    assert cuda_nm.pattern(unstructured) is None and not cuda_nm.supports(unstructured)
    assert not unstructured.supports(SpmmConfig(kernel="nmcu", persist=1))
    odd = PackedBitmask.from_compressed(compress_tensor(torch.eye(4, 302), "float16"))  # K % 4 != 0
    assert cuda_nm.pattern(odd) is None
    w = nm_weight(8, 256, 1, 4)
    assert not cuda_nm.supports(PackedBitmask.from_compressed(compress_tensor(w, "int4")))
    assert not cuda_nm.supports(PackedBitmask.from_compressed(compress_tensor(w, "int8", group_size=128)))
    fp16 = PackedBitmask.from_compressed(compress_tensor(w, "float16"))
    assert cuda_nm.supports(fp16, torch.float16) and not cuda_nm.supports(fp16, torch.bfloat16)
    assert cuda_nm.supports(fp16, batch=4) and not cuda_nm.supports(fp16, batch=8)
    with pytest.raises(ValueError, match="N:M"):
        cuda_nm.gemv_host(torch.randn(1, 512).half(), unstructured)
    with pytest.raises(ValueError, match="padded batch"):
        cuda_nm.gemv_host(torch.randn(2, 256).half(), fp16)


@pytest.mark.parametrize("keep,m,values,act,n,k", [
    (1, 4, "float16", torch.float16, 37, 300),      # K = 300: 75 groups, padded to a whole step
    (2, 4, "bfloat16", torch.bfloat16, 17, 512),
    (2, 8, "int8", torch.float16, 23, 640),         # per-row scales
    (1, 8, "float16", torch.float16, 9, 4096),      # many steps per row
    (4, 8, "int8", torch.bfloat16, 5, 1032),
    (3, 8, "float16", torch.float16, 6, 1032),      # 3 of 8 kept: served by the 4-slot layout
])
@pytest.mark.parametrize("unroll,x16", [(1, False), (2, False), (4, False), (2, True)])
def test_host_build_matches_the_dense_reference(keep, m, values, act, n, k, unroll, x16):
    ct = compress_tensor(nm_weight(n, k, keep, m, seed=k), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).to(act)
    ref = x.double() @ decompress(ct, torch.float64).T
    y = cuda_nm.gemv_host(x, p, unroll=unroll, x16=x16)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))
    assert y[0, n // 2].item() == 0.0  # the all-zero row


@pytest.mark.parametrize("values,n,k,scale", [
    ("float16", 37, 300, 1.0),    # K = 300: 75 groups, the table's last block padded with zeros
    ("int8", 23, 4096, 1.0),      # per-row scales, 4 steps per row
    ("float16", 5, 11008, 1.0),   # 11 steps: a table of 44 blocks
    ("int8", 9, 1032, 300.0),     # activations in the hundreds: int8 products enter as v / 128, no overflow
])
@pytest.mark.parametrize("unroll", [1, 2, 4, 8])
def test_pair_table_host_build_matches_the_dense_reference(values, n, k, scale, unroll):
    """1:4 with x staged as the pair table (nm_pairs.cuh): each slot pair's x from one table word, half2 products
    summed per step in fp16. Close to the float64 product (fp16 partial sums: ~1e-3 relative), never exact to the
    float32 build on random data, and the all-zero row stays 0."""
    ct = compress_tensor(nm_weight(n, k, 1, 4, seed=k), values)
    p = PackedBitmask.from_compressed(ct)
    x = (torch.randn(1, k) * scale).half()
    ref = x.double() @ decompress(ct, torch.float64).T
    y = cuda_nm.gemv_host(x, p, unroll=unroll, pairs=True)
    assert torch.isfinite(y).all() and y[0, n // 2].item() == 0.0
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < 2e-3
    f32 = cuda_nm.gemv_host(x, p, unroll=min(unroll, 4), x16=True)
    assert not torch.equal(y, f32)  # the half2 path really ran: its rounding differs from the float32 FMAs
    assert ((f32.double() - ref).norm() / ref.norm()).item() < err


def _silu_up_reference(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fused.silu_mul's rounding on the plain product's outputs: each output, silu's result and the product in
    `dtype`."""
    g, u = y.to(dtype).float().chunk(2, dim=-1)
    return ((g * torch.sigmoid(g)).to(dtype).float() * u).to(dtype).float()


@pytest.mark.parametrize("values,act,x16,pairs", [("float16", torch.float16, True, False),
                                                  ("int8", torch.float16, False, True),
                                                  ("bfloat16", torch.bfloat16, True, False),
                                                  ("float16", torch.float16, False, False)])
def test_glu_epilogue_is_silu_of_the_gate_rows_times_the_up_rows(values, act, x16, pairs):
    """glu: the kernel's two row sums (gate row r, up row r + N / 2) become silu(g) * u, rounded as the unfused path
    rounds (the product's outputs, silu, the product). Against silu_mul's rounding on the plain product: equal
    except where the float32 exp / division differ in an fp16 rounding boundary (at most one ulp)."""
    n, k = 2 * 37, 1032
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(n, k, 1, 4, seed=3), values))
    x = torch.randn(1, k).to(act)
    plain = cuda_nm.gemv_host(x, p, x16=x16, pairs=pairs)
    y = cuda_nm.gemv_host(x, p, x16=x16, pairs=pairs, glu=True)
    ref = _silu_up_reference(plain, act)
    assert y.shape == (1, n // 2)
    ulp = torch.finfo(act).eps * ref.abs().clamp_min(torch.finfo(act).tiny)
    assert ((y - ref).abs() <= ulp).all() and (y == ref).float().mean() > 0.9
    assert torch.equal(y, y.to(act).float())  # stored values: already in the activation dtype
    with pytest.raises(ValueError, match="even number"):
        cuda_nm.gemv_host(x, PackedBitmask.from_compressed(compress_tensor(nm_weight(7, k, 1, 4), values)), glu=True)


def test_pair_table_refuses_layouts_past_32_bit_slot_offsets():
    """The pair kernel's rows start at 32-bit slot offsets (pair_rows): 2^32 slots or more go to other kernels."""
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 512, 1, 4), "float16"))
    assert cuda_nm.supports(p, torch.float16, pairs=True)  # caches the pattern, read off the real 8-row mask
    p.shape = (2 ** 24 - 1, 512)  # then rows of one 256-slot step: only the shape changes
    assert cuda_nm.supports(p, torch.float16, pairs=True)
    p.shape = (2 ** 24, 512)
    assert not cuda_nm.supports(p, torch.float16, pairs=True) and cuda_nm.supports(p, torch.float16, x16=True)


def test_pair_table_serves_only_1_of_4_with_fp16_activations():
    one4 = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 512, 1, 4), "float16"))
    two4 = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 512, 2, 4), "float16"))
    bf = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 512, 1, 4), "bfloat16"))
    assert cuda_nm.supports(one4, torch.float16, pairs=True) and not cuda_nm.supports(two4, torch.float16, pairs=True)
    assert not cuda_nm.supports(bf, torch.bfloat16, pairs=True) and not cuda_nm.supports(one4, batch=2, pairs=True)
    # kx = one step of 1024 columns: the table and its alignment slack, with 2+ steps per round also the copy of
    # x's 512 activations the kernel builds it from
    assert cuda_nm.staged_bytes(one4, pairs=True) == 1024 // 256 * 2048 + 2048
    assert cuda_nm.staged_bytes(one4, pairs=True, unroll=2) == 1024 // 256 * 2048 + 2048 + 512 * 2
    with pytest.raises(ValueError, match="pairs"):
        cuda_nm.gemv_host(torch.randn(1, 512).half(), two4, pairs=True)
    with pytest.raises(ValueError, match="pairs"):
        SpmmConfig(kernel="nmcu", persist=1, pairs=True, x16=True)
    with pytest.raises(ValueError, match="pairs"):
        SpmmConfig(kernel="grp8cu", vec=4, persist=1, pairs=True)
    assert SpmmConfig(kernel="nmcu", num_warps=16, persist=2, unroll=2, pairs=True).key() == "nmcu-w16p2-u2-pairs"
    assert SpmmConfig(kernel="nmcu", persist=1, unroll=8, pairs=True).unroll == 8
    with pytest.raises(ValueError, match="unroll"):
        SpmmConfig(kernel="nmcu", persist=1, unroll=8, x16=True)


@pytest.mark.parametrize("keep,m,values,act,batch,bsz,unroll", [
    (1, 4, "float16", torch.float16, 2, 2, 1), (2, 8, "bfloat16", torch.bfloat16, 4, 3, 2),
    (2, 4, "int8", torch.float16, 4, 4, 1), (4, 8, "int8", torch.bfloat16, 2, 1, 2)])
def test_batched_host_build_matches_the_dense_reference(keep, m, values, act, batch, bsz, unroll):
    """Batches 2 and 4 (x transposed, B sums per lane), including fewer rows than the padded batch."""
    ct = compress_tensor(nm_weight(13, 520, keep, m, seed=batch), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, 520).to(act)
    ref = x.double() @ decompress(ct, torch.float64).T
    y = cuda_nm.gemv_host(x, p, unroll=unroll, batch=batch)
    assert y.shape == (bsz, 13)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))
    with pytest.raises(ValueError, match="padded batch"):
        cuda_nm.gemv_host(torch.randn(batch + 1, 520).to(act), p, batch=batch)


def test_an_unknown_staging_mode_is_refused_not_run_as_another(monkeypatch):
    """The library's staging argument outside XS_F32..XS_PAIRS returns "unsupported" (it once fell through to the
    16-bit staging, so a build without a newer mode silently ran a different kernel)."""
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 256, 1, 4), "float16"))
    x = torch.randn(1, 256).half()
    for mode in (3, 7, -1):
        monkeypatch.setattr(cuda_nm, "_staging", lambda *a, mode=mode: mode)
        with pytest.raises(ValueError, match="unsupported"):
            cuda_nm.gemv_host(x, p)


def test_layout_slots_hold_every_nonzero_and_few_bytes():
    """Every nonzero lands in one slot (the values' sum is kept, no slot holds two); 1:4 at K = 4096 reads 2.25
    bytes per kept fp16 position, 2:8 2.5 (grp8cu's layout: > 3 per nonzero)."""
    for keep, m, most in ((1, 4, 2.25), (2, 8, 2.5)):
        w = nm_weight(64, 4096, keep, m, seed=2)
        w[w.shape[0] // 2, :m] = 0.0
        p = PackedBitmask.from_compressed(compress_tensor(w, "float16"))
        vals, idx = cuda_nm.layout(p)
        nnz = int((w != 0).sum())
        assert int((vals != 0).sum()) == nnz
        torch.testing.assert_close(vals.float().sum(), w.half().float().sum(), rtol=1e-3, atol=1e-2)
        assert cuda_nm.nbytes(p) / (64 * 4096 * keep // m) == most
        assert 3.0 < p.nbytes(kernel="grp8cu") / nnz
        assert p.nbytes(kernel="nmcu") == cuda_nm.nbytes(p)
        assert idx.dtype == (torch.int16 if m == 4 else torch.int32)


def test_config_rules_keys_and_candidates(monkeypatch):
    from sparselm.runtime import gpu_backend

    assert SpmmConfig(kernel="nmcu", num_warps=16, persist=2, unroll=2).key() == "nmcu-w16p2-u2"
    assert SpmmConfig(kernel="nmcu", num_warps=16, persist=2, x16=True).key() == "nmcu-w16p2-x16"
    for other in (dict(kernel="grp8cu", vec=4, persist=1), dict(kernel="d4cu", persist=1), dict()):
        with pytest.raises(ValueError, match="x16"):
            SpmmConfig(x16=True, **other)
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=32, persist=2, unroll=2)) == 2
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=4)) == 2
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=32, persist=2, unroll=4)) == 1
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=3)) == 1
    # the pair table's 40-register build: blocks of <= 512 threads asking for 1536-2047 threads per SM
    for u in (1, 2, 4, 8):
        assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=3, unroll=u, pairs=True)) == 3
        assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=3, unroll=u, pairs=True),
                                  forty=False) == 1
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=32, persist=1, unroll=2, pairs=True)) == 1
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=4, unroll=2, pairs=True)) == 2
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=4, unroll=4, pairs=True)) == 1
    for bad in (dict(persist=0), dict(persist=1, block_b=8), dict(persist=1, unroll=8), dict(persist=1, smem=False),
                dict(persist=1, num_warps=33), dict(persist=1, slots=16), dict(persist=1, split_k=2)):
        with pytest.raises(ValueError, match="nmcu|smem"):
            SpmmConfig(kernel="nmcu", **bad)
    assert SpmmConfig(kernel="nmcu", num_warps=16, persist=1, block_b=4, unroll=2).key() == "nmcu-w16p1b4-u2"
    for bad in (dict(block_b=2, unroll=4), dict(block_b=4, x16=True), dict(block_b=8)):
        with pytest.raises(ValueError, match="nmcu"):
            SpmmConfig(kernel="nmcu", persist=1, **bad)
    monkeypatch.setattr(cuda_nm, "available", lambda: True)
    monkeypatch.delenv("SPARSELM_UNTIMED", raising=False)
    cfgs = gpu_backend.nmcu_configs()
    assert cfgs and all(c.kernel == "nmcu" for c in cfgs) and len({c.key() for c in cfgs}) == len(cfgs)
    assert all(c.key() in {x.key() for x in gpu_backend.candidate_configs(1)} for c in cfgs)
    assert all(c.x16 != c.pairs for c in cfgs) and any(c.pairs for c in cfgs)
    assert gpu_backend.nmcu_configs(2) == []  # batched: untimed, opt-in
    monkeypatch.setenv("SPARSELM_UNTIMED", "1")
    batched = gpu_backend.nmcu_configs(4)
    assert {c.block_b for c in batched} == {4} and {c.unroll for c in batched} == {1, 2}
    assert gpu_backend.nmcu_configs(8) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_unavailable_without_a_gpu_says_why():
    assert not cuda_nm.available()
    assert "no CUDA device" in cuda_nm.build_error()
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(4, 128, 1, 4), "float16"))
    with pytest.raises(RuntimeError, match="unavailable"):
        cuda_nm.gemv(torch.randn(1, 128).half(), p, SpmmConfig(kernel="nmcu", persist=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("keep,m,values,act,unroll,warps,x16", [
    (1, 4, "float16", torch.float16, 1, 4, False), (2, 4, "bfloat16", torch.bfloat16, 2, 8, False),
    (2, 8, "float16", torch.float16, 4, 32, False), (1, 8, "int8", torch.float16, 2, 16, False),
    (4, 8, "int8", torch.bfloat16, 1, 4, False), (1, 4, "int8", torch.float16, 4, 32, False),
    (1, 4, "float16", torch.float16, 2, 32, False), (2, 8, "bfloat16", torch.bfloat16, 1, 32, False),
    (1, 4, "float16", torch.float16, 2, 32, True), (2, 8, "int8", torch.bfloat16, 1, 16, True),
    (1, 4, "float16", torch.float16, 1, 32, "pairs"), (1, 4, "int8", torch.float16, 2, 16, "pairs"),
    (1, 4, "int8", torch.float16, 4, 8, "pairs"), (1, 4, "int8", torch.float16, 8, 32, "pairs")])
def test_gpu_build_matches_the_host_build(keep, m, values, act, unroll, warps, x16):
    """On a GPU machine: the nvcc build against its host emulation and the dense reference (odd shapes, an all-zero
    row, K past the 48 KB default shared-memory window, more warps than rows)."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    pairs, x16 = x16 == "pairs", x16 is True  # x16 "pairs": the pair table (nm_pairs.cuh)
    for n, k in ((37, 304), (19, 14336), (5, 4096)):
        ct = compress_tensor(nm_weight(n, k, keep, m, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(1, k, device="cuda").to(act)
        # 32 warps x 2 blocks per SM: the 32-register build
        cfg = SpmmConfig(kernel="nmcu", num_warps=warps, persist=2, unroll=unroll, x16=x16, pairs=pairs)
        y = cuda_nm.gemv(x, p, cfg)
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol
        host = cuda_nm.gemv_host(x.cpu(), p, unroll=unroll, x16=x16, pairs=pairs).to(act).float()
        if pairs:  # the host twin rounds each half2 FMA as the GPU does: equal up to the output's last bit
            torch.testing.assert_close(y.float().cpu(), host, rtol=1e-3, atol=1e-3 * host.abs().max().item())
        torch.testing.assert_close(y.float().cpu(), host, rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,unroll,warps", [("float16", 2, 16), ("int8", 4, 32), ("float16", 1, 8)])
def test_gpu_pair_table_stages_x_at_any_address(values, unroll, warps):
    """On a GPU machine: with 2+ steps per round the pair table is built from a cp.async copy of x when x is 8-byte
    aligned, and from 16-bit loads otherwise (here x is a view one element in); both match the host twin, as do the
    1-step rounds, which always take the 16-bit loads."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    for n, k in ((37, 304), (70, 4096)):
        p = PackedBitmask.from_compressed(compress_tensor(nm_weight(n, k, 1, 4, seed=n), values).to("cuda"))
        big = torch.randn(1, k + 4, device="cuda").half()
        for x, aligned in ((big[:, :k], True), (big[:, 1:k + 1], False)):
            assert (x.data_ptr() % 8 == 0) == aligned
            cfg = SpmmConfig(kernel="nmcu", num_warps=warps, persist=1, unroll=unroll, pairs=True)
            y = cuda_nm.gemv(x, p, cfg).float().cpu()
            host = cuda_nm.gemv_host(x.cpu(), p, unroll=unroll, pairs=True).half().float()
            torch.testing.assert_close(y, host, rtol=1e-3, atol=1e-3 * host.abs().max().item())


def test_a_model_pruned_n_m_is_served_after_sparsify():
    """The user's path: prune a model 1:4 (any pruner), sparsify it; each block linear's packed matrix is recognized
    as N:M (M = 4, one slot per group) and the kernel matches its dense product; an unstructured 75% model is not."""
    from tiny_models import tiny

    from sparselm.pruning.driver import prune_model
    from sparselm.runtime import sparsify

    for pattern, sparsity, served in (("1:4", None, True), (None, 0.75, False)):
        model = tiny("llama").half()
        prune_model(model, method="magnitude", sparsity=sparsity, pattern=pattern, progress=False)
        sparsify(model)
        layers = [m for m in model.modules() if type(m).__name__ == "SparseLinear"]
        assert layers
        for layer in layers:
            p = PackedBitmask.from_compressed(layer.compressed)
            assert (cuda_nm.pattern(p) == (4, 1)) == served
            if served:
                x = torch.randn(1, p.shape[1]).half()
                ref = x.double() @ layer.dense_weight(torch.float32).double().T
                torch.testing.assert_close(cuda_nm.gemv_host(x, p).double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,pairs", [("float16", False), ("int8", True), ("float16", True)])
def test_gpu_build_glu_matches_silu_mul_and_the_host_build(values, pairs):
    """On a GPU machine: the glu epilogue against fused.silu_mul on the plain launch's output (the decode step's
    unfused path) and the host build, 7B's gate / up shape (22016 x 4096) and an odd one."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    from sparselm.kernels.gpu.fused import silu_mul

    for n, k in ((2 * 37, 1032), (22016, 4096)):
        ct = compress_tensor(nm_weight(n, k, 1, 4, seed=n), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(1, k, device="cuda").half()
        cfg = SpmmConfig(kernel="nmcu", num_warps=16, persist=2, x16=not pairs, pairs=pairs)
        y = cuda_nm.gemv(x, p, cfg, glu=True)
        ref = silu_mul(cuda_nm.gemv(x, p, cfg))
        assert y.shape == (1, n // 2) and y.dtype == torch.float16
        # __expf against Triton's exp and division: a rare element (1 in ~10^5) two ulps apart
        ulp = torch.finfo(torch.float16).eps * ref.float().abs().clamp_min(1e-4)
        assert ((y.float() - ref.float()).abs() <= 2 * ulp).all() and (y == ref).float().mean() > 0.9
        host = cuda_nm.gemv_host(x.cpu(), p, x16=not pairs, pairs=pairs, glu=True)
        torch.testing.assert_close(y.float().cpu(), host, rtol=2e-3, atol=2e-3 * host.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("keep,m,values,act,batch,bsz", [
    (1, 4, "float16", torch.float16, 2, 2), (2, 8, "bfloat16", torch.bfloat16, 4, 3),
    (1, 4, "int8", torch.float16, 4, 4)])
def test_gpu_build_batched_matches_the_host_build(keep, m, values, act, batch, bsz):
    """On a GPU machine: batches 2 and 4 against the host emulation and the dense reference, K past 48 KB of x. Both
    unrolls in turn on the same matrix: each kernel must opt in to its own shared-memory size (a record shared between
    them once let the second launch fail)."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    for n, k in ((37, 304), (19, 11008)):
        ct = compress_tensor(nm_weight(n, k, keep, m, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(bsz, k, device="cuda").to(act)
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        for unroll in (1, 2):
            y = cuda_nm.gemv(x, p, SpmmConfig(kernel="nmcu", num_warps=8, persist=2, block_b=batch, unroll=unroll))
            assert ((y.double() - ref).norm() / ref.norm()).item() < tol
            torch.testing.assert_close(y.float().cpu(), cuda_nm.gemv_host(x.cpu(), p, unroll=unroll, batch=batch)
                                       .to(act).float(), rtol=tol, atol=tol)


def test_silu_mul_product_runs_the_glu_epilogue_only_where_nmcu_serves_batch_1(monkeypatch):
    """The decode step's fused gate / up: one glu launch where the table chose nmcu for the shape at batch 1; None
    (the caller's product + silu_mul) for another kernel, the dense path, batch 2, or a bias."""
    from sparselm.runtime import gpu_backend
    from sparselm.runtime.sparse_linear import SparseLinear

    layer = SparseLinear(compress_tensor(nm_weight(2 * 8, 256, 1, 4), "float16"))
    calls = []
    monkeypatch.setattr(cuda_nm, "gemv", lambda x, p, cfg, glu=False: calls.append((cfg.key(), glu)) or "glu")
    monkeypatch.setattr(gpu_backend, "_TABLE", {})
    key = gpu_backend.key_of(16, 256, 1, "float16", torch.float16)
    x = torch.randn(1, 256).half()
    gpu_backend.record(key, "sparse", SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True))
    assert gpu_backend.silu_mul_product(x, layer) == "glu" and calls == [("nmcu-w16p2-pairs", True)]
    assert gpu_backend.silu_mul_product(torch.randn(2, 256).half(), layer) is None
    gpu_backend.record(key, "sparse", SpmmConfig(kernel="grp8cu", vec=4, persist=1))
    assert gpu_backend.silu_mul_product(x, layer) is None
    gpu_backend.record(key, "dense", None)
    assert gpu_backend.silu_mul_product(x, layer) is None and len(calls) == 1


def test_silu_mul_product_auto_follows_the_measured_glu_row(monkeypatch):
    """auto (the decoder's default): 16-bit values take the glu launch, with autotune_glu's config where it has a
    row (a "dense" row: no glu) and the product's config where nmcu serves it otherwise; int8 values never do under
    auto, tuned or not (int8 decode ran slower with either config)."""
    from sparselm.runtime import gpu_backend
    from sparselm.runtime.sparse_linear import SparseLinear

    calls = []
    monkeypatch.setattr(cuda_nm, "gemv", lambda x, p, cfg, glu=False: calls.append(cfg.key()) or "glu")
    monkeypatch.setattr(gpu_backend, "_TABLE", {})
    x = torch.randn(1, 256).half()
    nm = SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True)
    for values in ("float16", "int8"):
        layer = SparseLinear(compress_tensor(nm_weight(2 * 8, 256, 1, 4), values))
        gpu_backend.record(gpu_backend.key_of(16, 256, 1, values, torch.float16), "sparse", nm)
        untuned = gpu_backend.silu_mul_product(x, layer, auto=True)
        assert untuned == ("glu" if values == "float16" else None)
        assert gpu_backend.silu_mul_product(x, layer) == "glu"  # auto=False: wherever nmcu serves the product
        key = gpu_backend.glu_key(layer, torch.float16)
        assert key == (16, 256, 1, values + "+glu", "float16")
        gpu_backend.record(key, "sparse", SpmmConfig(kernel="nmcu", num_warps=32, persist=3, pairs=True))
        if values == "float16":
            assert gpu_backend.silu_mul_product(x, layer, auto=True) == "glu" and calls[-1] == "nmcu-w32p3-pairs"
        else:
            assert gpu_backend.silu_mul_product(x, layer, auto=True) is None
        gpu_backend.record(key, "dense", None)
        assert gpu_backend.silu_mul_product(x, layer, auto=True) is None


def _add_rmsnorm_reference(y: torch.Tensor, res: torch.Tensor, w: torch.Tensor, eps: float):
    """HF LlamaRMSNorm after the residual add, in eager PyTorch: s = res + y in the activation dtype, the mean of
    squares in float32, the normalized value rounded before the weight."""
    s = res + y
    sf = s.float()
    return s, w * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)


@pytest.mark.parametrize("act,d,threads", [(torch.float16, 4096, 1024), (torch.bfloat16, 4099, 256),
                                           (torch.float16, 37, 32), (torch.bfloat16, 5120, 512)])
def test_norm_epilogue_host_twin_is_add_rmsnorm(act, d, threads):
    """The norm epilogue's arithmetic (nm_epilogue.cuh, as the kernel's last block runs it with `threads` threads):
    the residual sum bit-equal to the eager add, the normalized outputs within one ulp of HF's RMSNorm (the sum of
    squares is ordered differently and 1 / sqrt is not torch.rsqrt)."""
    g = torch.Generator().manual_seed(d)
    y, res = (torch.randn(1, d, generator=g) * sc for sc in (0.5, 3.0))
    y, res = y.to(act), res.to(act)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(act)
    s, n = cuda_nm.norm_host(y, res, w, 1e-5, threads)
    s_ref, n_ref = _add_rmsnorm_reference(y, res, w, 1e-5)
    assert s.dtype == n.dtype == act and torch.equal(s, s_ref)
    ulp = torch.finfo(act).eps * n_ref.float().abs().clamp_min(1e-3)
    assert ((n.float() - n_ref.float()).abs() <= ulp).all() and (n == n_ref).float().mean() > 0.9
    with pytest.raises(ValueError, match="multiple of 32"):
        cuda_nm.norm_host(y, res, w, 1e-5, 48)
    with pytest.raises(ValueError, match="one size"):
        cuda_nm.norm_host(y, res[:, :-1], w, 1e-5, 32)


def test_norm_epilogue_arguments_are_checked_before_any_launch():
    """Wrong residual / weight shapes or dtypes, batch > 1, glu with norm: clear errors (checked before the GPU)."""
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(16, 256, 1, 4), "float16"))
    x, cfg = torch.randn(1, 256).half(), SpmmConfig(kernel="nmcu", num_warps=4, persist=1)
    res, w = torch.randn(1, 16).half(), torch.ones(16).half()
    for bad, match in (((res[:, :8], w, 1e-5), "res"), ((res, w.float(), 1e-5), "weight"),
                       ((res, w, 0.0), "eps")):
        with pytest.raises(ValueError, match=match):
            cuda_nm.gemv(x, p, cfg, norm=bad)
    with pytest.raises(ValueError, match="exclusive"):
        cuda_nm.gemv(x, p, cfg, glu=True, norm=(res, w, 1e-5))
    with pytest.raises(ValueError, match="batch 1"):
        cuda_nm.gemv(torch.randn(2, 256).half(), p, SpmmConfig(kernel="nmcu", num_warps=4, persist=1, block_b=2),
                     norm=(res, w, 1e-5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,act,warps,persist,staging", [
    ("float16", torch.float16, 32, 2, "x16"), ("int8", torch.float16, 16, 2, "pairs"),
    ("bfloat16", torch.bfloat16, 8, 1, "f32"), ("int8", torch.float16, 32, 1, "pairs")])
def test_gpu_build_norm_epilogue_matches_its_host_twin(values, act, warps, persist, staging):
    """On a GPU machine: the last block's add + RMSNorm against the host twin on the plain launch's output (bit-equal:
    same order of sums for the block size), and within an ulp of fused.add_rmsnorm; o_proj's and down_proj's 7B shapes
    and an odd one; repeated launches (the arrival counter resets)."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    from sparselm.kernels.gpu.fused import add_rmsnorm

    for n, k in ((37, 1032), (4096, 4096), (4096, 11008)):
        ct = compress_tensor(nm_weight(n, k, 1, 4, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        cfg = SpmmConfig(kernel="nmcu", num_warps=warps, persist=persist, x16=staging == "x16",
                         pairs=staging == "pairs")
        w = (1 + 0.1 * torch.randn(n, device="cuda")).to(act)
        for _ in range(3):
            x, res = torch.randn(1, k, device="cuda").to(act), torch.randn(1, n, device="cuda").to(act)
            s, xn = cuda_nm.gemv(x, p, cfg, norm=(res, w, 1e-6))
            y = cuda_nm.gemv(x, p, cfg)
            hs, hn = cuda_nm.norm_host(y.cpu(), res.cpu(), w.cpu(), 1e-6, 32 * warps)
            assert torch.equal(s.cpu(), hs) and torch.equal(xn.cpu(), hn)
            fs, fn = add_rmsnorm(res, y, w, 1e-6)  # Triton's sqrt / division: not IEEE, a rare 2-ulp difference
            assert torch.equal(s, fs)
            ulp = torch.finfo(act).eps * fn.float().abs().clamp_min(1e-3)
            assert ((xn.float() - fn.float()).abs() <= 2 * ulp).all() and (xn == fn).float().mean() > 0.9


def test_add_rmsnorm_product_runs_the_norm_epilogue_only_where_nmcu_serves_batch_1(monkeypatch):
    """The decode step's o_proj / down_proj: one launch with the norm epilogue where the table chose nmcu at batch 1;
    None (the caller's product + add_rmsnorm) for another kernel, the dense path, batch 2, or a weight in another
    dtype."""
    from sparselm.runtime import gpu_backend
    from sparselm.runtime.sparse_linear import SparseLinear

    layer = SparseLinear(compress_tensor(nm_weight(16, 256, 1, 4), "float16"))
    calls = []
    monkeypatch.setattr(cuda_nm, "gemv", lambda x, p, cfg, norm=None: calls.append((cfg.key(), norm[2])) or "norm")
    monkeypatch.setattr(gpu_backend, "_TABLE", {})
    key = gpu_backend.key_of(16, 256, 1, "float16", torch.float16)
    x, res, w = torch.randn(1, 256).half(), torch.randn(1, 1, 16).half(), torch.ones(16).half()
    gpu_backend.record(key, "sparse", SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True))
    assert gpu_backend.add_rmsnorm_product(x, layer, res, w, 1e-5) == "norm"
    assert calls == [("nmcu-w16p2-pairs", 1e-5)]
    assert gpu_backend.add_rmsnorm_product(torch.randn(2, 256).half(), layer, res, w, 1e-5) is None
    assert gpu_backend.add_rmsnorm_product(x, layer, res, w.float(), 1e-5) is None
    gpu_backend.record(key, "sparse", SpmmConfig(kernel="grp8cu", vec=4, persist=1))
    assert gpu_backend.add_rmsnorm_product(x, layer, res, w, 1e-5) is None
    gpu_backend.record(key, "dense", None)
    assert gpu_backend.add_rmsnorm_product(x, layer, res, w, 1e-5) is None and len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values", ["float16", "int8"])
def test_gpu_autotune_glu_records_a_measured_choice(values, monkeypatch):
    """On a GPU machine: autotune_glu times the glu launch against the table's product + silu_mul for a fused
    gate / up layer of 16-bit values and records either an nmcu config that computes silu * up or "dense" (keep the
    two launches); int8 layers are not tuned (the decoder's auto mode never gives them the glu launch)."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    from sparselm.kernels.gpu.fused import silu_mul
    from sparselm.runtime import gpu_backend
    from sparselm.runtime.sparse_linear import SparseLinear

    monkeypatch.setattr(gpu_backend, "_TABLE", {})
    layer = SparseLinear(compress_tensor(nm_weight(2 * 1024, 1024, 1, 4), values)).cuda()
    gpu_backend.autotune(torch.nn.ModuleList([layer]))
    rows = gpu_backend.autotune_glu([layer, layer, None])
    key = gpu_backend.glu_key(layer, torch.float16)
    x = torch.randn(1, 1024, device="cuda").half()
    y = gpu_backend.silu_mul_product(x, layer, auto=True)
    if values == "int8":
        assert rows == {} and key not in gpu_backend._TABLE and y is None
        return
    assert list(rows) == [key] and rows[key]["path"] in ("sparse", "dense")
    if rows[key]["path"] == "sparse":
        assert rows[key]["cfg"].kernel == "nmcu"
        ref = silu_mul(torch.nn.functional.linear(x, layer.dense_weight(torch.float16)))
        assert gpu_backend.agrees(y, ref)
    else:
        assert y is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
def test_gpu_decoder_with_the_epilogues_matches_the_unfused_decoder(monkeypatch):
    """On a GPU machine: a Llama pruned 1:4 whose batch-1 products all run on nmcu decodes (CUDA graph, PDL) with the
    glu and norm epilogues as without them: the same greedy tokens, logits within fp16 rounding; each decode step
    runs 2 norm epilogues per layer."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparselm.pruning.driver import prune_model
    from sparselm.runtime import StaticDecoder, gpu_backend, sparsify

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval().half().cuda()
    prune_model(model, method="magnitude", pattern="1:4", progress=False)
    sparsify(model)
    nm = SpmmConfig(kernel="nmcu", num_warps=4, persist=1, x16=True)
    monkeypatch.setattr(gpu_backend, "choice", lambda key: {"path": "sparse", "cfg": nm} if key[2] == 1
                        else {"path": "dense", "cfg": None})
    norms, gemv = [], cuda_nm.gemv
    monkeypatch.setattr(cuda_nm, "gemv", lambda *a, **k: norms.append(k.get("norm") is not None) or gemv(*a, **k))
    ids = torch.randint(0, 97, (1, 5), device="cuda")
    t1, l1 = StaticDecoder(model, max_len=32, use_graph=False, glu=True, norm_epilogue=True).generate(
        ids, 8, return_logits=True)
    assert sum(norms) == 7 * 2 * cfg.num_hidden_layers  # 7 decode steps after the prefill, eager
    t2, l2 = StaticDecoder(model, max_len=32, glu=False).generate(ids, 8, return_logits=True)
    t3, l3 = StaticDecoder(model, max_len=32, glu=True, norm_epilogue=True).generate(ids, 8, return_logits=True)
    assert torch.equal(t1, t2) and torch.equal(t1, t3) and torch.equal(l1, l3)  # l3: graph replays
    torch.testing.assert_close(l1, l2, rtol=2e-2, atol=2e-2 * l2.abs().max().item())
