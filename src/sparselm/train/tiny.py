"""Tiny models built from configs (no weights, no hub) and the character tokenizer of the synthetic data.

Dropout is 0 by default: a 2-block test model has nothing to regularise. `dropout` > 0 is for from-scratch
teachers on small corpora (the T5 translation teacher memorizes 14.5k pairs without it); resumes stay exact
because checkpoints carry the RNG state.
"""
from __future__ import annotations

import torch
from torch import nn

# Character vocabulary of `synthetic-arith` ("12+34=46"), after the four special tokens.
CHARS = "0123456789+-=*() \n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def char_tokenizer():  # -> PreTrainedTokenizerFast
    """A character-level fast tokenizer (one id per character) that `save_pretrained` can write."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_config(arch: str, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int | None = None, intermediate_size: int = 128, vocab_size: int = 32,
                max_positions: int = 128, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, dropout: float = 0.0):
    """A transformers config for a tiny model of `arch` (llama | gpt2 | t5 | whisper)."""
    from transformers import GPT2Config, LlamaConfig, T5Config, WhisperConfig

    ids = dict(pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                           num_key_value_heads=num_kv_heads or num_heads, intermediate_size=intermediate_size,
                           vocab_size=vocab_size, max_position_embeddings=max_positions, tie_word_embeddings=True,
                           attention_dropout=dropout, **ids)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_inner=intermediate_size,
                          vocab_size=vocab_size, n_positions=max_positions, resid_pdrop=dropout, embd_pdrop=dropout,
                          attn_pdrop=dropout, **ids)
    if arch == "t5":
        return T5Config(d_model=hidden_size, d_ff=intermediate_size, num_layers=num_layers, num_heads=num_heads,
                        d_kv=hidden_size // num_heads, vocab_size=vocab_size, dropout_rate=dropout,
                        decoder_start_token_id=pad_id, **ids)
    if arch == "whisper":
        # max_source_positions=16 -> the encoder expects 32 mel frames (two stride-1/2 convs).
        return WhisperConfig(d_model=hidden_size, encoder_layers=num_layers, decoder_layers=num_layers,
                             encoder_attention_heads=num_heads, decoder_attention_heads=num_heads,
                             encoder_ffn_dim=intermediate_size, decoder_ffn_dim=intermediate_size,
                             vocab_size=vocab_size, max_source_positions=16, max_target_positions=max_positions,
                             num_mel_bins=80, dropout=dropout, attention_dropout=dropout, activation_dropout=0.0,
                             decoder_start_token_id=bos_id, begin_suppress_tokens=None, suppress_tokens=None,
                             **ids)
    raise ValueError(f"unknown tiny arch {arch!r}; choose llama, gpt2, t5 or whisper")


def build_tiny_model(arch: str, seed: int = 0, **config_kwargs: object) -> nn.Module:
    """A randomly initialised tiny model (seeded, fp32) with the task head of its architecture."""
    from transformers import (GPT2LMHeadModel, LlamaForCausalLM, T5ForConditionalGeneration,
                              WhisperForConditionalGeneration)

    classes = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "t5": T5ForConditionalGeneration,
               "whisper": WhisperForConditionalGeneration}
    cfg = tiny_config(arch, **config_kwargs)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = classes[arch](cfg)
    return model.float()
