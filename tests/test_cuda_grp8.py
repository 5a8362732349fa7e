"""The CUDA C++ grp8 kernel's arithmetic, checked on the CPU through its host build (the same source compiled by g++
as C++: index math, int8 / fp16 / bf16 decoders and lane sums are shared with the GPU build), and its config and
dispatch rules. The GPU build itself is checked at full shape by benchmarks/gpu_kernels.py before timing."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor, decompress
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_grp8
from tiny_models import sparse_weight

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                reason="the host build of grp8_gemv.cu needs a C++ compiler")


@pytest.mark.parametrize("values,act,sparsity,n,k,group", [
    ("float16", torch.float16, 0.5, 37, 300, None), ("float16", torch.float16, 0.0, 9, 700, None),
    ("float16", torch.float16, 0.9, 21, 1000, None), ("bfloat16", torch.bfloat16, 0.75, 17, 513, None),
    ("int8", torch.float16, 0.75, 23, 640, None), ("int8", torch.bfloat16, 0.5, 11, 333, None),
    ("int8", torch.float16, 0.5, 13, 700, 64), ("int4", torch.float16, 0.75, 19, 650, None),
    ("int4", torch.bfloat16, 0.0, 7, 300, 32), ("int4", torch.float16, 0.5, 15, 517, 517)])
def test_host_build_matches_the_dense_reference(values, act, sparsity, n, k, group):
    """Every values form, per-row and per-group scales (group-scaled layouts cut groups at scale boundaries),
    int4 codes packed four to a 16-bit word."""
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=n), values, group_size=group)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, k).to(act)
    y = cuda_grp8.gemv_host(x, p)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5  # float32 sums of exact products
    assert torch.all(y[:, n // 2] == 0)
    # quads loaded 2, 4 or 8 per step (tail steps load only what exists): the same sums in the same order
    for u in (2, 4, 8):
        assert torch.equal(cuda_grp8.gemv_host(x, p, unroll=u), y)


@pytest.mark.parametrize("values,act,batch,bsz,sparsity", [
    ("float16", torch.float16, 2, 2, 0.5), ("float16", torch.float16, 4, 3, 0.75),
    ("bfloat16", torch.bfloat16, 8, 5, 0.5), ("int8", torch.float16, 8, 8, 0.9),
    ("int8", torch.bfloat16, 16, 11, 0.0), ("float16", torch.float16, 16, 16, 0.75),
    ("int4", torch.float16, 4, 4, 0.5)])
def test_batched_host_build_matches_the_dense_reference(values, act, batch, bsz, sparsity):
    """The batch 2-16 kernel's arithmetic (x transposed, B activations per nonzero, padded rows ignored)."""
    n, k = 29, 430
    ct = compress_tensor(sparse_weight(n, k, sparsity, seed=batch), values)
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(bsz, k).to(act)
    y = cuda_grp8.gemv_host(x, p, batch=batch)
    ref = x.double() @ decompress(ct, torch.float32).double().T
    assert y.shape == (bsz, n)
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    # row 0 against the batch-1 kernel (which sums in two accumulators: equal up to float32 reassociation)
    torch.testing.assert_close(y[:1], cuda_grp8.gemv_host(x[:1], p), rtol=1e-5, atol=1e-4)
    assert torch.all(y[:, n // 2] == 0)


def test_host_build_decodes_every_int8_and_special_fp16_value():
    """All 256 int8 codes (the magic-number conversion), each alone against a one-hot x, and fp16 subnormals,
    signed zeros and the largest finite value through x."""
    k = 256
    w = torch.zeros(2, k)
    w[0] = torch.arange(-128, 128, dtype=torch.float32) / 127  # codes -127..127 after per-row scaling
    w[0, 128] = 1e-3  # keep position 128 in the mask (code 0)
    w[1, ::2] = 1.0
    ct = compress_tensor(w, "int8")
    p = PackedBitmask.from_compressed(ct)
    dense = decompress(ct, torch.float32)
    for j in range(0, k, 5):
        x = torch.zeros(1, k, dtype=torch.float16)
        x[0, j] = 1.0
        assert cuda_grp8.gemv_host(x, p)[0, 0].item() == dense[0, j].item()
    x = torch.zeros(1, k, dtype=torch.float16)
    x[0, ::2] = torch.tensor([6e-8, -6e-8, 1e-5, -0.0, 65504.0, 1.0, -2.5, 3e-6] * 16, dtype=torch.float16)
    ref = x.double() @ dense.double().T
    torch.testing.assert_close(cuda_grp8.gemv_host(x, p)[0, 1].double(), ref[0, 1], rtol=1e-6, atol=0)


def test_columns_up_to_the_32768_limit_and_refusals():
    w = torch.zeros(3, 32768)
    w[0, [0, 255, 256, 16384, 32511, 32512, 32767]] = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0])
    w[2, -40:] = 1.0
    ct = compress_tensor(w, "float16")
    p = PackedBitmask.from_compressed(ct)
    x = torch.randn(1, 32768).half()
    ref = x.double() @ decompress(ct, torch.float32).double().T
    torch.testing.assert_close(cuda_grp8.gemv_host(x, p).double(), ref, rtol=1e-5, atol=1e-5)
    assert p.supports(SpmmConfig(kernel="grp8cu", vec=4, persist=1))
    wide = PackedBitmask.from_compressed(compress_tensor(torch.eye(2, 32769), "float16"))
    assert not wide.supports(SpmmConfig(kernel="grp8cu", vec=4, persist=1))
    with pytest.raises(ValueError, match="K <= 32768"):
        cuda_grp8.gemv_host(torch.randn(1, 32769).half(), wide)
    with pytest.raises(ValueError, match="1 <= B <= 1"):
        cuda_grp8.gemv_host(torch.randn(2, 32768).half(), p)
    with pytest.raises(ValueError, match="2 \\* K \\* batch"):  # 32768 x 8 activations overflow shared memory
        cuda_grp8.gemv_host(torch.randn(2, 32768).half(), p, batch=8)
    with pytest.raises(ValueError, match="values fp16"):
        cuda_grp8.gemv_host(x.bfloat16(), p)  # fp16 values with bf16 activations


