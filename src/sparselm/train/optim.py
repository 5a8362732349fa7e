"""AdamW and the per-stage learning-rate schedule (linear warm-up, then linear decay or constant).

    lr(s) = peak · (s+1)/W                                   for s < W   (the first step already learns)
    lr(s) = peak · (1 − (1−r) · (s−W)/max(1, S−W))           for s ≥ W   (r = final_lr_ratio; constant: 1)

The schedule's whole state is the step counter, so it checkpoints as one JSON integer.
"""
from __future__ import annotations

from typing import Iterable

import torch


def build_adamw(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.0, fused: bool | None = None,
                device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW; `fused=None` picks the fused CUDA kernel on GPU (one launch for all params) and foreach on CPU."""
    use_fused = (device_type == "cuda") if fused is None else fused
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             fused=use_fused or None, foreach=None if use_fused else True)


class LinearWarmupDecay:
    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, warmup_steps: int,
                 decay: str = "linear", final_lr_ratio: float = 0.0) -> None:
        self.optimizer, self.peak, self.total = optimizer, peak_lr, total_steps
        self.warmup = min(warmup_steps, total_steps)
        self.decay, self.final = decay, final_lr_ratio
        self.step_num = 0
        self._set()

    def factor(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.decay == "constant":
            return 1.0
        progress = (s - self.warmup) / max(1, self.total - self.warmup)
        return 1.0 - (1.0 - self.final) * min(1.0, progress)

    def lr(self) -> float:
        return self.peak * self.factor(self.step_num)

    def _set(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()

    def step(self) -> None:
        self.step_num += 1
        self._set()

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step_num}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_num = int(state["step"])
        self._set()


def warmup_steps(total: int, steps: int | None, ratio: float) -> int:
    return steps if steps is not None else int(round(ratio * total))
