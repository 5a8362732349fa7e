"""The sparse-tensor-core kernel for N:M masks (nm_mma.cu, "nmsp"): slot detection, its record layout decoded
independently of the kernel, and the kernel's registers, ldmatrix and mma.sp checked on the CPU through the host
build (mma.sp emulated by the PTX fragment and metadata layouts); on a GPU with nvcc, the device build against the
dense product and the host build (odd shapes, every split including uneven cluster sizes, repeated calls)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_nmsp, spmm
from sparselm.runtime import gpu_backend
from sparselm.sparsity.masks import parse_pattern, select_nm

has_cxx = bool(shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))
host = pytest.mark.skipif(not has_cxx, reason="the host build of nm_mma.cu needs a C++ compiler")


def nm_weight(n: int, k: int, pattern: str, seed: int = 0, empty_row: bool = True) -> torch.Tensor:
    """A random (n, k) weight pruned to `pattern` ("1:4", "2:4", "2:8", "1:8"; "dense" keeps all; "zero" none),
    with row n // 2 all zero and a few kept weights exactly 0 (a kept place may hold a zero value)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if pattern == "zero":
        return torch.zeros(n, k)
    if pattern != "dense":
        w[select_nm(torch.rand(n, k, generator=g), *parse_pattern(pattern))] = 0
    if empty_row:
        w[n // 2] = 0
    return w


def _packed(w: torch.Tensor, values: str = "float16", device: str = "cpu") -> tuple[PackedBitmask, object]:
    ct = compress_tensor(w, values)
    ct = ct.to(device) if device != "cpu" else ct
    return PackedBitmask.from_compressed(ct), ct


def test_slots_are_read_off_the_mask():
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "1:4"))[0]) == 1
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "1:8"))[0]) == 1
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "2:4"))[0]) == 2
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "2:8", seed=1))[0]) == 2
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "zero"))[0]) == 1
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "dense"))[0]) is None  # 4 of 4
    assert cuda_nmsp.slots(_packed(nm_weight(32, 260, "1:4"))[0]) is None  # K % 8: x's 16-byte staging
    assert cuda_nmsp.slots(_packed(nm_weight(32, 256, "1:4"), "int8")[0]) is None
    p, _ = _packed(nm_weight(32, 256, "3:4"))
    assert not cuda_nmsp.supports(p) and not p.supports(SpmmConfig(kernel="nmsp", block_k=128, block_b=16))
    with pytest.raises(ValueError, match="nmsp"):
        cuda_nmsp.layout(p)


