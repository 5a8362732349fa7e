"""Log-likelihood of the reference completion under teacher forcing: a continuous score that moves with every
small change of the model, even when greedy exact match does not.

For item i with target tokens y_1..y_n (the completion plus EOS, exactly the tokens trained on) and prompt x:

    LL_i = Σ_t log p(y_t | x, y_<t)
    loglik_per_token  = Σ_i LL_i / Σ_i n_i          (nats per target token; exp(-it) is the target perplexity)
    loglik_per_answer = (1/N) Σ_i LL_i               (nats per reference completion)

Decoder-only models score the causal batch of `CausalLMCollator` (logits at t predict token t+1);
encoder-decoder models score `Seq2SeqCollator` labels (decoder logits align with the labels).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from sparselm.data.collate import IGNORE_INDEX, CausalLMCollator, Seq2SeqCollator
from sparselm.eval.generate import is_encoder_decoder


def _token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits aligned with (B, T) labels → (B,) summed log-probs and (B,) counts over labels ≠ -100."""
    mask = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none")  # (B, T)
    return -(nll * mask).sum(1), mask.sum(1)


@torch.no_grad()
def completion_logliks(model, tokenizer, items: Sequence[dict[str, Any]], batch_size: int = 8,
                       max_length: int | None = 1024) -> list[tuple[float, int]]:
    """(LL_i, n_i) for every item: summed log-prob of its completion tokens and their count.

    `batch_size` 8 and `max_length` 1024 tokens keep the fp32 (B, T, vocab) logits of a 49k-vocab model near
    1.6 GB; lower them for longer sequences.
    """
    enc_dec = is_encoder_decoder(model)
    collate = Seq2SeqCollator(tokenizer) if enc_dec else CausalLMCollator(tokenizer, max_length=max_length)
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate(items[start:start + batch_size]).items()}
        labels = batch.pop("labels")
        if enc_dec:
            logits = model(**batch, labels=labels).logits                     # (B, T_target, V)
            ll, n = _token_logprobs(logits, labels)
        else:
            logits = model(**batch).logits                                    # (B, T, V)
            ll, n = _token_logprobs(logits[:, :-1], labels[:, 1:])            # logits at t predict t+1
        out += [(float(a), int(b)) for a, b in zip(ll.tolist(), n.tolist())]
    return out


def loglik_summary(scores: Sequence[tuple[float, int]]) -> dict[str, float]:
    """loglik_per_token and loglik_per_answer (see the module docstring) from (LL_i, n_i) pairs."""
    total_ll = sum(s for s, _ in scores)
    total_n = sum(n for _, n in scores)
    return {"loglik_per_token": total_ll / max(total_n, 1), "loglik_per_answer": total_ll / max(len(scores), 1),
            "target_tokens": total_n}
