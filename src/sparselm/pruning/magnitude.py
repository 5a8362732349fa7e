"""Magnitude pruning: score = |W_ij|. Data-free; the baseline every other pruner must beat."""
from __future__ import annotations

import torch

from sparselm.models.weights import set_weight_2d, weight_2d
from sparselm.pruning.base import Pruner, register_pruner
from sparselm.sparsity.masks import select_nm, select_unstructured


def apply_score_mask(pruner: Pruner, score: torch.Tensor, sparsity: float | None, n: int | None, m: int | None,
                     keep_zeros: bool, scope: str) -> torch.Tensor:
    """Shared by the score-only pruners: rank by `score`, zero the selected weights, return the mask."""
    w = weight_2d(pruner.layer).detach().float()
    was_zero = w == 0
    if keep_zeros:  # old zeros rank first so that they are part of the new, larger pruned set
        score = score.masked_fill(was_zero, -1.0)
    mask = select_nm(score, n, m) if n is not None else select_unstructured(score, sparsity or 0.0, scope)
    if keep_zeros:
        mask |= was_zero
    set_weight_2d(pruner.layer, w.masked_fill(mask, 0.0))
    return mask


class MagnitudePruner(Pruner):
    needs_inputs = False

    def prune(self, sparsity=None, n=None, m=None, keep_zeros=True, scope=None):
        score = weight_2d(self.layer).detach().float().abs()
        return apply_score_mask(self, score, sparsity, n, m, keep_zeros, scope or "layer")


register_pruner("magnitude", MagnitudePruner)
