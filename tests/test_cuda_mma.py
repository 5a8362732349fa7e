"""The tensor-core bitmask kernel (bitmask_mma.cu): its staging, expansion and mma fragment layouts checked on the CPU
through the host build (the same source compiled by g++, mma emulated by the PTX fragment layout), its config rules,
and, on a GPU with nvcc, the device build against the dense product (small odd shapes, every split, repeated calls
that reuse the split-K workspace)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_mma, spmm
from sparselm.runtime import gpu_backend
from tiny_models import sparse_weight

has_cxx = bool(shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))
host = pytest.mark.skipif(not has_cxx, reason="the host build of bitmask_mma.cu needs a C++ compiler")


def _ref(x, ct):
    return x.double() @ decompress(ct, torch.float32).double().T


@host
@pytest.mark.parametrize("values,act,sparsity,n,k,bsz,bp", [
    ("float16", torch.float16, 0.5, 37, 296, 5, 8), ("float16", torch.float16, 0.75, 16, 128, 16, 16),
    ("bfloat16", torch.bfloat16, 0.9, 21, 1000, 11, 16), ("float16", torch.float16, 0.0, 9, 264, 33, 64),
    ("float16", torch.float16, 1.0, 18, 136, 3, 8), ("bfloat16", torch.bfloat16, 0.6, 40, 520, 20, 32)])
def test_host_build_matches_the_dense_reference(values, act, sparsity, n, k, bsz, bp):
    """Odd row counts (partial 16-row tiles), K not a multiple of the 128-column chunk, padded batch rows,
    all-zero and fully dense matrices; stale slot contents (the emulation fills them with NaN bits) never leak."""
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k).to(act)
    y = cuda_mma.spmm_host(x, p, bp)
    ref = _ref(x, ct)
    assert y.shape == (bsz, n) and torch.isfinite(y).all()
    for ks in (2, 4):  # warps sharing a band, each expanding its share of the words: the same sums, regrouped
        torch.testing.assert_close(cuda_mma.spmm_host(x, p, bp, band_warps=ks), y, rtol=1e-5, atol=1e-4)
    if sparsity == 1.0:
        assert torch.all(y == 0)
    else:
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5  # float32 sums of exact products
        assert torch.all(y[:, n // 2] == 0)  # sparse_weight's all-zero row


@host
def test_host_build_places_every_column_and_special_value():
    """One nonzero per row at every column position of a word (each pair position of the fragment layout), against
    a one-hot x per batch row: each output is exactly the one value, including signed zero's neighbours, subnormals
    and the largest finite fp16."""
    n, k = 64, 128
    w = torch.zeros(n, k, dtype=torch.float16)
    special = torch.tensor([65504.0, -6.1e-5, 5.96e-8, -2.0, 0.5], dtype=torch.float16)
    for r in range(n):
        w[r, (r * 3) % k] = special[r % len(special)]
        w[r, (r * 3 + 1) % k] = 1.0 + r  # its right neighbour too: the (v0, v1) case of a pair
    ct = compress_tensor(w, "float16")
    p = PackedBitmask.from_compressed(ct)
    x = torch.eye(k, dtype=torch.float16)[:64]  # batch row b picks column b
    y = cuda_mma.spmm_host(x, p, 64)
    assert torch.equal(y, w.float().T[:64])


def test_config_rules_and_keys():
    cfg = SpmmConfig(kernel="bmma", block_k=128, block_b=16, num_warps=4, block_n=32, split_k=8, num_stages=4)
    assert cfg.key() == "bmma-w4n32b16s8" and cuda_mma.band_warps(cfg) == 2
    for bad in (dict(block_b=4), dict(num_warps=2), dict(block_k=256), dict(split_k=0), dict(persist=1),
                dict(num_stages=3), dict(block_n=24), dict(block_n=128), dict(num_warps=8, block_n=16)):
        with pytest.raises(ValueError, match="bmma"):
            SpmmConfig(**{**dict(kernel="bmma", block_k=128, block_b=16, num_warps=4, block_n=64, num_stages=4),
                          **bad})
    ct = compress_tensor(sparse_weight(20, 100, 0.5), "float16")  # K not a multiple of 8: not served
    assert not PackedBitmask.from_compressed(ct).supports(cfg)
    ct = compress_tensor(sparse_weight(20, 104, 0.5), "int8")  # int8 values: not served (grp8cu does)
    assert not PackedBitmask.from_compressed(ct).supports(cfg)
    assert PackedBitmask.from_compressed(compress_tensor(sparse_weight(20, 104, 0.5), "float16")).supports(cfg)
    assert cuda_mma.splits(32, 8) == (4, 8) and cuda_mma.splits(5, 4) == (2, 3) and cuda_mma.splits(3, 16) == (1, 3)


def test_bytes_and_aux_arrays():
    """What the kernel reads: mask words + values + chunk starts with the row ends; its aux arrays are kept by
    drop_aux for a bmma config."""
    n, k = 24, 300
    ct = compress_tensor(sparse_weight(n, k, 0.75, seed=2), "float16")
    p = PackedBitmask.from_compressed(ct)
    cp, dst = cuda_mma.aux(p)
    assert cp.shape == (n, 4) and cp.dtype == torch.int32 and dst.shape == (n, 3)
    assert torch.equal(cp[:, -1].long(), ct.row_ptr[1:])
    assert torch.equal(cp[:, 0].long(), ct.row_ptr[:-1])
    words = ct.bitmask.numel()
    assert p.nbytes(128, "bmma") == ct.values.numel() * 2 + words + 4 * n * (4 + 3)
    cfg = SpmmConfig(kernel="bmma", block_k=128, block_b=8, num_warps=4, block_n=64, num_stages=4)
    cuda_mma.workspace(p, 8)
    # the staging buffer: the most 16-byte vectors any 16-row band's chunk needs (rows 16-23 form a partial band)
    start, stop = cp[:, :-1].long(), cp[:, 1:].long()
    nvec = (stop - (start & ~7) + 7) >> 3
    assert cuda_mma.cap(p) == max(int(nvec[:16].sum(0).max()), int(nvec[16:].sum(0).max()))
    assert torch.equal(dst[:16].long(), nvec[:16].cumsum(0) - nvec[:16])  # offsets restart at each band
    assert torch.equal(dst[16:].long(), nvec[16:].cumsum(0) - nvec[16:])
    p.drop_aux([cfg])
    assert ("bmma",) in p._cptr and ("bmma-ws", 8) in p._cptr


def test_candidates_only_where_it_builds(monkeypatch):
    monkeypatch.setattr(cuda_mma, "available", lambda: True)
    cfgs = gpu_backend.bmma_configs(16)
    assert cfgs and all(c.kernel == "bmma" and c.block_b == 16 for c in cfgs)
    assert all(c.block_b == 8 for c in gpu_backend.bmma_configs(2))  # padded to the smallest mma batch
    assert gpu_backend.bmma_configs(128) == []
    monkeypatch.setattr(cuda_mma, "available", lambda: False)
    assert gpu_backend.bmma_configs(16) == []


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("values,sparsity,n,k,bsz,bp", [
    ("float16", 0.5, 37, 296, 5, 8), ("float16", 0.75, 200, 1032, 16, 16), ("bfloat16", 0.9, 21, 1000, 11, 16),
    ("float16", 0.0, 9, 264, 33, 64), ("bfloat16", 0.6, 130, 520, 20, 32), ("float16", 1.0, 18, 136, 3, 8)])
def test_gpu_build_matches_host_and_dense(values, sparsity, n, k, bsz, bp):
    """Every warps x bands pair that fits the GPU's shared memory (a dense matrix's staging buffers are large)."""
    if not cuda_mma.available():
        pytest.skip(f"bmma unavailable: {cuda_mma.build_error()}")
    act = getattr(torch, values)
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values).to("cuda")
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k, device="cuda").to(act)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    host_y = cuda_mma.spmm_host(x.cpu(), p, bp) if has_cxx else None
    for w, bn in ((4, 64), (4, 32), (4, 16), (8, 128), (8, 64), (8, 32)):
        for s in (1, 2, 3, 16):
            cfg = SpmmConfig(kernel="bmma", block_k=128, block_b=bp, num_warps=w, block_n=bn, split_k=s,
                             num_stages=4)
            if not p.supports(cfg):
                continue
            for _ in range(2):  # the second call reuses the split-K workspace and counters
                out = torch.full((bsz, n), float("nan"), device="cuda", dtype=act)
                y = spmm(x, p, cfg, out=out).double()
                tol = 1e-2 if act == torch.bfloat16 else 2e-3
                if sparsity == 1.0:
                    assert torch.all(y == 0)
                else:
                    assert ((y - ref).norm() / ref.norm()).item() < tol, (cfg.key(),)
                if host_y is not None:
                    torch.testing.assert_close(y.float().cpu(), host_y.to(act).float(), rtol=tol, atol=tol)
