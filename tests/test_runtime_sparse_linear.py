"""SparseLinear, sparsify/densify, the per-device backend registry and the GPU dispatch table (CPU only)."""

import os

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from sparselm.compress import compress_tensor
from sparselm.runtime import SparseLinear, densify, get_backend, register_backend, sparsify


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p[torch.rand_like(p) < 0.7] = 0
    return model


@pytest.mark.parametrize("values_dtype", ["float32", "float16", "bfloat16", "int8"])
def test_forward_matches_dense(values_dtype):
    lin = nn.Linear(37, 11)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.6] = 0
    sl = SparseLinear.from_linear(lin, values_dtype)
    x = torch.randn(2, 5, 37)
    ref = lin(x)
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2, "int8": 3e-2}[values_dtype]
    torch.testing.assert_close(sl(x), ref, rtol=tol, atol=tol * ref.abs().max().item())
    assert sl(x).shape == (2, 5, 11)


def test_sparsify_only_block_linears_and_min_sparsity():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.normal_()  # dense: stays nn.Linear at min_sparsity 0.5
    done = sparsify(model, values_dtype="float32", min_sparsity=0.5)
    assert len(done) == 13 and all(0.5 <= s for s in done.values())
    assert isinstance(model.model.layers[0].self_attn.q_proj, SparseLinear)
    assert isinstance(model.model.layers[1].mlp.down_proj, nn.Linear)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.model.embed_tokens, nn.Embedding)
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(model, min_sparsity=1.5)


def test_sparsify_then_densify_is_identity():
    model = tiny_llama()
    ids = torch.randint(0, 53, (1, 6))
    with torch.no_grad():
        ref = model(ids).logits
        sparsify(model, values_dtype="float32")
        torch.testing.assert_close(model(ids).logits, ref)
        assert densify(model) == 14
        torch.testing.assert_close(model(ids).logits, ref)
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_backend_registry_hook_and_decline():
    ct = compress_tensor(torch.eye(4) * 2, "float32")
    sl = SparseLinear(ct)
    calls = []

    def fake(x2d, layer):
        calls.append((tuple(x2d.shape), layer.compressed.nnz))
        return None if x2d.shape[0] > 1 else torch.full((x2d.shape[0], 4), 7.0)

    old = get_backend("cpu")
    register_backend("cpu", fake)
    try:
        assert torch.equal(sl(torch.ones(1, 4)), torch.full((1, 4), 7.0))  # the backend's answer
        assert torch.equal(sl(torch.ones(3, 4)), torch.full((3, 4), 2.0))  # declined: dense fallback
        assert calls == [((1, 4), 4), ((3, 4), 4)]
    finally:
        register_backend("cpu", old)


def test_state_dict_moves_with_module():
    sl = SparseLinear(compress_tensor(torch.eye(5), "float16"), bias=torch.ones(5))
    keys = set(sl.state_dict())
    assert {"bitmask", "values", "row_ptr", "bias"} <= keys
    sl = sl.to(torch.float64)  # dtype moves keep the format's dtypes; only the bias follows
    assert sl.values.dtype == torch.float16 and sl.bitmask.dtype == torch.uint8 and sl.bias.dtype == torch.float64
    y = sl(torch.ones(2, 5, dtype=torch.float64))
    assert y.dtype == torch.float64 and torch.equal(y, torch.full((2, 5), 2.0, dtype=torch.float64))
    q = SparseLinear(compress_tensor(torch.eye(5), "int8")).half()
    assert q.scales.dtype == torch.float32 and q.values.dtype == torch.int8


def test_dispatch_table_roundtrip(tmp_path):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton", reason="the GPU dispatch module imports triton: pip install triton")
    from sparselm.kernels.gpu import SpmmConfig
    from sparselm.runtime import gpu_backend as gb

    assert gb.bucket(1) == 1 and gb.bucket(3) == 4 and gb.bucket(64) == 64 and gb.bucket(65) == 65
    key = gb.key_of(4096, 4096, 3, torch.float16, torch.float16)
    assert key == (4096, 4096, 4, "float16", "float16")
    assert gb.choice(gb.key_of(4096, 4096, 512, torch.float16, torch.float16))["path"] == "dense"
    assert gb.choice(key)["path"] == "dense"  # unmeasured: cuBLAS (the H200 measurement's verdict)
    gb.set_default_path("sparse")
    assert gb.choice(key) == {"path": "sparse", "cfg": gb.default_config(4)}
    assert gb.choice(gb.key_of(4096, 4096, 512, torch.float16, torch.float16))["path"] == "dense"
    gb.set_default_path("dense")
    with pytest.raises(ValueError, match="path"):
        gb.set_default_path("fast")
    cfg = SpmmConfig(block_n=4, block_k=1024, block_b=4)
    gb.record(key, "sparse", cfg)
    gb.record(gb.key_of(8, 8, 1, torch.int8, torch.bfloat16), "dense", None)
    gb.save_dispatch_table(tmp_path / "t.json")
    gb._TABLE.clear()
    assert gb.load_dispatch_table(tmp_path / "t.json") == 2
    assert gb.choice(key) == {"path": "sparse", "cfg": cfg}
    assert gb.choice((8, 8, 1, "int8", "bfloat16"))["path"] == "dense"
    gb._TABLE.clear()


