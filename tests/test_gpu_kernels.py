"""The Triton bitmask kernels, run by the Triton interpreter on the CPU (TRITON_INTERPRET=1, set by
sparselm.kernels.gpu when no GPU is present): odd shapes, 0 / 50 / 90 % sparsity, all-zero rows, every values
dtype, fp16/bf16 activations, the batch-1 FMA, batch 2-8 FMA and tensor-core (tl.dot) paths, split-K, and the
per-nonzero csr8 kernel (batch 1 and batched)."""

import json
import os
from dataclasses import asdict

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton loads (no-op when a GPU runs the tests)
pytest.importorskip("triton", reason="the GPU kernels need triton: pip install triton")

from sparselm.compress import compress_tensor, decompress  # noqa: E402
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, decompress_gpu, spmm  # noqa: E402
from tiny_models import sparse_weight  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VALUES = [("float16", None), ("bfloat16", None), ("float32", None), ("int8", None), ("int8", 24), ("int4", 24)]
CONFIGS = {  # (batch, config): every code path of bitmask_spmm_kernel
    "gemv": (1, SpmmConfig(block_n=2, block_k=128, block_b=1)),
    "gemv-splitk": (1, SpmmConfig(block_n=4, block_k=64, block_b=1, split_k=3)),
    "fma-batch": (3, SpmmConfig(block_n=2, block_k=64, block_b=4)),
    "dot": (5, SpmmConfig(block_n=16, block_k=64, block_b=16, use_dot=True)),
    "csr8": (1, SpmmConfig(kernel="csr8", block_n=2, block_k=512, slots=16)),
    "csr8-batch": (3, SpmmConfig(kernel="csr8", block_n=2, block_k=256, block_b=4, slots=32)),
    "csr8-vec": (1, SpmmConfig(kernel="csr8", block_n=2, block_k=512, slots=16, vec=8)),
    "vc32": (1, SpmmConfig(kernel="vc32", block_n=2, block_k=64)),  # 64-word steps: several per row
    "vc32-batch": (3, SpmmConfig(kernel="vc32", block_n=2, block_k=32, block_b=4)),
    "vc32-vec": (1, SpmmConfig(kernel="vc32", block_n=4, block_k=64, vec=4)),
    "grp8": (1, SpmmConfig(kernel="grp8", block_n=2, block_k=64)),
    "grp8-batch": (3, SpmmConfig(kernel="grp8", block_n=2, block_k=32, block_b=4)),
    "grp8-vec": (1, SpmmConfig(kernel="grp8", block_n=4, block_k=64, vec=8)),
    "grp8-interleaved": (1, SpmmConfig(kernel="grp8", block_n=2, block_k=128, vec=4)),
    "grp8-interleaved-c16": (1, SpmmConfig(kernel="grp8", block_n=2, block_k=128, vec=4, col16=True)),
    "grp8-interleaved-lean": (1, SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, lean=True)),
    "vc32t-batch": (3, SpmmConfig(kernel="vc32t", block_n=2, block_k=64, block_b=4)),
    "vc32t-batch16": (16, SpmmConfig(kernel="vc32t", block_n=1, block_k=32, block_b=16)),
}


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# every path x every values dtype at 50%; the 0% / 90% extremes with fp16 and grouped int8 (keeps CI < 60 s)
CASES = [(p, v, g, 0.5) for p in sorted(CONFIGS) for v, g in VALUES] + [
    (p, v, g, s) for p in sorted(CONFIGS) for v, g in (VALUES[0], VALUES[4]) for s in (0.0, 0.9)]


