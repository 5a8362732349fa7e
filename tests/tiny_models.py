"""Tiny models of every supported family, built from configs (offline, random weights, seconds on a CPU)."""
from __future__ import annotations

import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MptConfig, MptForCausalLM, T5Config, T5ForConditionalGeneration,
                          WhisperConfig, WhisperForConditionalGeneration)

VOCAB = 128


def sparse_weight(n: int, k: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random (n, k) weight with `sparsity` of it zero and row n // 2 all zero (the kernels' edge case)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < sparsity] = 0
    w[n // 2] = 0  # an all-zero row
    return w


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=128))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                          bos_token_id=0, eos_token_id=0, pad_token_id=0))
    if kind == "mpt":
        return MptForCausalLM(MptConfig(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=2, max_seq_len=128))
    if kind == "gemma3":  # sliding-window and global layers alternate: different masks per block
        return Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=128))
    if kind == "t5":
        return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=64, d_ff=128, d_kv=16, num_layers=2,
                                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0))
    if kind == "whisper":
        return WhisperForConditionalGeneration(WhisperConfig(
            vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
            max_source_positions=16, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1))
    raise ValueError(kind)


def calib_batches(kind: str, model=None, n: int = 8, T: int = 32, seed: int = 1) -> list[dict]:
    """Calibration batches that `model(**batch)` accepts, with fresh random data."""
    g = torch.Generator().manual_seed(seed)
    if kind == "whisper":
        return [{"input_features": torch.randn(2, 16, 32, generator=g),
                 "decoder_input_ids": torch.randint(3, VOCAB, (2, 8), generator=g)} for _ in range(n // 2)]
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "t5":
        batch["decoder_input_ids"] = ids
    return [batch]


FAMILIES = ("llama", "gpt2", "t5", "whisper")
ALL_FAMILIES = FAMILIES + ("mpt", "gemma3")
