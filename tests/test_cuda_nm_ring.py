"""The 1:4 pair-table kernel fed through a per-warp cp.async ring (nm_ring.cuh, nmcu configs with num_stages = the
ring's depth): its host twin walks each warp's stream of row steps through the same slots, lanes in lockstep, and
must give the register-round kernel's sums bit for bit; the GPU build against that twin on a GPU machine
(`-k gpu_build`)."""
import shutil

import pytest
import torch

from sparselm.compress import compress_tensor
from sparselm.kernels.gpu import PackedBitmask, SpmmConfig, cuda_nm
from sparselm.runtime.gpu_backend import nmcu_configs
from test_cuda_nm import nm_weight

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                reason="the host build of nm_gemv.cu needs a C++ compiler")


@pytest.mark.parametrize("values,n,k", [("float16", 37, 300), ("int8", 23, 4096), ("float16", 5, 11008),
                                        ("int8", 40, 1032)])
@pytest.mark.parametrize("depth", cuda_nm.RING_DEPTHS)
def test_ring_host_twin_equals_the_register_rounds(values, n, k, depth):
    """Rows of 1-11 steps, rings of 4-12 slots: a warp's stream crosses row ends inside the ring; grids of 1 warp
    (every row through one ring), 3 warps (rows r, r + 3, ...) and more warps than rows (some walk nothing)."""
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(n, k, 1, 4, seed=k + depth), values))
    x = torch.randn(1, k).half()
    ref = cuda_nm.gemv_host(x, p, pairs=True)
    for warps in (1, 3, n + 5):
        y = cuda_nm.gemv_host(x, p, pairs=True, depth=depth, warps=warps)
        assert torch.equal(y, ref), (warps, (y - ref).abs().max())
    assert y[0, n // 2].item() == 0.0  # the all-zero row


@pytest.mark.parametrize("values", ["float16", "int8"])
def test_ring_host_twin_glu_walks_gate_then_up_rows(values):
    """glu: a warp's stream takes output r's gate row, then its up row (r + N / 2), before output r + S."""
    n, k = 2 * 19, 1032
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(n, k, 1, 4, seed=5), values))
    x = torch.randn(1, k).half()
    ref = cuda_nm.gemv_host(x, p, pairs=True, glu=True)
    for warps in (1, 4, 64):
        assert torch.equal(cuda_nm.gemv_host(x, p, pairs=True, glu=True, depth=8, warps=warps), ref)


def test_ring_config_rules_keys_and_shared_memory():
    cfg = SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True, num_stages=8)
    assert cfg.key() == "nmcu-w16p2-pairs-ring8" and cuda_nm.ring(cfg) == 8
    plain = SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True)
    assert plain.key() == "nmcu-w16p2-pairs" and cuda_nm.ring(plain) == 0
    for bad in (dict(pairs=True, num_stages=5), dict(num_stages=8, x16=True), dict(pairs=True, num_stages=8, unroll=2),
                dict(num_stages=8)):
        with pytest.raises(ValueError, match="num_stages"):
            SpmmConfig(kernel="nmcu", num_warps=16, persist=2, **bad)
    assert cuda_nm.min_blocks(SpmmConfig(kernel="nmcu", num_warps=16, persist=3, pairs=True, num_stages=4)) == 3
    k = 4096
    for values, slot in (("int8", 320), ("float16", 576)):
        p = PackedBitmask.from_compressed(compress_tensor(nm_weight(64, k, 1, 4), values))
        base = cuda_nm.staged_bytes(p, pairs=True, unroll=2)  # the table, its slack and x's copy
        assert cuda_nm.staged_bytes(p, pairs=True, depth=8, warps=16) == base + 16 * 8 * slot
        assert p.supports(cfg)
        huge = SpmmConfig(kernel="nmcu", num_warps=32, persist=1, pairs=True, num_stages=12)
        assert p.supports(huge) == (base + 32 * 12 * slot <= cuda_nm.smem_limit())
    rings = [c for c in nmcu_configs(1) if cuda_nm.ring(c)] if cuda_nm.available() else []
    assert all(c.pairs and c.unroll == 1 for c in rings)


def test_ring_host_twin_rejects_bad_depths():
    p = PackedBitmask.from_compressed(compress_tensor(nm_weight(8, 256, 1, 4), "float16"))
    x = torch.randn(1, 256).half()
    for kw in (dict(depth=5), dict(depth=8, unroll=2), dict(depth=8, warps=0), dict(depth=8, pairs=False)):
        with pytest.raises(ValueError, match="ring"):
            cuda_nm.gemv_host(x, p, **{"pairs": True, **kw})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU build needs a CUDA device (and nvcc)")
@pytest.mark.parametrize("values,warps,persist,depth", [("float16", 16, 2, 4), ("int8", 32, 1, 8),
                                                        ("int8", 16, 3, 4), ("float16", 8, 4, 12)])
def test_gpu_build_ring_matches_its_host_twin(values, warps, persist, depth):
    """On a GPU machine: odd shapes, an all-zero row, 14 steps per row, more warps than rows, x one element off its
    8-byte alignment (the table from 16-bit loads), the glu and norm epilogues."""
    if not cuda_nm.available():
        pytest.skip(f"nmcu unavailable: {cuda_nm.build_error()}")
    cfg = SpmmConfig(kernel="nmcu", num_warps=warps, persist=persist, pairs=True, num_stages=depth)
    grid = lambda n: max(1, min(persist * torch.cuda.get_device_properties(0).multi_processor_count,  # noqa: E731
                                -(-n // warps))) * warps
    for n, k in ((37, 304), (19, 14336), (4096, 4096), (2 * 37, 1032)):
        p = PackedBitmask.from_compressed(compress_tensor(nm_weight(n, k, 1, 4, seed=n), values).to("cuda"))
        if not p.supports(cfg):
            continue
        big = torch.randn(1, k + 4, device="cuda").half()
        for x in (big[:, :k], big[:, 1:k + 1]):
            y = cuda_nm.gemv(x, p, cfg).float().cpu()
            host = cuda_nm.gemv_host(x.cpu(), p, pairs=True, depth=depth, warps=grid(n)).half().float()
            torch.testing.assert_close(y, host, rtol=1e-3, atol=1e-3 * host.abs().max().item())
        if n % 2 == 0:
            g = cuda_nm.gemv(big[:, :k], p, cfg, glu=True).float().cpu()
            hg = cuda_nm.gemv_host(big[:, :k].cpu(), p, pairs=True, glu=True, depth=depth, warps=grid(n // 2))
            torch.testing.assert_close(g, hg, rtol=2e-3, atol=2e-3 * hg.abs().max().item())
        res, w = torch.randn(1, n, device="cuda").half(), (1 + 0.1 * torch.randn(n, device="cuda")).half()
        s, xn = cuda_nm.gemv(big[:, :k], p, cfg, norm=(res, w, 1e-6))
        hs, hn = cuda_nm.norm_host(cuda_nm.gemv(big[:, :k], p, cfg).cpu(), res.cpu(), w.cpu(), 1e-6, 32 * warps)
        assert torch.equal(s.cpu(), hs) and torch.equal(xn.cpu(), hn)