@pytest.mark.parametrize("path,values,group_size,sparsity", CASES)
def test_spmm_matches_reference(path, values, group_size, sparsity):
    batch, cfg = CONFIGS[path]
    n, k = 19, 301  # not multiples of any tile; two 256-column csr8 chunks
    act = torch.bfloat16 if values == "bfloat16" else torch.float16
    ct = compress_tensor(sparse_weight(n, k, sparsity), values, group_size=group_size).to(DEVICE)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(batch, k, device=DEVICE).to(act)
    if not p.supports(cfg):  # vc32 packs 16-bit values only: a clear error, never a wrong answer
        assert cfg.kernel in ("vc32", "vc32t") and values not in ("float16", "bfloat16")
        with pytest.raises(ValueError, match="vc32: needs fp16/bf16 values"):
            spmm(x, p, cfg)
        return
    out = torch.full((batch, n), float("nan"), device=DEVICE, dtype=act)  # every element must be written
    y = spmm(x, p, cfg, out=None if cfg.split_k > 1 else out)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert y.shape == (batch, n) and y.dtype == act
    assert not torch.isnan(y).any()
    assert rel_err(y, ref) < (8e-3 if act == torch.bfloat16 else 1e-3)
    assert torch.all(y[:, n // 2] == 0)  # the all-zero row


def test_spmm_all_zero_matrix_and_strided_input():
    ct = compress_tensor(torch.zeros(7, 45), "float16").to(DEVICE)
    x = torch.randn(4, 90, device=DEVICE).half()[:, ::2]  # a non-contiguous view
    y = spmm(x, PackedBitmask.from_compressed(ct), SpmmConfig(block_n=2, block_k=64, block_b=4))
    assert torch.equal(y, torch.zeros(4, 7, device=DEVICE, dtype=torch.float16))


def test_spmm_rejects_wrong_width():
    p = PackedBitmask.from_compressed(compress_tensor(torch.eye(8), "float16").to(DEVICE))
    with pytest.raises(ValueError, match="x: expected"):
        spmm(torch.randn(1, 9, device=DEVICE).half(), p)


@pytest.mark.parametrize("values,group_size", [("float16", None), ("int8", 24), ("int8", None), ("int4", 24)])
def test_decompress_kernel_exact(values, group_size):
    ct = compress_tensor(sparse_weight(11, 99, 0.6), values, group_size=group_size).to(DEVICE)
    w = decompress_gpu(PackedBitmask.from_compressed(ct), torch.float32, block_n=4, block_k=64)
    torch.testing.assert_close(w, decompress(ct, torch.float32), rtol=1e-6, atol=0)


def test_format_bytes_count_aux_array():
    ct = compress_tensor(sparse_weight(10, 300, 0.75), "float16")
    p = PackedBitmask.from_compressed(ct)
    base = ct.bitmask.numel() + 2 * ct.nnz
    assert p.nbytes() == base
    assert p.nbytes(block_k=128) == base + 4 * 10 * 3  # int32 chunk_ptr, ceil(300/128) chunks per row
    assert p.nbytes(kernel="csr8") == 3 * ct.nnz + 4 * 10 * 3  # values + cols8 + cp256 (2 chunks + end)


def test_csr8_aux_arrays():
    w = sparse_weight(6, 600, 0.5)
    ct = compress_tensor(w, "float16")
    vals, cols8, cp = PackedBitmask.from_compressed(ct).csr8()
    assert vals is ct.values  # vec = 1 reads the canonical values
    cols = (w != 0).nonzero()[:, 1]
    assert cols8.dtype == torch.uint8 and torch.equal(cols8.long(), cols % 256)
    assert cp.shape == (6, 4) and torch.equal(cp[:, -1].long(), ct.row_ptr[1:])
    assert torch.equal(cp[:, 1].long(), ct.row_ptr[:-1] + (w[:, :256] != 0).sum(1))
    pv, pc, pcp = PackedBitmask.from_compressed(ct).csr8(vec=8)
    assert bool((pcp % 8 == 0).all())  # every segment starts on a vector boundary
    for n in range(6):
        for c in range(3):
            a, b, m = int(cp[n, c]), int(cp[n, c + 1]), int(pcp[n, c])
            assert torch.equal(pv[m:m + b - a], ct.values[a:b]) and torch.equal(pc[m:m + b - a], cols8[a:b])
            assert int(pcp[n, c + 1]) - m == (b - a + 7) // 8 * 8 and not pv[m + b - a:int(pcp[n, c + 1])].any()


def test_vc32_words_and_padding():
    w = sparse_weight(6, 70000, 0.9)[:, :600].contiguous()  # K = 600 (the K > 65536 case is below)
    ct = compress_tensor(w, "bfloat16")
    p = PackedBitmask.from_compressed(ct)
    words, rp = p.vc32()
    cols = (w != 0).nonzero()[:, 1]
    assert words.dtype == torch.int32 and torch.equal(rp.long(), ct.row_ptr)
    assert torch.equal((words.long() >> 16) & 0xFFFF, cols)
    assert torch.equal((words & 0xFFFF).to(torch.int16).view(torch.bfloat16), ct.values)
    pw, prp = p.vc32(vec=4)
    assert bool((prp % 4 == 0).all())
    for n in range(6):
        a, b, m = int(ct.row_ptr[n]), int(ct.row_ptr[n + 1]), int(prp[n])
        assert torch.equal(pw[m:m + b - a], words[a:b]) and not pw[m + b - a:int(prp[n + 1])].any()
    assert p.nbytes(kernel="vc32") == 4 * ct.nnz + 4 * 7
    wide = PackedBitmask.from_compressed(compress_tensor(torch.eye(2, 65537), "float16"))
    assert not wide.supports(SpmmConfig(kernel="vc32"))
    with pytest.raises(ValueError, match="K <= 65536"):
        wide.vc32()


def test_grp8_groups_cover_every_nonzero_within_span():
    w = sparse_weight(9, 3000, 0.9)
    w[1] = 0
    w[1, [0, 5, 300, 556, 2999]] = 1.0  # gaps of 295 / 256 / 2443: each starts a new group
    w[2] = 0
    w[2, :40] = 2.0  # 40 adjacent nonzeros: a full group of 32, then 8
    ct = compress_tensor(w, "float16")
    gvals, goffs, gbase, gptr = PackedBitmask.from_compressed(ct).grp8()
    base = gbase.long() & 0xFFFF
    dense = torch.zeros(9, 3000, dtype=torch.float16)
    for n in range(9):
        for g in range(int(gptr[n]), int(gptr[n + 1])):
            for s_ in range(32):
                if gvals[32 * g + s_] != 0:
                    dense[n, int(base[g]) + int(goffs[32 * g + s_])] = gvals[32 * g + s_]
    assert torch.equal(dense, w.half())
    assert [int(b) for b in base[int(gptr[1]):int(gptr[2])]] == [0, 300, 556, 2999]
    assert int(gptr[3] - gptr[2]) == 2 and int((gvals[32 * int(gptr[2]):32 * int(gptr[3])] != 0).sum()) == 40
    p = PackedBitmask.from_compressed(ct)
    assert p.nbytes(kernel="grp8") == 3 * gvals.numel() + 2 * gbase.numel() + 4 * 10


def test_drop_aux_keeps_only_what_the_chosen_kernels_read():
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(8, 300, 0.7), "float16"))
    chosen = [SpmmConfig(kernel="grp8", vec=4), SpmmConfig(block_k=128)]
    for cfg in chosen + [SpmmConfig(kernel="vc32"), SpmmConfig(kernel="csr8", vec=8)]:
        p.nbytes(cfg.block_k, cfg.kernel, cfg.vec)  # builds the per-nonzero kernels' aux arrays
    p.chunk_ptr(128)  # and the bitmask kernel's
    p.drop_aux(chosen + [None])
    assert set(p._cptr) == {("grp8", 4), 128}
    x = torch.randn(1, 300, device=DEVICE).half()
    ref = spmm(x, p, chosen[1])
    torch.testing.assert_close(spmm(x, p, chosen[0]).float(), ref.float(), rtol=2e-3, atol=2e-3)
    p.drop_aux([None])
    assert not p._cptr


