"""Tiny offline fixtures shared by the data/eval tests: a character-level tokenizer and tiny Llama / T5 models.

No tests here; imported as `from test_eval_fixtures import ...` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import torch

CHARS = [chr(i) for i in range(32, 127)] + ["\n", "ä", "ö", "ü", "ß", "Ä", "Ö", "Ü", "€", "“", "„", "’"]


def char_tokenizer(bos: bool = False):
    """A PreTrainedTokenizerFast with one token per character; pad=0, bos=1, eos=2, unk=3.

    `bos=True` prepends <s> to every encoding (like Llama tokenizers) so prompt handling of BOS is exercised.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int = 128, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def tiny_t5(vocab_size: int = 128, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg).eval()


def save_pruned_llama(path, fraction: float = 0.6, seed: int = 0):
    """A tiny Llama with about `fraction` of each block linear zeroed (what a pruner leaves) and a char tokenizer,
    saved as an HF directory at `path` (the CLI tests' input: compress, generate)."""
    from tiny_models import tiny

    tok = char_tokenizer()
    model = tiny("llama")
    model.resize_token_embeddings(len(tok))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p[torch.rand_like(p) < fraction] = 0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
