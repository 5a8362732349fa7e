"""Perplexity of a causal LM on a text, with a fixed sliding-window protocol.

Protocol (the strided evaluation of the HF perplexity guide, fixed so numbers compare across models):
  * the whole text is tokenized once, without special tokens (no BOS), into x_0..x_{N-1};
  * windows of `context_length` tokens start every `stride` tokens: [b, min(b + context_length, N));
  * each window scores only the tokens the previous window did not score (the last `end - prev_end`), so every
    token x_t, t ≥ 1, is scored exactly once, with at least `context_length - stride` tokens of context once
    past the first window; x_0 is never scored (it has no context), nor, when stride = context_length, the
    first token of each window;
  * PPL = exp( Σ_t −log p(x_t | window context) / number of scored tokens ).
Defaults: context_length 512 tokens, stride 256 (every scored token after the first window sees ≥ 256 tokens
of context; 2× the cost of non-overlapping windows). `max_tokens` caps the text length for quick runs.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity_of_ids(model, ids: torch.Tensor, context_length: int = 512, stride: int = 256) -> dict[str, float]:
    """PPL of a 1-D token tensor under the protocol above; also the mean NLL (nats/token) and token count."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError("perplexity is defined here for decoder-only (causal) models; got an encoder-decoder")
    if not 0 < stride <= context_length:
        raise ValueError(f"stride={stride}: must be in 1..context_length ({context_length})")
    n = ids.numel()
    if n < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {n}")
    device = next(model.parameters()).device
    nll_sum, scored, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context_length, n)
        window = ids[begin:end].unsqueeze(0).to(device)                          # (1, T)
        logits = model(input_ids=window).logits[0, :-1].float()                  # (T-1, V): predicts window[1:]
        targets = window[0, 1:]
        n_new = end - max(prev_end, begin + 1)   # tokens not scored before; the window's first has no context
        nll = F.cross_entropy(logits[-n_new:], targets[-n_new:], reduction="sum")
        nll_sum += float(nll)
        scored += n_new
        prev_end = end
        if end == n:
            break
    mean = nll_sum / scored
    return {"perplexity": math.exp(mean), "nll_per_token": mean, "tokens": scored,
            "context_length": context_length, "stride": stride}


def perplexity(model, tokenizer, text: str | None = None, path: str | Path | None = None,
               context_length: int = 512, stride: int = 256, max_tokens: int | None = None) -> dict[str, float]:
    """PPL of `text`, or of the UTF-8 file at `path`, under the module's protocol."""
    if (text is None) == (path is None):
        raise ValueError("give exactly one of text= or path=")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such text file")
        text = path.read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return perplexity_of_ids(model, ids, context_length, stride)