@pytest.mark.parametrize("cfg", [SpmmConfig(kernel="vc32", block_n=2, block_k=64),
                                 SpmmConfig(kernel="grp8", block_n=2, block_k=64),
                                 SpmmConfig(kernel="grp8", block_n=2, block_k=128, vec=4),
                                 SpmmConfig(kernel="vc32", block_n=1, block_k=64, persist=2),
                                 SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, persist=2),
                                 SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, col16=True),
                                 SpmmConfig(kernel="grp8", block_n=1, block_k=256, vec=4, lean=True)],
                         ids=lambda c: c.key())
def test_per_nonzero_kernels_on_an_all_zero_matrix(cfg):
    p = PackedBitmask.from_compressed(compress_tensor(torch.zeros(5, 70), "float16").to(DEVICE))
    out = torch.full((1, 5), float("nan"), device=DEVICE, dtype=torch.float16)
    y = spmm(torch.randn(1, 70, device=DEVICE).half(), p, cfg, out=out)
    assert torch.equal(y, torch.zeros(1, 5, device=DEVICE, dtype=torch.float16))


def test_grp8_rejects_wide_matrices_and_bad_configs():
    wide = PackedBitmask.from_compressed(compress_tensor(torch.eye(2, 65537), "float16"))
    assert not wide.supports(SpmmConfig(kernel="grp8"))
    with pytest.raises(ValueError, match="K <= 65536"):
        wide.grp8()
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(4, 100, 0.5), "float16").to(DEVICE))
    x = torch.randn(1, 100, device=DEVICE).half()
    with pytest.raises(ValueError, match="multiple of 32"):
        spmm(x, p, SpmmConfig(kernel="grp8", block_k=48))
    with pytest.raises(ValueError, match="batch 1"):
        spmm(torch.randn(2, 100, device=DEVICE).half(), p, SpmmConfig(kernel="grp8", block_k=128, vec=4))
    with pytest.raises(ValueError, match="interleave"):
        p.grp8(interleave=2)


