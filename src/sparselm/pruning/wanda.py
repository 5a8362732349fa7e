"""Wanda (Sun et al., 2023): score_ij = |W_ij| · ‖X_j‖₂, compared within each output row.

‖X_j‖₂ is the norm of input feature j over all calibration tokens; we keep its running mean square
(`scaler_row`), whose square root differs from the norm only by a constant, which does not change a ranking.
"""
from __future__ import annotations

import torch

from sparselm.models.weights import weight_2d
from sparselm.pruning.base import Pruner, register_pruner
from sparselm.pruning.magnitude import apply_score_mask


class WandaPruner(Pruner):
    def __init__(self, layer):
        super().__init__(layer)
        self.scaler_row = torch.zeros(self.cols, dtype=torch.float32, device=weight_2d(layer).device)

    def add_batch(self, inp: torch.Tensor) -> None:
        x = self._tokens(inp)  # (T, K)
        t = x.shape[0]
        self.scaler_row *= self.nsamples / (self.nsamples + t)
        self.scaler_row += (x * x).sum(0) / (self.nsamples + t)
        self.nsamples += t

    def prune(self, sparsity=None, n=None, m=None, keep_zeros=True, scope=None):
        w = weight_2d(self.layer).detach().float()
        score = w.abs() * self.scaler_row.sqrt().unsqueeze(0)  # (N, K)
        return apply_score_mask(self, score, sparsity, n, m, keep_zeros, scope or "row")

    def free(self) -> None:
        self.scaler_row = None  # type: ignore[assignment]


register_pruner("wanda", WandaPruner)
