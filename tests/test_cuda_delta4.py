"""The delta4 layout (4-bit column steps, zero stepping stones over long gaps) and its CUDA C++ kernel's arithmetic,
checked on the CPU: the layout decodes back to the matrix exactly, and the host build of delta4_gemv.cu (the same
source compiled by g++: step decoding, value decoders, lane sums) matches a dense reference. The GPU build is
checked at full shape by benchmarks/gpu_kernels.py before timing."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_delta4
from tiny_models import sparse_weight

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                reason="the host build of delta4_gemv.cu needs a C++ compiler")


def _decode(p) -> torch.Tensor:
    """The layout read back as a dense float64 matrix of codes: base + running sum of the nibbles per chunk."""
    vals, steps, base, cptr = cuda_delta4.layout(p)
    n, k = p.shape
    word = (steps[:, 0].to(torch.int64) & 0xFFFFFFFF) | (steps[:, 1].to(torch.int64) << 32)
    nib = (word[:, None] >> (4 * torch.arange(cuda_delta4.CHUNK))) & 15
    nib[:, 0] = base.to(torch.int64) & 0xFFFF
    cols = torch.cumsum(nib, 1)
    rows = torch.repeat_interleave(torch.arange(n), (cptr[1:] - cptr[:-1]).long())
    dense = torch.zeros(n, k, dtype=torch.float64)
    if vals.element_size() == 2:  # two planes: every chunk's values 0-7, then 8-15
        vals = vals.view(2, -1, cuda_delta4.CHUNK // 2).permute(1, 0, 2)
    dense.index_put_((rows[:, None].expand_as(cols), cols), vals.reshape(-1, cuda_delta4.CHUNK).double(),
                     accumulate=True)
    return dense


@pytest.mark.parametrize("values,sparsity,n,k", [
    ("float16", 0.75, 37, 300), ("float16", 0.0, 9, 700), ("float16", 0.9, 21, 1000),
    ("bfloat16", 0.5, 17, 513), ("int8", 0.75, 23, 640), ("int8", 0.98, 5, 2000)])
def test_layout_decodes_to_the_matrix(values, sparsity, n, k):
    """Every nonzero at its column, stones and padding contribute zeros, steps stay within a nibble."""
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=k), values)
    p = PackedBitmask.from_compressed(ct)
    dense = _decode(p)
    codes = decompress(ct, torch.float64)
    if ct.scales is not None:  # the layout holds unscaled codes
        scale = ct.scales.double().reshape(n, -1)
        codes = torch.where(scale == 0, 0.0, codes / scale)  # an all-zero row has scale 0
    torch.testing.assert_close(dense, codes, rtol=1e-6, atol=1e-6)
    vals, steps, base, cptr = cuda_delta4.layout(p)
    assert vals.numel() == int(cptr[-1]) * cuda_delta4.CHUNK and int(cptr[n // 2 + 1] - cptr[n // 2]) == 0


@pytest.mark.parametrize("values,act,sparsity,n,k", [
    ("float16", torch.float16, 0.5, 37, 300), ("float16", torch.float16, 0.0, 9, 700),
    ("float16", torch.float16, 0.9, 21, 1000), ("bfloat16", torch.bfloat16, 0.75, 17, 513),
    ("int8", torch.float16, 0.75, 23, 640), ("int8", torch.bfloat16, 0.5, 11, 333),
    ("float16", torch.float16, 1.0, 6, 200)])
def test_host_build_matches_the_dense_reference(values, act, sparsity, n, k):
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).to(act)
    y = cuda_delta4.gemv_host(x, p)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    if sparsity == 1.0:
        assert torch.all(y == 0)
    else:
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5  # float32 sums of exact products
    assert torch.all(y[:, n // 2] == 0)
    # two chunks per load step, and x through L1 (2-byte offsets): the same sums in the same order
    assert torch.equal(cuda_delta4.gemv_host(x, p, unroll=2), y)
    assert torch.equal(cuda_delta4.gemv_host(x, p, smem=False), y)
    for lanes, unroll in ((16, 1), (8, 2)):  # fewer lanes per row: other partial sums, the same products
        yl = cuda_delta4.gemv_host(x, p, unroll=unroll, lanes=lanes)
        torch.testing.assert_close(yl, y, rtol=1e-5, atol=1e-5)
        assert torch.all(yl[:, n // 2] == 0)


@pytest.mark.parametrize("values,act,batch,bsz,sparsity,unroll", [
    ("float16", torch.float16, 2, 2, 0.5, 1), ("float16", torch.float16, 4, 3, 0.75, 2),
    ("bfloat16", torch.bfloat16, 8, 5, 0.5, 1), ("int8", torch.float16, 8, 8, 0.9, 2),
    ("int8", torch.bfloat16, 4, 4, 0.0, 1), ("float16", torch.float16, 8, 1, 0.75, 2)])
def test_batched_host_build_matches_the_dense_reference(values, act, batch, bsz, sparsity, unroll):
    """The batch 2-8 kernel's arithmetic (x transposed as float32, B sums per lane, padded rows ignored)."""
    n, k = 29, 430
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=batch), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k).to(act)
    y = cuda_delta4.gemv_host(x, p, unroll=unroll, batch=batch)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert y.shape == (bsz, n)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    torch.testing.assert_close(y[:1], cuda_delta4.gemv_host(x[:1], p), rtol=1e-5, atol=1e-4)  # row 0 vs batch 1
    assert torch.all(y[:, n // 2] == 0)
    with pytest.raises(ValueError, match="smem"):
        cuda_delta4.gemv_host(x, p, batch=batch, smem=False)  # the batched kernel always stages x
    with pytest.raises(ValueError, match="lanes per row"):
        cuda_delta4.gemv_host(x, p, batch=batch, lanes=8)  # fewer lanes per row: batch 1 only


def test_long_gaps_the_last_column_and_the_65536_limit():
    """Gaps of 16, 30, 31 and thousands of columns (stones), a nonzero in the last column, an all-zero row."""
    k = 65536
    w = torch.zeros(3, k)
    w[0, [0, 16, 46, 77, 5000, 40000, k - 1]] = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0])
    w[2, -40:] = 1.0
    ct = compress_tensor(w, "float16")
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).half()
    ref = x.double() @ decompress(ct, torch.float32).double().T
    # 65536 float32 activations exceed a block's shared memory: served through L1 only
    assert not p.supports(SpmmConfig(kernel="d4cu", persist=1)) and p.supports(SpmmConfig(kernel="d4cu", persist=1,
                                                                                          smem=False))
    with pytest.raises(ValueError, match="x is staged"):
        cuda_delta4.gemv_host(x, p)
    torch.testing.assert_close(cuda_delta4.gemv_host(x, p, unroll=2, smem=False).double(), ref, rtol=1e-5, atol=1e-5)
    half = PackedBitmask.from_compressed(compress_tensor(w[:, : k // 2], "float16"))  # 32768 columns: staged
    torch.testing.assert_close(cuda_delta4.gemv_host(x[:, : k // 2], half).double(),
                               x[:, : k // 2].double() @ w[:, : k // 2].half().double().T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_decode(p), decompress(ct, torch.float64))
    wide = PackedBitmask.from_compressed(compress_tensor(torch.eye(2, k + 1), "float16"))
    assert not wide.supports(SpmmConfig(kernel="d4cu", persist=1))
    with pytest.raises(ValueError, match="K <= 65536"):
        cuda_delta4.gemv_host(torch.randn(1, k + 1).half(), wide, smem=False)
    with pytest.raises(ValueError, match="1 <= B <= 1"):
        cuda_delta4.gemv_host(torch.randn(2, k).half(), p, smem=False)
    with pytest.raises(ValueError, match="4 \\* K \\* batch"):  # 65536 x 8 float32 activations overflow shared memory
        cuda_delta4.gemv_host(torch.randn(2, k).half(), p, batch=8)
    with pytest.raises(ValueError, match="values fp16"):
        cuda_delta4.gemv_host(x.bfloat16(), p, smem=False)  # fp16 values with bf16 activations


def test_fewer_bytes_than_grp8_and_what_it_does_not_serve():
    """The point of the layout: ~2.7 bytes per fp16 nonzero at 75% (grp8cu: > 3), ~1.7 with int8 values."""
    w = sparse_weight(256, 4096, 0.75, seed=3)
    nnz = int((w != 0).sum())
    fp16 = PackedBitmask.from_compressed(compress_tensor(w, "float16"))
    int8 = PackedBitmask.from_compressed(compress_tensor(w, "int8"))
    assert cuda_delta4.nbytes(fp16) / nnz < 2.8 < 3.0 < fp16.nbytes(kernel="grp8cu") / nnz
    assert cuda_delta4.nbytes(int8) / nnz < 1.8
    assert fp16.nbytes(kernel="d4cu") == cuda_delta4.nbytes(fp16)
    assert not cuda_delta4.supports(PackedBitmask.from_compressed(compress_tensor(w, "int4")))
    assert not cuda_delta4.supports(PackedBitmask.from_compressed(compress_tensor(w, "int8", group_size=128)))


def test_two_resident_blocks_only_where_asked_and_built():
    """The 32-register build (two 1024-thread blocks per SM) serves the configs that ask for 2048 threads per SM,
    and only in the variant that has it (batch 1, x staged, 1 chunk per step, 32 lanes)."""
    cfg = lambda **kw: SpmmConfig(kernel="d4cu", **kw)  # noqa: E731
    assert cuda_delta4.min_blocks(cfg(num_warps=32, persist=2)) == 2
    assert cuda_delta4.min_blocks(cfg(num_warps=16, persist=4)) == 2
    for other in (cfg(num_warps=16, persist=3), cfg(num_warps=32, persist=1), cfg(num_warps=32, persist=2, unroll=2),
                  cfg(num_warps=32, persist=2, smem=False), cfg(num_warps=32, persist=2, slots=16),
                  cfg(num_warps=16, persist=2, block_b=2)):
        assert cuda_delta4.min_blocks(other) == 1


def test_config_rules_and_keys():
    assert SpmmConfig(kernel="d4cu", num_warps=8, persist=2).key() == "d4cu-w8p2"
    assert SpmmConfig(kernel="d4cu", num_warps=8, persist=2, smem=False, unroll=2).key() == "d4cu-w8p2-l1-u2"
    assert SpmmConfig(kernel="d4cu", num_warps=16, persist=1, block_b=4).key() == "d4cu-w16p1b4"
    assert SpmmConfig(kernel="d4cu", num_warps=16, persist=2, unroll=2, slots=8).key() == "d4cu-w16p2-u2-r4"
    for bad in (dict(persist=0), dict(persist=1, block_b=16), dict(persist=1, block_b=2, smem=False),
                dict(persist=1, num_warps=33), dict(persist=1, unroll=4), dict(persist=1, lean=True),
                dict(persist=1, split_k=2), dict(persist=1, slots=4), dict(persist=1, slots=16, block_b=2),
                dict(persist=1, slots=8, smem=False)):
        with pytest.raises(ValueError, match="d4cu"):
            SpmmConfig(kernel="d4cu", **bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_unavailable_without_a_gpu_says_why():
    assert not cuda_delta4.available()
    assert "no CUDA device" in cuda_delta4.build_error()
    with pytest.raises(RuntimeError, match="unavailable"):
        cuda_delta4.gemv(torch.randn(1, 128).half(),
                         PackedBitmask.from_compressed(compress_tensor(sparse_weight(4, 128, 0.5), "float16")),
                         SpmmConfig(kernel="d4cu", persist=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,act,smem,unroll,lanes,warps", [
    ("float16", torch.float16, True, 1, 32, 4), ("float16", torch.float16, False, 2, 32, 4),
    ("bfloat16", torch.bfloat16, True, 2, 32, 4), ("int8", torch.float16, True, 2, 32, 4),
    ("int8", torch.bfloat16, False, 1, 32, 4), ("float16", torch.float16, True, 1, 16, 4),
    ("float16", torch.float16, True, 2, 8, 4), ("int8", torch.float16, True, 1, 8, 4),
    ("float16", torch.float16, True, 1, 32, 32), ("bfloat16", torch.bfloat16, True, 1, 32, 32)])
def test_gpu_build_matches_the_host_build(values, act, smem, unroll, lanes, warps):
    """On a GPU machine: the nvcc build against its own host emulation and the dense reference (odd shapes, an
    all-zero row, K past the 48 KB default shared-memory window, 90% sparsity: many stepping stones; with 8 or 16
    lanes per row, row counts that leave a warp's last rows past N; 32 warps x 2 blocks: the 32-register build)."""
    if not cuda_delta4.available():
        pytest.skip(f"d4cu unavailable: {cuda_delta4.build_error()}")
    for n, k, s in ((37, 300, 0.75), (19, 30000, 0.75), (23, 4096, 0.9)):
        ct = compress_tensor(sparse_weight(n, k, s, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(1, k, device="cuda").to(act)
        y = cuda_delta4.gemv(x, p, SpmmConfig(kernel="d4cu", num_warps=warps, persist=2, smem=smem, unroll=unroll,
                                              slots=lanes))  # 32 warps x 2: the 32-register build
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol
        torch.testing.assert_close(y.float().cpu(), cuda_delta4.gemv_host(x.cpu(), p, smem=smem, lanes=lanes)
                                   .to(act).float(), rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,act,batch,bsz", [
    ("float16", torch.float16, 2, 2), ("float16", torch.float16, 4, 3), ("bfloat16", torch.bfloat16, 8, 8),
    ("int8", torch.float16, 8, 5), ("int8", torch.bfloat16, 4, 4)])
def test_gpu_build_batched_matches_the_host_build(values, act, batch, bsz):
    """On a GPU machine: batches 2-8 against the host emulation and the dense reference, K past 48 KB of x."""
    if not cuda_delta4.available():
        pytest.skip(f"d4cu unavailable: {cuda_delta4.build_error()}")
    for n, k in ((37, 300), (19, 4096 if batch == 8 else 11008)):
        ct = compress_tensor(sparse_weight(n, k, 0.75, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(bsz, k, device="cuda").to(act)
        y = cuda_delta4.gemv(x, p, SpmmConfig(kernel="d4cu", num_warps=8, persist=1, block_b=batch, unroll=2))
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol
        torch.testing.assert_close(y.float().cpu(), cuda_delta4.gemv_host(x.cpu(), p, unroll=2, batch=batch)
                                   .to(act).float(), rtol=tol, atol=tol)


def test_autotune_offers_it_only_when_asked(monkeypatch):
    """A default candidate at batch 1 (also with 16 and 8 lanes per row); at batches 2-8, slower than grp8cu in
    every timing so far, only with SPARSELM_D4CU=1."""
    from sparselm.runtime import gpu_backend

    monkeypatch.setattr(cuda_delta4, "available", lambda: True)
    monkeypatch.delenv("SPARSELM_D4CU", raising=False)
    assert gpu_backend.d4cu_configs(1) and gpu_backend.d4cu_configs(4) == []
    monkeypatch.setenv("SPARSELM_D4CU", "1")
    assert {c.block_b for c in gpu_backend.d4cu_configs(4)} == {4} and gpu_backend.d4cu_configs(16) == []
    assert any(c.kernel == "d4cu" and not c.smem for c in gpu_backend.d4cu_configs(1))
    assert {c.slots for c in gpu_backend.d4cu_configs(1)} == {32, 16, 8}
    assert {c.slots for c in gpu_backend.d4cu_configs(2)} == {32}
    assert all(c.smem for c in gpu_backend.d4cu_configs(1) if c.slots != 32)
    assert len({c.key() for c in gpu_backend.d4cu_configs(1)}) == len(gpu_backend.d4cu_configs(1))
    for b in cuda_delta4.BATCHES:  # every candidate launches: its registers fit one SM's 64K for its block size
        assert all(32 * c.num_warps * gpu_backend.D4CU_REGS[b, c.unroll] <= 65536 for c in gpu_backend.d4cu_configs(b))
    assert not any(c.num_warps == 32 and c.unroll == 2 for c in gpu_backend.d4cu_configs(8))
