"""CPU sparse kernels: every ISA path available here (forced one by one) against a float64 dense reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sparselm.kernels.cpu import available_isa, check_format, has_vnni, sparse_matmul
from sparselm.kernels.cpu.pack import pack_dense, random_sparse, unpack_dense
from sparselm.kernels.cpu.spmm import _quantize_rows

ISAS_HERE = available_isa()
VALUE_TYPES = ["fp32", "bf16", "fp16", "int8"]
# Odd shapes: K not a multiple of 32 / 64, a single row, N smaller than the row blocks (4) and than the tails.
SHAPES = [(37, 45), (1, 31), (3, 200), (130, 640), (64, 96)]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]


def _weight(N: int, K: int, sparsity: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = random_sparse(N, K, sparsity, g)
    if N > 2:
        W[1] = 0.0  # an all-zero row in the middle
    return W


def _check(y: torch.Tensor, x: torch.Tensor, Wd: torch.Tensor, rel: float) -> None:
    """|y - x W^T| <= rel * (|x| |W|^T) + 1e-6, elementwise: a bound that holds for any summation order."""
    ref = x.double() @ Wd.double().T
    bound = rel * (x.double().abs() @ Wd.double().abs().T) + 1e-6
    err = (y.double() - ref).abs()
    assert bool((err <= bound).all()), f"max err {err.max().item():.3g} (bound {bound.max().item():.3g})"


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize("vt", VALUE_TYPES)
def test_matches_dense(isa: str, vt: str) -> None:
    for (N, K) in SHAPES:
        for i, sp in enumerate(SPARSITIES):
            p = pack_dense(_weight(N, K, sp, seed=N * 7 + i), vt)
            Wd = unpack_dense(p)
            for B in (1, 3, 9, 16):
                x = torch.randn(B, K, generator=torch.Generator().manual_seed(B))
                for threads in (1, 2):
                    _check(sparse_matmul(x, **p.kwargs(), threads=threads, isa=isa), x, Wd, rel=1e-5)


@pytest.mark.parametrize("vt", VALUE_TYPES)
def test_layer_sized_multithreaded(vt: str) -> None:
    """Large enough for the threaded chunk split and the prefetch state carried across row blocks (~1 MiB)."""
    N, K = 1001, 1500
    p = pack_dense(_weight(N, K, 0.75, seed=5), vt)
    Wd = unpack_dense(p)
    for B in (1, 3):
        x = torch.randn(B, K, generator=torch.Generator().manual_seed(B))
        for threads in (1, 2):
            _check(sparse_matmul(x, **p.kwargs(), threads=threads), x, Wd, rel=1e-5)


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize("group_size", [None, 32, 64, 128, 7])
def test_int8_groups(isa: str, group_size: int | None) -> None:
    for (N, K) in [(37, 300), (70, 640)]:
        p = pack_dense(_weight(N, K, 0.7, seed=K), "int8", group_size)
        Wd = unpack_dense(p)
        for B in (1, 5):
            x = torch.randn(B, K)
            for threads in (1, 2):
                _check(sparse_matmul(x, **p.kwargs(), threads=threads, isa=isa), x, Wd, rel=1e-5)


@pytest.mark.parametrize("isa", ISAS_HERE)
def test_act_quant_is_exact_on_quantized_x(isa: str) -> None:
    """act_quant computes x_hat @ W.T with x_hat the per-row int8 rounding of x, on every path alike."""
    for group_size in (None, 64, 32):
        p = pack_dense(_weight(70, 640, 0.75, seed=3), "int8", group_size)
        Wd = unpack_dense(p)
        for B in (1, 4, 11):
            x = torch.randn(B, 640)
            y = sparse_matmul(x, **p.kwargs(), isa=isa, act_quant=True)
            _check(y, _quantize_rows(x), Wd, rel=1e-5)
            _check(y, x, Wd, rel=0.05)  # and close to the unquantized product


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16])
def test_low_precision_activations(isa: str, act: torch.dtype) -> None:
    """bf16/fp16 x: same sums as the fp32 call on x.float() (bf16 x + bf16 W may use BF16 dot products), then
    rounded to x's dtype."""
    for vt in VALUE_TYPES:
        for (N, K) in [(64, 200), (130, 640)]:
            p = pack_dense(_weight(N, K, 0.75, seed=5), vt)
            x = torch.randn(2, 3, K).to(act)
            y = sparse_matmul(x, **p.kwargs(), isa=isa)
            assert y.dtype == act and y.shape == (2, 3, N)
            y32 = sparse_matmul(x.float(), **p.kwargs(), isa=isa).to(act)
            torch.testing.assert_close(y, y32, rtol=2e-2, atol=1e-3)
            _check(y.float().reshape(6, N), x.float().reshape(6, K), unpack_dense(p), rel=1e-2)