def test_dispatch_choice_needs_a_margin_over_cublas():
    from sparselm.runtime.gpu_backend import choose

    assert choose(10.0, [("a", 9.8), ("b", 9.9)]) == ("dense", None, 10.0)  # within 3%: a tie goes to cuBLAS
    assert choose(10.0, [("a", 9.8), ("b", 9.0), ("c", 9.5)]) == ("sparse", "b", 9.0)
    assert choose(10.0, [("a", 9.6), ("b", 9.65)]) == ("sparse", "a", 9.6)  # then simply the fastest
    assert choose(10.0, [], margin=0.0) == ("dense", None, 10.0)
    assert choose(10.0, [("a", 9.9)], margin=0.0) == ("sparse", "a", 9.9)


def test_confirm_rejects_a_winner_that_does_not_hold_head_to_head():
    from sparselm.runtime.gpu_backend import confirm

    def seq(*vals):
        it = iter(vals)
        return lambda: next(it)

    won = ("sparse", "cfg", 9.0)  # the min over many noisy candidates
    assert confirm(won, seq(10.0, 10.1, 9.9), seq(9.5, 9.4, 9.6)) == ("sparse", "cfg", 9.5)  # still >= 3% faster
    assert confirm(won, seq(10.0, 10.1, 9.9), seq(9.8, 9.9, 10.2)) == ("dense", None, 10.0)  # a tie: cuBLAS
    assert confirm(won, seq(10.0, 20.0, 10.0), seq(9.0, 9.0, 30.0)) == ("sparse", "cfg", 9.0)  # medians, not means
    dense = ("dense", None, 10.0)
    assert confirm(dense, seq(), seq()) == dense  # nothing to confirm, nothing timed
    assert confirm(won, seq(), seq(), rounds=0) == won


def test_agrees_accepts_rounding_and_rejects_wrong_or_broken_outputs():
    """autotune's gate before timing a candidate: fp16 rounding of the same product passes; a wrong kernel, a
    NaN, an inf or a wrong shape does not."""
    from sparselm.runtime.gpu_backend import agrees

    torch.manual_seed(0)
    ref = torch.randn(4, 300).half()
    assert agrees(ref.float().add(torch.randn(4, 300) * 1e-3).half(), ref)  # ~1e-3 relative: rounding
    assert agrees(ref.bfloat16(), ref)
    assert not agrees(ref * 1.1, ref)  # 10% off
    assert not agrees(torch.roll(ref, 1, dims=1), ref)  # the right numbers in the wrong places
    bad = ref.clone()
    bad[0, 0] = float("nan")
    assert not agrees(bad, ref)
    bad[0, 0] = float("inf")
    assert not agrees(bad, ref)
    assert not agrees(ref[:, :299], ref)


def test_deterministic_mode_tunes_and_dispatches_only_kernels_that_repeat_their_bits(monkeypatch):
    """Split-K partial sums that meet through fp32 atomics (Triton bitmask / bmma / tmma split_k > 1, nmsp beyond
    8 splits) sum in no fixed order. Under torch.use_deterministic_algorithms(True) autotune leaves them out, and a
    table row that holds one (tuned without the mode, or loaded) runs dense, with a warning."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton", reason="the GPU dispatch module imports triton: pip install triton")
    from sparselm.kernels.gpu import SpmmConfig
    from sparselm.runtime import gpu_backend as gb

    nmsp = lambda s: SpmmConfig(kernel="nmsp", block_k=128, block_b=8, num_warps=4, split_k=s, num_stages=1)  # noqa
    tmma = lambda s: SpmmConfig(kernel="tmma", block_k=128, block_b=8, num_warps=4, split_k=s)  # noqa: E731
    cfgs = [SpmmConfig(), SpmmConfig(split_k=2), nmsp(8), nmsp(16), tmma(1), tmma(4),
            SpmmConfig(kernel="nmcu", num_warps=16, persist=2, pairs=True)]
    assert [gb.deterministic(c) for c in cfgs] == [True, False, True, False, True, False, True]
    monkeypatch.setattr(gb, "candidate_configs", lambda batch, pipelined=False: list(cfgs))
    model = tiny_llama()
    sparsify(model, values_dtype="float32")
    layer = model.model.layers[0].self_attn.q_proj
    key = gb.key_of(layer.out_features, layer.in_features, 1, gb.values_name(layer), torch.float32)
    gb.record(key, "sparse", nmsp(16))
    x = torch.randn(1, layer.in_features)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        assert gb.tuning_candidates(1) == cfgs
        torch.use_deterministic_algorithms(True)
        assert gb.tuning_candidates(1) == [c for c in cfgs if gb.deterministic(c)]
        with pytest.warns(RuntimeWarning, match="atomics"):
            y = gb.cuda_backend(x, layer)
        torch.testing.assert_close(y, x @ layer.dense_weight(torch.float32).T)
    finally:
        torch.use_deterministic_algorithms(was)
        gb._TABLE.pop(key, None)