# persistent, software-pipelined batch-1 kernels (SpmmConfig.persist): under the interpreter a launch has
# 4 * persist programs, so N = 37 gives more row blocks than programs at block_n 1 (37 vs 8) and fewer at
# block_n 4 (10 vs 16); K = 300 makes several TILE steps per row at low sparsity and uneven rows
PERSIST = {
    "grp8i-p2-n1": SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, num_warps=2, persist=2),
    "grp8i-p4-n4": SpmmConfig(kernel="grp8", block_n=4, block_k=256, vec=4, persist=4, num_stages=3),
    "vc32-p2-n1": SpmmConfig(kernel="vc32", block_n=1, block_k=64, persist=2, num_stages=3),
    "vc32-p4-n4-vec4": SpmmConfig(kernel="vc32", block_n=4, block_k=128, vec=4, persist=4),
}
PERSIST_CASES = [(c, v, g, s) for c in sorted(PERSIST) for v, g in (("float16", None), ("int8", 24))
                 for s in (0.0, 0.5, 0.9)] + [(c, v, g, 0.5) for c in sorted(PERSIST)
                                              for v, g in (("bfloat16", None), ("int8", None))]


@pytest.mark.parametrize("name,values,group_size,sparsity", PERSIST_CASES)
def test_persistent_spmv_matches_reference(name, values, group_size, sparsity):
    cfg = PERSIST[name]
    n, k = 37, 300
    act = torch.bfloat16 if values == "bfloat16" else torch.float16
    w = sparse_weight(n, k, sparsity, seed=1)
    w[3, :] = 0
    w[3, ::2] = 1.0  # one row twice as long as the rest at 90%: the others take masked steps
    ct = compress_tensor(w, values, group_size=group_size).to(DEVICE)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k, device=DEVICE).to(act)
    if not p.supports(cfg):
        with pytest.raises(ValueError, match="vc32: needs fp16/bf16 values"):
            spmm(x, p, cfg)
        return
    out = torch.full((1, n), float("nan"), device=DEVICE, dtype=act)  # every row must be stored
    y = spmm(x, p, cfg, out=out)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert not torch.isnan(y).any()
    assert rel_err(y, ref) < (8e-3 if act == torch.bfloat16 else 1e-3)
    assert torch.all(y[:, n // 2] == 0)  # the all-zero row
    plain = SpmmConfig(**{**asdict(cfg), "persist": 0})  # same tiles, one program per row block
    torch.testing.assert_close(y.float(), spmm(x, p, plain).float(), rtol=1e-2, atol=1e-2)


def test_persistent_config_round_trip_and_bad_values(tmp_path):
    from sparselm.runtime import gpu_backend as gb

    cfg = SpmmConfig(kernel="grp8", block_n=1, block_k=512, vec=4, num_warps=2, persist=4, num_stages=3)
    assert SpmmConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    assert cfg.key() == "grp8v4-n1t512b1w2-p4s3"
    assert SpmmConfig(kernel="grp8", block_n=1, block_k=512, vec=4, num_warps=2).key() == "grp8v4-n1t512b1w2"
    assert SpmmConfig(**{k: v for k, v in asdict(cfg).items() if k != "persist"}).persist == 0  # old tables
    key = gb.key_of(37, 300, 1, torch.float16, torch.float16)
    gb.record(key, "sparse", cfg)
    gb.save_dispatch_table(tmp_path / "t.json")
    gb._TABLE.clear()
    gb.load_dispatch_table(tmp_path / "t.json")
    assert gb.choice(key)["cfg"] == cfg
    gb._TABLE.clear()
    assert not [c for c in gb.candidate_configs(1) if c.persist]  # measured slower: not default candidates
    new = [c for c in gb.candidate_configs(1, pipelined=True) if c.persist]
    assert 0 < len(new) <= 8 and len({c.key() for c in new}) == len(new)
    assert all(c.block_b == 1 and c.num_stages >= 2 for c in new)
    for bad, match in ((dict(kernel="vc32", persist=-1), "persist"), (dict(kernel="vc32", persist=1.5), "persist"),
                       (dict(kernel="vc32", persist=True), "persist"), (dict(persist=2), "only for kernel"),
                       (dict(kernel="grp8", vec=1, persist=2), "only for kernel"),
                       (dict(kernel="vc32t", persist=2), "only for kernel"),
                       (dict(kernel="vc32", block_b=4, persist=2), "batch-1"),
                       (dict(kernel="vc32", persist=2, num_stages=0), "num_stages")):
        with pytest.raises(ValueError, match=match):
            SpmmConfig(**bad)
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(4, 100, 0.5), "float16").to(DEVICE))
    with pytest.raises(ValueError, match="batch 1"):
        spmm(torch.randn(2, 100, device=DEVICE).half(), p, SpmmConfig(kernel="vc32", block_k=64, persist=2))