def test_empty_shapes() -> None:
    p = pack_dense(torch.zeros(0, 40), "fp32")
    assert sparse_matmul(torch.randn(3, 40), **p.kwargs()).shape == (3, 0)
    p = pack_dense(torch.randn(5, 40), "fp32")
    assert sparse_matmul(torch.randn(0, 40), **p.kwargs()).shape == (0, 5)


def test_matches_compress_module() -> None:
    """The kernels read sparselm.compress's tensors as they are."""
    from sparselm.compress.format import compress_tensor, decompress

    W = _weight(48, 130, 0.8, seed=11)
    for vt, gs in (("float32", None), ("bfloat16", None), ("int8", 64), ("int8", None)):
        ct = compress_tensor(W, values_dtype=vt, group_size=gs)
        x = torch.randn(3, 130)
        y = sparse_matmul(x, ct.bitmask, ct.values, ct.row_ptr, *ct.shape, scales=ct.scales, group_size=ct.group_size)
        _check(y, x, decompress(ct, torch.float32), rel=1e-5)


def test_bad_inputs_raise_clear_errors() -> None:
    p = pack_dense(_weight(8, 40, 0.5, seed=1), "fp32")
    q = pack_dense(_weight(8, 40, 0.5, seed=1), "int8", 8)
    x = torch.randn(2, 40)
    cases = [
        (dict(x=torch.randn(2, 41)), "x: last dimension"),
        (dict(x=torch.ones(2, 40, dtype=torch.int32)), "x: expected"),
        (dict(bitmask=p.bitmask.to(torch.int32)), "bitmask:"),
        (dict(bitmask=p.bitmask[:, :4]), "bitmask:"),
        (dict(row_ptr=p.row_ptr[:-1]), "row_ptr:"),
        (dict(row_ptr=p.row_ptr + 1), "row_ptr:"),
        (dict(values=p.values[:-1]), "row_ptr:"),
        (dict(threads=0), "threads:"),
        (dict(isa="sse9"), "isa:"),
        (dict(act_quant=True), "act_quant:"),
        (dict(scales=torch.ones(8, 1)), "scales:"),
    ]
    for override, msg in cases:
        kw = dict(x=x, **p.kwargs())
        kw.update(override)
        with pytest.raises((ValueError, TypeError), match=msg):
            sparse_matmul(**kw)
    for override, msg in [(dict(scales=None), "scales:"), (dict(scales=q.scales[:, :2]), "scales:"),
                          (dict(group_size=None), "group_size:")]:
        kw = dict(x=x, **q.kwargs())
        kw.update(override)
        with pytest.raises(ValueError, match=msg):
            sparse_matmul(**kw)


def test_check_format_names_the_bad_row() -> None:
    p = pack_dense(_weight(8, 40, 0.5, seed=2), "fp32")
    check_format(p.bitmask, p.values, p.row_ptr, 8, 40)
    bad = p.row_ptr.clone()
    bad[3] += 1  # rows 2 and 3 disagree with their popcounts; ends unchanged
    with pytest.raises(ValueError, match="row 2"):
        check_format(p.bitmask, p.values, bad, 8, 40)
    padded = p.bitmask.clone()
    padded[0, 5] |= 0x80  # column 47 >= K: a padding bit
    with pytest.raises(ValueError, match="row 0"):
        check_format(padded, p.values, p.row_ptr, 8, 40)


def test_vnni_reported_consistently() -> None:
    assert has_vnni() in (True, False)
    if has_vnni():
        assert "avx512" in ISAS_HERE


