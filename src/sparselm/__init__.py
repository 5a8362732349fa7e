"""sparselm: prune LLMs in one shot, sparse fine-tune them with distillation, run them faster because they are sparse.

    import sparselm
    report = sparselm.prune(model, method="sparsegpt", sparsity=0.5, calib="calib.txt", tokenizer=tok)
"""
from __future__ import annotations

__version__ = "0.1.0"


def prune(model, method: str = "sparsegpt", sparsity: float | None = 0.5, pattern: str | None = None,
          calib=None, tokenizer=None, nsamples: int = 128, seqlen: int = 512, **kwargs):
    """One-shot prune `model` in place; see `sparselm.pruning.prune_model` for the arguments."""
    from sparselm.pruning import prune_model

    return prune_model(model, method=method, sparsity=sparsity, pattern=pattern, calib=calib,
                       tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen, **kwargs)


__all__ = ["prune", "__version__"]
