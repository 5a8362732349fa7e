"""The scatter-to-tile tensor-core kernel (tile_mma.cu): its tiled layout, and its zero / scatter / ldmatrix / mma
steps checked on the CPU through the host build (mma emulated by the PTX fragment layout); on a GPU with nvcc,
the device build against the dense product and the host build (odd shapes, every split, repeated calls that reuse
the split-K workspace)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_tile, spmm
from sparselm.runtime import gpu_backend
from tiny_models import sparse_weight

has_cxx = bool(shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))
host = pytest.mark.skipif(not has_cxx, reason="the host build of tile_mma.cu needs a C++ compiler")


def _ref(x, ct):
    return x.double() @ decompress(ct, torch.float32).double().T


def test_layout_holds_every_nonzero_once_at_its_tile_position():
    n, k = 37, 300
    ct = compress_tensor(sparse_weight(n, k, 0.6, seed=3), "float16")
    p = PackedBitmask.from_compressed(ct)
    ent, gptr = cuda_tile.aux(p)
    nch = -(-k // 128)
    assert gptr.shape == (3 * nch + 1,) and ent.shape == (int(gptr[-1]), 16)
    w = decompress(ct, torch.float32)
    rebuilt = torch.zeros_like(w)
    for band in range(3):
        for c in range(nch):
            t = band * nch + c
            grp = ent[gptr[t]:gptr[t + 1]]
            vals = grp[:, :8].reshape(-1).view(torch.float16).float()
            pos = grp[:, 8:].reshape(-1).long()
            keep = pos != 128  # padding: value 0 at a column the kernel never reads
            assert torch.all(vals[~keep] == 0)
            r, col = pos[keep] // 136, pos[keep] % 136
            assert torch.all(col < 128)
            rebuilt[16 * band + r, 128 * c + col] = vals[keep]
    assert torch.equal(rebuilt, w)
    assert p.nbytes(128, "tmma") == ent.numel() * 2 + gptr.numel() * 4


def _store_wavefronts(ent, gptr) -> float:
    """Mean shared-memory wavefronts per scatter store: lane l of a warp scatters groups l, l + 32, ... of a tile,
    one instruction per (block of 32 groups, entry); distinct words in one bank serialize."""
    total = stores = 0
    for t in range(gptr.numel() - 1):
        pos = ent[gptr[t]:gptr[t + 1], 8:].long()
        for m in range(0, pos.shape[0], 32):
            for e in range(8):
                words = torch.unique(pos[m:m + 32, e] >> 1)
                total += int(torch.bincount(words & 31, minlength=32).max())
                stores += 1
    return total / stores


@pytest.mark.parametrize("sparsity,bound", [(0.75, 1.8), (0.5, 1.6)])
def test_tile_entries_are_dealt_across_banks(sparsity, bound):
    # row-major entries cost ~3 wavefronts per scatter store; the bank-by-bank order about half that
    ct = compress_tensor(sparse_weight(64, 1024, sparsity, seed=5), "float16")
    ent, gptr = cuda_tile.aux(PackedBitmask.from_compressed(ct))
    assert _store_wavefronts(ent, gptr) < bound
    rowmajor = ent.clone()  # the same tiles with each tile's entries in row-major order
    for t in range(gptr.numel() - 1):
        grp = ent[gptr[t]:gptr[t + 1]]
        v, q = grp[:, :8].reshape(-1), grp[:, 8:].reshape(-1)
        o = torch.argsort(q.long() + 4096 * (q == 128).long())  # padding last, as before
        rowmajor[gptr[t]:gptr[t + 1]] = torch.cat([v[o].view(-1, 8), q[o].view(-1, 8)], dim=1)
    assert _store_wavefronts(rowmajor, gptr) > 2.5


@host
@pytest.mark.parametrize("values,act,sparsity,n,k,bsz,bp", [
    ("float16", torch.float16, 0.5, 37, 296, 5, 8), ("float16", torch.float16, 0.75, 16, 128, 16, 16),
    ("bfloat16", torch.bfloat16, 0.9, 21, 1000, 11, 16), ("float16", torch.float16, 0.0, 9, 264, 33, 64),
    ("float16", torch.float16, 1.0, 18, 136, 3, 8), ("bfloat16", torch.bfloat16, 0.6, 40, 520, 20, 32)])
def test_host_build_matches_the_dense_reference(values, act, sparsity, n, k, bsz, bp):
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k).to(act)
    y = cuda_tile.spmm_host(x, p, bp)
    assert y.shape == (bsz, n) and torch.isfinite(y).all()
    if sparsity == 1.0:
        assert torch.all(y == 0)
    else:
        ref = _ref(x, ct)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
        assert torch.all(y[:, n // 2] == 0)


def test_config_rules_and_candidates(monkeypatch):
    cfg = SpmmConfig(kernel="tmma", block_k=128, block_b=16, num_warps=8, split_k=4)
    assert cfg.key() == "tmma-w8b16s4"
    for bad in (dict(block_b=4), dict(num_warps=2), dict(block_k=256), dict(split_k=0), dict(persist=1)):
        with pytest.raises(ValueError, match="tmma"):
            SpmmConfig(**{**dict(kernel="tmma", block_k=128, block_b=16, num_warps=4), **bad})
    assert not PackedBitmask.from_compressed(compress_tensor(sparse_weight(20, 100, 0.5), "float16")).supports(cfg)
    assert not PackedBitmask.from_compressed(compress_tensor(sparse_weight(20, 104, 0.5), "int8")).supports(cfg)
    monkeypatch.setattr(cuda_tile, "available", lambda: True)
    assert all(c.kernel == "tmma" and c.block_b == 8 for c in gpu_backend.tmma_configs(4))
    monkeypatch.setattr(cuda_tile, "available", lambda: False)
    assert gpu_backend.tmma_configs(16) == []


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("values,sparsity,n,k,bsz,bp", [
    ("float16", 0.5, 37, 296, 5, 8), ("float16", 0.75, 200, 1032, 16, 16), ("bfloat16", 0.9, 21, 1000, 11, 16),
    ("float16", 0.0, 9, 264, 33, 64), ("bfloat16", 0.6, 130, 520, 20, 32), ("float16", 1.0, 18, 136, 3, 8),
    # long rows: many chunks per split (8200 columns: 65 with one split), dense tiles
    ("float16", 0.5, 48, 4104, 16, 16), ("bfloat16", 0.8, 40, 8200, 9, 16), ("float16", 0.0, 16, 2056, 2, 8)])
def test_gpu_build_matches_host_and_dense(values, sparsity, n, k, bsz, bp):
    if not cuda_tile.available():
        pytest.skip(f"tmma unavailable: {cuda_tile.build_error()}")
    act = getattr(torch, values)
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values).to("cuda")
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k, device="cuda").to(act)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    host_y = cuda_tile.spmm_host(x.cpu(), p, bp) if has_cxx else None
    tol = 1e-2 if act == torch.bfloat16 else 2e-3
    for w, s in [(w, s) for w in cuda_tile.WARPS for s in (1, 2, 3, 16)]:
        cfg = SpmmConfig(kernel="tmma", block_k=128, block_b=bp, num_warps=w, split_k=s)
        for _ in range(2):  # the second call reuses the split-K workspace and counters
            out = torch.full((bsz, n), float("nan"), device="cuda", dtype=act)
            y = spmm(x, p, cfg, out=out).double()
            if sparsity == 1.0:
                assert torch.all(y == 0)
            else:
                assert ((y - ref).norm() / ref.norm()).item() < tol, (cfg.key(),)
            if host_y is not None:
                torch.testing.assert_close(y.float().cpu(), host_y.to(act).float(), rtol=tol, atol=tol)