def test_no_compiler_falls_back_with_one_warning(tmp_path) -> None:
    """Without a usable compiler: one RuntimeWarning, the torch path, correct results (fresh interpreter)."""
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from sparselm.kernels.cpu import sparse_matmul, available_isa\n"
        "from sparselm.kernels.cpu.pack import pack_dense, unpack_dense\n"
        "W = torch.randn(6, 50) * (torch.rand(6, 50) > 0.5)\n"
        "p = pack_dense(W, 'int8', 16); x = torch.randn(2, 50)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y1 = sparse_matmul(x, **p.kwargs()); y2 = sparse_matmul(x, **p.kwargs())\n"
        "assert available_isa() == ['torch'], available_isa()\n"
        "assert len([m for m in w if issubclass(m.category, RuntimeWarning)]) == 1, [str(m.message) for m in w]\n"
        "assert torch.allclose(y1, x @ unpack_dense(p).T, atol=1e-4)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, SPARSELM_CPU_NO_JIT="1", SPARSELM_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_runtime_backend_serves_sparse_linear() -> None:
    from sparselm.kernels.cpu import backend
    from sparselm.runtime import SparseLinear, get_backend, register_backend

    lin = torch.nn.Linear(96, 40)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) > 0.7)
    layer = SparseLinear.from_linear(lin, values_dtype="float32")
    previous = get_backend("cpu")
    try:
        backend.register(max_batch=4, measure=False)
        x = torch.randn(3, 96)
        y = backend.cpu_backend(x, layer)
        assert y is not None and layer.kernel_state.get("cpu_format_checked")
        torch.testing.assert_close(layer(x), lin(x), rtol=1e-4, atol=1e-4)
        assert backend.cpu_backend(torch.randn(5, 96), layer) is None  # above max_batch: dense
    finally:
        backend.register()
        register_backend("cpu", previous)


def test_measured_dispatch_keeps_the_faster_path(monkeypatch) -> None:
    """measure (the default): the kernel against the dense product once per shape / batch bucket / dtypes, the
    faster kept (ties to the kernel); the decision is reused, and listed by decisions()."""
    from sparselm.kernels.cpu import backend
    from sparselm.runtime import SparseLinear

    lin = torch.nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) > 0.5)
    layer = SparseLinear.from_linear(lin, values_dtype="float32")
    clock = {"sparse": 1.0, "dense": 2.0}  # per pass over the rotated copies: 32 of this small layer
    calls = []
    monkeypatch.setattr(backend, "_median_ms", lambda kind, fn, reps=5: calls.append(kind) or clock[kind])
    monkeypatch.setattr(backend, "_decisions", {})
    try:
        backend.register(max_batch=16)
        x = torch.randn(1, 96)
        y = backend.cpu_backend(x, layer)
        torch.testing.assert_close(y, lin(x), rtol=1e-4, atol=1e-4)
        assert calls == ["sparse", "dense"] * 3 and not layer._dense  # the timing's dense weight is not kept
        assert backend.cpu_backend(torch.randn(1, 96), layer) is not None and len(calls) == 6  # reused
        assert list(backend.decisions()) == ["40x96 b1 float32"]
        d = backend.decisions()["40x96 b1 float32"]
        assert d["path"] == "sparse" and d["sparse_ms"] == pytest.approx(1 / 32, abs=1e-4)
        assert d["dense_ms"] == pytest.approx(2 / 32, abs=1e-4)
        clock.update(sparse=3.0)
        assert backend.cpu_backend(torch.randn(3, 96), layer) is None  # batch bucket 4: a new timing, dense won
        assert backend.decisions()["40x96 b4 float32"]["path"] == "dense"
        assert layer(torch.randn(3, 96)).shape == (3, 40)
        lean = SparseLinear.from_linear(lin, values_dtype="float32")
        lean.cache_dense = False  # its dense path would decompress per call: always the kernel, untimed
        assert backend.cpu_backend(torch.randn(3, 96), lean) is not None and len(calls) == 12
    finally:
        backend.register()


def test_concurrent_callers_share_the_pool() -> None:
    """Calls from several Python threads at once (ctypes drops the GIL) all get correct results."""
    import threading

    p = pack_dense(_weight(700, 512, 0.75, seed=9), "fp32")  # > 256 KiB: the threaded path
    Wd = unpack_dense(p)
    xs = [torch.randn(2, 512) for _ in range(4)]
    errors = []

    def work(x: torch.Tensor) -> None:
        for _ in range(20):
            try:
                _check(sparse_matmul(x, **p.kwargs(), threads=2), x, Wd, rel=1e-5)
            except AssertionError as e:  # collected: pytest sees failures only in the main thread
                errors.append(e)

    threads = [threading.Thread(target=work, args=(x,)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