def test_config_rules_and_keys():
    cfg = SpmmConfig(kernel="grp8cu", vec=4, num_warps=8, persist=2)
    assert cfg.key() == "grp8cu-w8p2"
    assert SpmmConfig(kernel="grp8cu", vec=4, num_warps=8, persist=2, smem=False).key() == "grp8cu-w8p2-l1"
    assert SpmmConfig(kernel="grp8cu", vec=4, num_warps=8, persist=1, block_b=4).key() == "grp8cu-w8p1b4"
    assert SpmmConfig(kernel="grp8cu", vec=4, num_warps=8, persist=2, smem=False, unroll=4).key() == "grp8cu-w8p2-l1-u4"
    for bad in (dict(vec=1, persist=1), dict(vec=4, persist=0), dict(vec=4, persist=1, block_b=3),
                dict(vec=4, persist=1, block_b=4, smem=False), dict(vec=4, persist=1, num_warps=33),
                dict(vec=4, persist=1, unroll=3), dict(vec=4, persist=1, block_b=2, unroll=2)):
        with pytest.raises(ValueError, match="grp8cu"):
            SpmmConfig(kernel="grp8cu", **bad)
    for bad in (dict(kernel="grp8", smem=False), dict(kernel="grp8cu", vec=4, persist=1, smem=0)):
        with pytest.raises(ValueError, match="smem"):
            SpmmConfig(**bad)
    with pytest.raises(ValueError, match="unroll"):
        SpmmConfig(kernel="grp8", unroll=2)
    p = PackedBitmask.from_compressed(compress_tensor(sparse_weight(8, 128, 0.5), "float16"))
    assert p.aux_keys(cfg) == {("grp8cu",)}
    assert p.nbytes(kernel="grp8cu", vec=4) == p.nbytes(kernel="grp8", vec=4)  # fp16: the same arrays' sizes
    cuda_grp8.aux(p)
    p.drop_aux([SpmmConfig(kernel="grp8", block_n=1, block_k=128, vec=4)])
    assert ("grp8cu",) not in p._cptr and ("grp8", 4) in p._cptr
    # int4: half the value bytes of int8 in the kernel's own arrays
    w = sparse_weight(8, 256, 0.5)
    p4 = PackedBitmask.from_compressed(compress_tensor(w, "int4", group_size=256))
    p8 = PackedBitmask.from_compressed(compress_tensor(w, "int8"))
    v4, v8 = cuda_grp8.aux(p4)[0], cuda_grp8.aux(p8)[0]
    assert v4.numel() * v4.element_size() * 2 == v8.numel() * v8.element_size()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_unavailable_without_a_gpu_says_why():
    assert not cuda_grp8.available()
    assert "no CUDA device" in cuda_grp8.build_error()
    with pytest.raises(RuntimeError, match="unavailable"):
        cuda_grp8.gemv(torch.randn(1, 128).half(),
                       PackedBitmask.from_compressed(compress_tensor(sparse_weight(4, 128, 0.5), "float16")),
                       SpmmConfig(kernel="grp8cu", vec=4, persist=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,act,batch,smem", [
    ("float16", torch.float16, 1, True), ("int8", torch.float16, 1, False), ("bfloat16", torch.bfloat16, 1, True),
    ("float16", torch.float16, 4, True), ("int8", torch.bfloat16, 16, True), ("int4", torch.float16, 1, True),
    ("int4", torch.float16, 8, True)])