def _decode(rec: torch.Tensor, s: int, n: int, k: int) -> torch.Tensor:
    """The dense weight from the records by nm_mma.cu's header alone (not by the builder's code)."""
    nb, nch = -(-n // 16), -(-k // 128)
    per = 256 * s + 32 * s
    rec = rec.view(nb, nch, per)
    out = torch.zeros(nb * 16, nch * 128, dtype=torch.float64)
    for b in range(nb):
        for c in range(nch):
            vals = rec[b, c, :256 * s].contiguous().view(torch.float16).double()
            idx = rec[b, c, 256 * s:].contiguous().view(torch.int32).tolist()
            idx = [i & 0xFFFFFFFF for i in idx]
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for step in range(4):
                    for r in range(4):
                        row, grp = 16 * b + g + 8 * (r & 1), 32 * c + 8 * step + t + 4 * (r >> 1)
                        h, q = r & 1, r >> 1
                        if s == 1:
                            v = vals[((step // 2) * 32 + lane) * 8 + (step % 2) * 4 + r]
                            word = idx[4 * g + step]
                            pos = ((word >> (8 * q + 4 * h + t)) & 1) * 2 + ((word >> (16 + 4 * t + h + 2 * q)) & 1)
                            out[row, 4 * grp + pos] += v
                        else:
                            pair = vals[(step * 32 + lane) * 8 + 2 * r:(step * 32 + lane) * 8 + 2 * r + 2]
                            nib = (idx[4 * (2 * g + q) + step] >> (16 * h + 4 * t)) & 0xF
                            i0, i1 = nib & 3, nib >> 2
                            assert i0 < i1  # ordered metadata
                            out[row, 4 * grp + i0] += pair[0]
                            out[row, 4 * grp + i1] += pair[1]
    return out[:n, :k]


@pytest.mark.parametrize("pattern,n,k", [("1:4", 37, 264), ("2:4", 21, 392), ("2:8", 16, 128), ("1:8", 40, 136),
                                         ("zero", 17, 136)])
def test_layout_holds_every_weight_at_its_place(pattern, n, k):
    w = nm_weight(n, k, pattern, seed=n)
    p, ct = _packed(w)
    rec = cuda_nmsp.layout(p)
    s = cuda_nmsp.slots(p)
    assert rec.dtype == torch.int32 and rec.numel() == -(-n // 16) * -(-k // 128) * 288 * s
    torch.testing.assert_close(_decode(rec, s, n, k), decompress(ct, torch.float64), rtol=0, atol=0)
    assert p.nbytes(kernel="nmsp") == rec.numel() * 4
    # 1:4 at 0.5625 bytes per weight (3.56x fewer than fp16 dense) plus the padding to whole bands and chunks
    if pattern == "1:4":
        assert rec.numel() * 4 == -(-n // 16) * 16 * -(-k // 128) * 128 * 9 // 16


@host
@pytest.mark.parametrize("pattern,values,n,k,bsz,bp", [
    ("1:4", "float16", 37, 264, 5, 8), ("2:4", "float16", 21, 392, 16, 16), ("1:4", "bfloat16", 48, 520, 11, 16),
    ("2:8", "bfloat16", 19, 136, 33, 64), ("1:8", "float16", 16, 256, 1, 8), ("zero", "float16", 9, 128, 3, 8),
    ("2:4", "float16", 33, 1032, 20, 32)])
def test_host_build_matches_dense(pattern, values, n, k, bsz, bp):
    act = getattr(torch, values)
    p, ct = _packed(nm_weight(n, k, pattern, seed=k), values)
    x = torch.randn(bsz, k).to(act)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    y = cuda_nmsp.spmm_host(x, p, bp).double()
    if pattern == "zero":
        assert torch.all(y == 0)
    else:
        assert ((y - ref).norm() / ref.norm()).item() < 1e-5  # float32 sums of exact products
        assert torch.all(y[:, n // 2] == 0)  # the empty row


def test_inputs_and_configs_are_checked():
    p, _ = _packed(nm_weight(32, 256, "1:4"))
    with pytest.raises(ValueError, match="nmsp"):
        cuda_nmsp.spmm_host(torch.randn(9, 256).half(), p, 8)  # more rows than the padded batch
    with pytest.raises(ValueError, match="nmsp"):
        cuda_nmsp.spmm_host(torch.randn(2, 256).bfloat16(), p, 8)  # x's dtype is not the values'
    with pytest.raises(ValueError, match="nmsp"):
        cuda_nmsp.spmm_host(torch.randn(2, 128).half(), p, 8)
    cfg = SpmmConfig(kernel="nmsp", block_k=128, block_b=16, num_warps=8, split_k=4)
    assert cfg.key() == "nmsp-w8b16s4d2" and p.supports(cfg)
    assert p.aux_keys(cfg) == {("nmsp",), ("nmsp-slots",)}
    assert p.aux_keys(SpmmConfig(kernel="nmsp", block_k=128, block_b=16, split_k=16)) == {
        ("nmsp",), ("nmsp-slots",), ("bmma-ws", 16)}
    for bad in (dict(block_b=4), dict(num_warps=2), dict(block_k=256), dict(split_k=0), dict(split_k=9),
                dict(persist=1), dict(num_stages=4)):
        with pytest.raises(ValueError, match="nmsp"):
            SpmmConfig(**{**dict(kernel="nmsp", block_k=128, block_b=16, num_warps=4), **bad})


def test_candidates(monkeypatch):
    monkeypatch.setattr(cuda_nmsp, "available", lambda: True)
    cfgs = gpu_backend.nmsp_configs(16)
    assert cfgs and all(c.kernel == "nmsp" and c.block_b == 16 for c in cfgs)
    assert len({c.key() for c in cfgs}) == len(cfgs)
    assert all(c.block_b == 8 for c in gpu_backend.nmsp_configs(2))
    monkeypatch.setattr(cuda_nmsp, "available", lambda: False)
    assert gpu_backend.nmsp_configs(16) == []


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("pattern,values,n,k,bsz,bp", [
    ("1:4", "float16", 37, 264, 5, 8), ("2:4", "float16", 200, 1032, 16, 16), ("1:4", "bfloat16", 130, 520, 20, 32),
    ("2:8", "float16", 9, 264, 33, 64), ("zero", "float16", 18, 136, 3, 8), ("1:8", "bfloat16", 21, 1000, 11, 16),
    # long rows: many chunks per split (8200 columns: 65 with one split)
    ("1:4", "float16", 48, 4104, 16, 16), ("2:4", "bfloat16", 40, 8200, 9, 16), ("1:4", "float16", 4096, 4096, 1, 8)])
def test_gpu_build_matches_host_and_dense(pattern, values, n, k, bsz, bp):
    if not cuda_nmsp.available():
        pytest.skip(f"nmsp unavailable: {cuda_nmsp.build_error()}")
    act = getattr(torch, values)
    p, ct = _packed(nm_weight(n, k, pattern, seed=n), values, "cuda")
    x = torch.randn(bsz, k, device="cuda").to(act)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    host_y = cuda_nmsp.spmm_host(x.cpu(), p, bp) if has_cxx and n * k < 2**20 else None
    tol = 1e-2 if act == torch.bfloat16 else 2e-3
    for w, s, d in [(w, s, d) for w in cuda_nmsp.WARPS for s in (1, 2, 3, 5, 8, 16, 32) for d in cuda_nmsp.STAGES]:
        cfg = SpmmConfig(kernel="nmsp", block_k=128, block_b=bp, num_warps=w, split_k=s, num_stages=d)
        for _ in range(2):  # the second call reuses the split-K workspace and counters (16 and 32 splits)
            out = torch.full((bsz, n), float("nan"), device="cuda", dtype=act)
            y = spmm(x, p, cfg, out=out).double()
            if pattern == "zero":
                assert torch.all(y == 0)
            else:
                assert ((y - ref).norm() / ref.norm()).item() < tol, (cfg.key(),)
            if host_y is not None:
                torch.testing.assert_close(y.float().cpu(), host_y.to(act).float(), rtol=tol, atol=tol)
