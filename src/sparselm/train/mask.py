"""The fixed sparsity mask, enforced as a post-optimizer-step hook (composition, not a custom optimizer).

After every step:   W ← W ⊙ M,   m_t ← m_t ⊙ M,   v_t ← v_t ⊙ M      (Adam's exp_avg / exp_avg_sq)

Zeroing the moments matters: re-zeroing W alone keeps the forward pass sparse, but the moments of pruned weights
would keep integrating their gradients, so the momentum term −lr·m̂/(√v̂+eps) would push them off zero at every
step (visible to anyone reading weights between step and hook, and in the optimizer checkpoint). With m = v = 0 the
optimizer state is as sparse as the model. Masks are kept in the parameter's dtype (exact 0/1) so one foreach
multiply covers all of them.
With FSDP2 the parameters are DTensor shards: masks are built from, and applied to, the local shard.
"""
from __future__ import annotations

import torch
from torch import nn

MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class SparsityViolation(RuntimeError):
    """A pruned weight is non-zero: the mask was not enforced."""


class FixedMask:
    """Masks for named parameters: `apply_(optimizer)` after each step, `verify()` at checkpoints."""

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
        if set(params) != set(masks):
            raise ValueError(f"mask names differ from parameter names: {sorted(set(params) ^ set(masks))[:3]}")
        self.names = sorted(params)
        self.params = [params[n] for n in self.names]
        self.masks = [masks[n].to(device=_local(p).device, dtype=_local(p).dtype)
                      for n, p in zip(self.names, self.params)]

    @classmethod
    def from_zeros(cls, model: nn.Module, linears: dict[str, nn.Module]) -> "FixedMask":
        """Mask = (weight != 0) for the weight of each prunable layer (the pruner left zeros where it pruned)."""
        params = {f"{name}.weight": mod.weight for name, mod in linears.items()}
        masks = {n: (_local(p.detach()) != 0) for n, p in params.items()}
        return cls(params, masks)

    @torch.no_grad()
    def apply_(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights and their optimizer moments (the post-step hook)."""
        torch._foreach_mul_([_local(p) for p in self.params], self.masks)
        if optimizer is None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        for key in MOMENT_KEYS:
            pairs = [(_local(inner.state[p][key]), m) for p, m in zip(self.params, self.masks)
                     if p in inner.state and key in inner.state[p]]
            if pairs:
                torch._foreach_mul_([t for t, _ in pairs], [m for _, m in pairs])

    def __call__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.apply_(optimizer)

    @torch.no_grad()
    def verify(self) -> None:
        """Raise SparsityViolation when any pruned weight is non-zero."""
        for n, p, m in zip(self.names, self.params, self.masks):
            bad = int(((_local(p) != 0) & (m == 0)).sum())
            if bad:
                raise SparsityViolation(f"{n}: {bad} pruned weights are non-zero")

    def sparsity(self) -> dict[str, float]:
        """Fraction of pruned (mask 0) positions per parameter."""
        return {n: float((m == 0).float().mean()) for n, m in zip(self.names, self.masks)}

    def overall(self) -> float:
        zeros = sum(int((m == 0).sum()) for m in self.masks)
        return zeros / max(1, sum(m.numel() for m in self.masks))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """uint8 masks for a safetensors checkpoint."""
        return {n: (m != 0).to(torch.uint8).cpu().contiguous() for n, m in zip(self.names, self.masks)}

    @classmethod
    def from_state(cls, model: nn.Module, tensors: dict[str, torch.Tensor]) -> "FixedMask":
        named = dict(model.named_parameters())
        missing = [n for n in tensors if n not in named]
        if missing:
            raise KeyError(f"checkpoint masks name parameters the model lacks: {missing[:3]}")
        return cls({n: named[n] for n in tensors}, {n: t.bool() for n, t in tensors.items()})