def _variant_matches_default(n, k, values, group_size, sparsity, seed, base, **variant):
    """The grp8 vec 4 config `base` with `variant` set (col16, lean) against `base` itself: equal bit for bit, every
    output written, close to the float64 reference, the all-zero row zero."""
    act = torch.bfloat16 if values == "bfloat16" else torch.float16
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=seed), values, group_size=group_size).to(DEVICE)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k, device=DEVICE).to(act)
    cfg = SpmmConfig(**{**asdict(base), **variant})
    y = spmm(x, p, cfg, out=torch.full((1, n), float("nan"), device=DEVICE, dtype=act))
    assert torch.equal(y, spmm(x, p, base))
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert rel_err(y, ref) < (8e-3 if act == torch.bfloat16 else 1e-3)
    assert torch.all(y[:, n // 2] == 0)  # the all-zero row


# grp8 vec 4 with col16 (the column as (base + offset) & 0xFFFF, a 32-bit sum): the same results as the default,
# bit for bit, on the persistent shapes (N = 37, K = 300) and the plain / persistent loops
@pytest.mark.parametrize("values,group_size,sparsity,persist", [("float16", None, 0.0, 0), ("bfloat16", None, 0.5, 0),
                                                                ("int8", 24, 0.9, 0), ("float16", None, 0.5, 2)])
def test_grp8i_col16_matches_default(values, group_size, sparsity, persist):
    base = SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, num_warps=2, persist=persist)
    _variant_matches_default(37, 300, values, group_size, sparsity, 2, base, col16=True)


def test_grp8i_col16_top_columns_and_config():
    """K = 65536 with nonzeros in the top columns: bases >= 32768 are negative as int16, so col16's sum wraps
    through the sign bit and must still land on the right column (65535 included)."""
    k = 65536
    w = torch.zeros(3, k)
    w[0, -300::3] = torch.arange(1, 101, dtype=torch.float32) / 64
    w[2, [0, 5, 32767, 32768, 40000, 65534, 65535]] = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0])
    ct = compress_tensor(w, "float16").to(DEVICE)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k, device=DEVICE).half()
    cfg = SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, col16=True)
    y = spmm(x, p, cfg)
    assert torch.equal(y, spmm(x, p, SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4)))
    assert rel_err(y, x.double() @ decompress(ct, torch.float32).double().T) < 1e-3
    assert cfg.key() == "grp8v4-n1t128b1w4-c16" and SpmmConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    for bad in (dict(kernel="grp8", col16=True), dict(kernel="vc32", col16=True), dict(kernel="grp8", vec=4,
                                                                                       col16=1)):
        with pytest.raises(ValueError, match="col16"):
            SpmmConfig(**bad)


