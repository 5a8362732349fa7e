"""StaticDecoder on CPU (eager, no graphs): equals HF greedy generate; sparse layers give the same tokens."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparselm.runtime import StaticDecoder, sparsify


def tiny_llama(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=71, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p[torch.rand_like(p) < 0.5] = 0
    return model


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_matches_hf_greedy(kv_heads):
    model = tiny_llama(kv_heads)
    ids = torch.randint(0, 71, (2, 5))
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
        first = model(ids).logits[:, -1]
    tokens, logits = StaticDecoder(model, batch_size=2, max_len=32).generate(ids, 10, return_logits=True)
    assert torch.equal(tokens, hf)
    torch.testing.assert_close(logits[0], first, rtol=1e-4, atol=1e-4)
    assert logits.shape == (10, 2, 71)


def test_sparse_equals_dense_tokens():
    model = tiny_llama(2)
    ids = torch.randint(0, 71, (1, 4))
    dense_tokens, dense_logits = StaticDecoder(model, max_len=24).generate(ids, 12, return_logits=True)
    sparsify(model, values_dtype="float32")
    tokens, logits = StaticDecoder(model, max_len=24).generate(ids, 12, return_logits=True)
    assert torch.equal(tokens, dense_tokens)
    torch.testing.assert_close(logits, dense_logits, rtol=1e-4, atol=1e-4)


def test_rejects_too_long():
    dec = StaticDecoder(tiny_llama(2), max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        dec.generate(torch.zeros(1, 4, dtype=torch.long), 6)


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_projections_change_nothing(sparse):
    model = tiny_llama(2)
    if sparse:
        sparsify(model, values_dtype="float32")
    ids = torch.randint(0, 71, (1, 4))
    fused = StaticDecoder(model, max_len=24)
    assert all(m is not None for m in fused.qkv + fused.gate_up)
    t1, l1 = fused.generate(ids, 8, return_logits=True)
    t2, l2 = StaticDecoder(model, max_len=24, fuse=False).generate(ids, 8, return_logits=True)
    assert torch.equal(t1, t2)
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-4)


def test_throughput_on_cpu_has_no_gpu_split():
    """On the CPU throughput() times the whole call only (the prefill / decode split needs CUDA events), and the
    rotary table covers every cache position (the eager path indexes it)."""
    dec = StaticDecoder(tiny_llama(2), max_len=24)
    assert dec.cos_tab.shape == dec.sin_tab.shape == (24, dec.head_dim)
    r = dec.throughput(prompt_len=4, new_tokens=6)
    assert set(r) == {"tokens_per_s"} and r["tokens_per_s"] > 0
    assert dec.last_timing is None and dec.buckets == [(0, None, None)]  # eager ops on the CPU: SDPA, one split
