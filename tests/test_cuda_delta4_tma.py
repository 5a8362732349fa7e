"""The streamed delta4 kernel (delta4_tma.cu, "d4tma"): its block splits, tile walk and row sums, checked on the CPU
through the host build of the same source (the bulk copies become memcpy through the same ring offsets); the GPU
build against that emulation and the dense reference on a GPU machine (`-k gpu_build`)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_delta4, cuda_delta4_tma
from tiny_models import sparse_weight

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                reason="the host build of delta4_tma.cu needs a C++ compiler")


def _ref(x, ct):
    return x.double() @ decompress(ct, torch.float64).T


@pytest.mark.parametrize("values,act,sparsity,n,k,cap,stages,parts", [
    ("float16", torch.float16, 0.75, 37, 3000, 32, 2, 5),   # rows of ~50 chunks: each spans stages
    ("bfloat16", torch.bfloat16, 0.5, 17, 513, 64, 3, 3),
    ("int8", torch.float16, 0.75, 23, 640, 32, 2, 7),       # per-row scales
    ("int8", torch.bfloat16, 0.6, 11, 333, 64, 1, 2),       # a single-stage ring
    ("float16", torch.float16, 0.9, 50, 1000, 32, 4, 50),   # one row per warp: spans overlap the neighbours'
    ("float16", torch.float16, 0.0, 9, 700, 32, 2, 1),      # dense rows, one warp
    ("float16", torch.float16, 1.0, 6, 200, 32, 2, 2),      # no nonzeros at all
    ("float16", torch.float16, 0.98, 40, 2000, 64, 3, 6),   # a stage holds many whole rows
])
def test_host_build_matches_the_dense_reference(values, act, sparsity, n, k, cap, stages, parts):
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n + k), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).to(act)
    y = cuda_delta4_tma.gemv_host(x, p, cap=cap, stages=stages, parts=parts)
    ref = _ref(x, ct)
    assert y.shape == (1, n)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


def test_empty_rows_block_edges_and_one_long_row():
    """All-zero rows at the start, the middle and the end; a row longer than many stages; more warps than rows."""
    k = 4096
    w = torch.zeros(12, k)
    w[3] = torch.randn(k)                 # 256 chunks: 8 stages of 32
    w[5, ::7] = 1.0
    w[6, 4000:] = torch.randn(96)
    w[9, [0, 17, 4095]] = torch.tensor([2.0, -1.0, 3.0])
    ct = compress_tensor(w, "float16")
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).half()
    for parts in (1, 3, 12, 40):
        split = cuda_delta4_tma.splits(p, max(1, min(parts, 12)))
        assert int(split[0]) == 0 and int(split[-1]) == 12 and bool((split[1:] >= split[:-1]).all())
        for cap, stages in ((32, 3), (64, 2)):
            y = cuda_delta4_tma.gemv_host(x, p, cap=cap, stages=stages, parts=parts)
            torch.testing.assert_close(y.double(), _ref(x, ct), rtol=1e-5, atol=1e-3)


def test_chunks_are_padded_to_whole_copies_and_blocks_balance():
    """The layout's chunk count is a multiple of 8 (16-byte bulk copies), padding zeros at column 0 in the last
    row; the splits give each warp about the same number of chunks."""
    w = sparse_weight(300, 1024, 0.75, seed=1)
    p = PackedBitmask.from_compressed(compress_tensor(w, "float16"))
    vals, steps, base, cptr = cuda_delta4.layout(p)
    assert int(cptr[-1]) % cuda_delta4.ALIGN == 0 and steps.shape[0] == int(cptr[-1]) == base.numel()
    split = cuda_delta4_tma.splits(p, 10)
    per_warp = cptr[split[1:].long()] - cptr[split[:-1].long()]
    longest_row = int((cptr[1:] - cptr[:-1]).max())
    assert int(per_warp.max() - per_warp.min()) <= 2 * longest_row


def test_shared_memory_formula_matches_the_kernel_and_limits():
    for values, stages, cap, warps, k in ((torch.float16, 3, 32, 16, 4096), (torch.int8, 2, 64, 5, 333),
                                          (torch.bfloat16, 6, 32, 32, 14336)):
        assert cuda_delta4_tma.smem_bytes(values, stages, cap, warps, k) == \
            cuda_delta4_tma.host_smem(values, stages, cap, warps, k)
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(64, 14336, 0.75), "float16"))
    assert p.supports(SpmmConfig(kernel="d4tma", num_warps=16, persist=1, block_k=32, num_stages=6))
    # 32 warps x 4 stages x 64 chunks of 42 bytes + 57 KB of x: past a block's shared memory
    assert not p.supports(SpmmConfig(kernel="d4tma", num_warps=32, persist=1, block_k=64, num_stages=4))
    int4 = PackedBitmask.from_compressed(compress_tensor(sparse_weight(8, 256, 0.5), "int4"))
    assert not int4.supports(SpmmConfig(kernel="d4tma", num_warps=4, persist=1, block_k=64, num_stages=2))


def test_config_rules_keys_and_errors():
    cfg = SpmmConfig(kernel="d4tma", num_warps=16, persist=1, block_k=32, num_stages=3)
    assert cfg.key() == "d4tma-w16p1c32s3"
    for bad in (dict(block_k=48), dict(block_k=128), dict(num_stages=0), dict(num_stages=13), dict(persist=3),
                dict(block_b=2), dict(unroll=2), dict(smem=False), dict(num_warps=33), dict(split_k=2),
                dict(slots=16)):
        with pytest.raises(ValueError, match="d4tma|smem"):
            SpmmConfig(**{**dict(kernel="d4tma", num_warps=4, persist=1, block_k=32, num_stages=2), **bad})
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(8, 256, 0.5), "float16"))
    with pytest.raises(ValueError, match="batch 1"):
        cuda_delta4_tma.gemv_host(torch.randn(2, 256).half(), p)
    with pytest.raises(ValueError, match="values fp16"):
        cuda_delta4_tma.gemv_host(torch.randn(1, 256).bfloat16(), p)
    with pytest.raises(ValueError, match="chunks per stage"):
        cuda_delta4_tma.gemv_host(torch.randn(1, 256).half(), p, cap=128)
    assert p.nbytes(kernel="d4tma") == cuda_delta4.nbytes(p)


def test_autotune_offers_it_only_when_asked(monkeypatch):
    from sparselm.runtime import gpu_backend

    monkeypatch.setattr(cuda_delta4_tma, "available", lambda: True)
    monkeypatch.delenv("SPARSELM_D4CU", raising=False)
    assert gpu_backend.d4tma_configs() == []
    monkeypatch.setenv("SPARSELM_D4CU", "1")
    cfgs = gpu_backend.d4tma_configs()
    assert cfgs and all(c.kernel == "d4tma" for c in cfgs) and len({c.key() for c in cfgs}) == len(cfgs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_unavailable_without_a_gpu_says_why():
    assert not cuda_delta4_tma.available()
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(4, 128, 0.5), "float16"))
    with pytest.raises(RuntimeError, match="sm_90"):
        cuda_delta4_tma.gemv(torch.randn(1, 128).half(), p,
                             SpmmConfig(kernel="d4tma", num_warps=4, persist=1, block_k=64, num_stages=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,act,warps,persist,cap,stages", [
    ("float16", torch.float16, 4, 1, 32, 2), ("float16", torch.float16, 16, 1, 32, 6),
    ("bfloat16", torch.bfloat16, 8, 2, 64, 4), ("int8", torch.float16, 32, 1, 32, 3),
    ("int8", torch.bfloat16, 16, 2, 64, 3), ("float16", torch.float16, 32, 1, 64, 1)])
def test_gpu_build_matches_the_host_build(values, act, warps, persist, cap, stages):
    """On an sm_90 GPU: the bulk-copy build against its host emulation and the dense reference (odd shapes, rows
    spanning stages, more warps than rows, K past the 48 KB default shared-memory window, 90% sparsity)."""
    if not cuda_delta4_tma.available():
        pytest.skip(f"d4tma unavailable: {cuda_delta4_tma.build_error() or 'needs sm_90+'}")
    cfg = SpmmConfig(kernel="d4tma", num_warps=warps, persist=persist, block_k=cap, num_stages=stages)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for n, k, s in ((37, 300, 0.75), (19, 11008, 0.75), (300, 4096, 0.9), (1000, 512, 0.5)):
        ct = compress_tensor(sparse_weight(n, k, s, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        if not p.supports(cfg):
            continue
        x = torch.randn(1, k, device="cuda").to(act)
        y = cuda_delta4_tma.gemv(x, p, cfg)
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol
        host = cuda_delta4_tma.gemv_host(x.cpu(), p, cap=cap, stages=stages, parts=min(persist * sms * warps, n))
        torch.testing.assert_close(y.float().cpu(), host.to(act).float(), rtol=tol, atol=tol)


def test_clone_copies_the_splits():
    """Benchmarks rotate clones past the L2: the split table comes along, in fresh memory."""
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(30, 512, 0.75, seed=2), "float16"))
    split = cuda_delta4_tma.splits(p, 4)
    q = p.clone()
    split2 = cuda_delta4_tma.splits(q, 4)
    assert torch.equal(split, split2) and split.data_ptr() != split2.data_ptr()
    x = torch.randn(1, 512).half()
    torch.testing.assert_close(cuda_delta4_tma.gemv_host(x, q, parts=4), cuda_delta4_tma.gemv_host(x, p, parts=4),
                               rtol=0, atol=0)