# the lean grp8 kernel (whole steps without load masks + one masked tail step; column = sign-extended base + offset):
# bit for bit the default's results. K = 700 at 10% gives rows of ~5 quads (whole 256-slot steps and a tail), at
# 90% rows of one quad (the tail alone); TILE 512 makes most rows tail-only, TILE 128 tail-free.
@pytest.mark.parametrize("values,group_size,sparsity,tile", [("float16", None, 0.1, 256), ("bfloat16", None, 0.5, 128),
                                                             ("int8", 24, 0.9, 256), ("int8", None, 0.1, 512),
                                                             ("float16", None, 0.0, 128)])
def test_grp8i_lean_matches_default(values, group_size, sparsity, tile):
    base = SpmmConfig(kernel="grp8", block_n=1, block_k=tile, vec=4, num_warps=1)
    _variant_matches_default(19, 700, values, group_size, sparsity, 3, base, lean=True)


def test_grp8i_lean_bounds_and_config():
    """K = 32768 (the largest base is 32767: still positive as int16) is served; K = 32769 is refused with a clear
    error rather than a wrong column; the config is checked and round-trips through JSON."""
    w = torch.zeros(2, 32768)
    w[0, [0, 1, 16384, 32766, 32767]] = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0])
    ct = compress_tensor(w, "float16").to(DEVICE)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, 32768, device=DEVICE).half()
    cfg = SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4, lean=True)
    y = spmm(x, p, cfg)
    assert torch.equal(y, spmm(x, p, SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4)))
    wide = PackedBitmask.from_compressed(compress_tensor(torch.eye(2, 32769), "float16").to(DEVICE))
    with pytest.raises(ValueError, match="K <= 32768"):
        spmm(torch.randn(1, 32769, device=DEVICE).half(), wide, cfg)
    assert cfg.key() == "grp8v4-n1t128b1w4-lean" and SpmmConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    for bad in (dict(kernel="grp8", lean=True), dict(kernel="grp8", vec=4, block_n=2, lean=True),
                dict(kernel="grp8", vec=4, block_n=1, persist=2, lean=True), dict(kernel="vc32", lean=True),
                dict(kernel="grp8", vec=4, block_n=1, block_k=64, lean=True), dict(kernel="grp8", vec=4, lean=1)):
        with pytest.raises(ValueError, match="lean"):
            SpmmConfig(**bad)
