"""Cross-entropy on target tokens only.

    CE = -(1/N) Σ_{i: y_i ≠ -100} log softmax(z_i)[y_i],     N = #{i: y_i ≠ -100}

Prompt and padding positions are -100 (set by the collator), so the loss covers the completion only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sparselm.distill.align import IGNORE_INDEX
from sparselm.distill.registry import LossInputs, register_loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy over positions with targets ≠ -100; 0 (not NaN) when there are none. `count`
    replaces the local number of targets as the divisor (data parallel: see LossInputs.token_count)."""
    vocab = logits.shape[-1]
    total = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    # clamp: a batch made only of prompts would otherwise divide by zero; no host sync (stays a tensor).
    n = (targets != IGNORE_INDEX).sum() if count is None else count
    return total / n.clamp_min(1)


@register_loss("ce")
class CrossEntropyLoss:
    needs_teacher_logits = False
    needs_hidden = False

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return cross_entropy(inputs.student_logits, inputs.targets, inputs.token_count)