@pytest.mark.parametrize("unroll", [1, 4, 8])
def test_gpu_build_matches_the_host_build(values, act, batch, smem, unroll):
    """On a GPU machine: the nvcc build against its own host emulation and the dense reference (odd shapes, an
    all-zero row, K past the 48 KB default shared-memory window)."""
    if not cuda_grp8.available():
        pytest.skip(f"grp8cu unavailable: {cuda_grp8.build_error()}")
    for n, k in ((37, 300), (19, 30000 if batch == 1 else 3000)):
        ct = compress_tensor(sparse_weight(n, k, 0.75, seed=k), values).to("cuda")
        p = PackedBitmask.from_compressed(ct)
        x = torch.randn(min(batch, 3) if batch > 1 else 1, k, device="cuda").to(act)
        if batch > 1 and unroll > 1:
            pytest.skip("unroll is the batch-1 kernel's")
        cfg = SpmmConfig(kernel="grp8cu", vec=4, num_warps=4, persist=2, block_b=batch, smem=smem, unroll=unroll)
        y = cuda_grp8.gemv(x, p, cfg)
        ref = x.double() @ decompress(ct, torch.float32).double().T
        tol = 1e-2 if act == torch.bfloat16 else 2e-3
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol
        torch.testing.assert_close(y.float().cpu(), cuda_grp8.gemv_host(x.cpu(), p, batch=batch).to(act).float(),
                                   rtol=tol, atol=tol)


def test_clone_copies_the_cuda_arrays_including_absent_ones():
    """Benchmarks rotate clones past the L2: a clone must copy grp8cu's arrays, some of which are None (no
    per-group scales for fp16), and compute the same product from fresh memory."""
    ct = compress_tensor(sparse_weight(13, 300, 0.75, seed=3), "float16")
    p = PackedBitmask.from_compressed(ct)
    arrays = cuda_grp8.aux(p)
    assert any(t is None for t in arrays)
    q = p.clone()
    for a, b in zip(arrays, cuda_grp8.aux(q)):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    x = torch.randn(1, 300).half()
    torch.testing.assert_close(cuda_grp8.gemv_host(x, q), cuda_grp8.gemv_host(x, p), rtol=0, atol=0)


def test_group_scale_division_is_exact_for_every_column():
    """The kernels find a nonzero's scale group as umulhi(2 * column, magic): exact for every column < 32768 and
    any group size, not only powers of two."""
    c2 = torch.arange(0, 65536, 2, dtype=torch.int64)
    for g in (1, 3, 7, 64, 100, 128, 517, 1000, 4096, 32768):
        magic = cuda_grp8.group_magic(g)
        assert 0 < magic < 2**32
        assert torch.equal((c2 * magic) >> 32, c2 // (2 * g)), g
