"""One registry for distillation loss terms (peft-style registration): a new term is one file plus one
`@register_loss("name")` line; recipe keys (`loss.<name>` weights) come from this registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch


@dataclass
class LossInputs:
    """Everything a loss term may read for one micro-batch.

    `targets` are aligned with `student_logits` position by position (for causal LMs the labels were shifted left
    by one, see `sparselm.distill.align.shift_targets`); -100 marks positions that carry no loss (prompt, padding).
    `student_hidden[l]` / `teacher_hidden[l]` are the outputs of the l-th captured block, each (B, T_l, D), and
    `hidden_masks[l]` is the (B, T_l) 0/1 mask of real (non-pad) tokens for that block's sequence.
    """

    student_logits: torch.Tensor                      # (B, T, V)
    targets: torch.Tensor                             # (B, T) int64, -100 = ignored
    teacher_logits: torch.Tensor | None = None        # (B, T, V)
    student_hidden: list[torch.Tensor] = field(default_factory=list)
    teacher_hidden: list[torch.Tensor] = field(default_factory=list)
    hidden_masks: list[torch.Tensor | None] = field(default_factory=list)
    # Divisor of the token-mean losses (CE, KD) instead of this micro-batch's own target count. Data parallel sets
    # it to (targets over all ranks) / world, so that the gradient average over ranks is the mean over the global
    # batch's tokens, exactly as on one device (per-rank means would over-weight ranks with short answers).
    token_count: torch.Tensor | None = None


class LossTerm(Protocol):
    """A callable loss term; the flags tell the trainer what to compute for it."""

    needs_teacher_logits: bool
    needs_hidden: bool

    def __call__(self, inputs: LossInputs) -> torch.Tensor: ...


_LOSSES: dict[str, Callable[..., LossTerm]] = {}


def register_loss(name: str) -> Callable[[Callable[..., LossTerm]], Callable[..., LossTerm]]:
    """Decorator: register a loss-term factory under `name` (its recipe weight key)."""

    def deco(factory: Callable[..., LossTerm]) -> Callable[..., LossTerm]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = factory
        return factory

    return deco


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs: object) -> LossTerm:
    if name not in _LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered losses: {', '.join(list_losses())}")
    return _LOSSES[name](**kwargs)
