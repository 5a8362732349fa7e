"""The training objective: loss = Σ_k w_k · term_k, e.g. w_ce·CE + w_kd·KD + w_sh·SquareHead.

Terms with weight 0 are not built, so they cost nothing (no teacher logits for a SquareHead-only run, no teacher
at all for CE-only). The per-term values are returned detached for logging (`loss/<name>`, `loss/total`).
"""
from __future__ import annotations

import torch

from sparselm.distill.registry import LossInputs, LossTerm, build_loss


class DistillationLoss:
    def __init__(self, weights: dict[str, float], options: dict[str, dict[str, object]] | None = None) -> None:
        options = options or {}
        bad = [k for k, w in weights.items() if w < 0]
        if bad:
            raise ValueError(f"loss weights must be >= 0: {bad}")
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("all loss weights are 0: nothing to train on")
        self.terms: dict[str, LossTerm] = {k: build_loss(k, **options.get(k, {})) for k in self.weights}

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher_logits or t.needs_hidden for t in self.terms.values())

    @property
    def needs_teacher_logits(self) -> bool:
        return any(t.needs_teacher_logits for t in self.terms.values())

    @property
    def needs_hidden(self) -> bool:
        return any(t.needs_hidden for t in self.terms.values())

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: term(inputs) for name, term in self.terms.items()}
        total = sum(self.weights[n] * v for n, v in parts.items())
        assert isinstance(total, torch.Tensor)
        logged = {f"loss/{n}": v.detach() for n, v in parts.items()}
        logged["loss/total"] = total.detach()
        return total, logged
