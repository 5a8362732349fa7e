"""Logit distillation: KL(teacher ‖ student) at temperature T over the target tokens (Hinton et al. 2015).

    KD = T² · (1/N) Σ_{i: y_i ≠ -100} Σ_v p_t(v|i) · (log p_t(v|i) − log p_s(v|i)),   p = softmax(z / T)

The T² factor keeps the gradient magnitude of the soft targets comparable across temperatures (the gradient of
the tempered KL w.r.t. the logits scales as 1/T²), so a KD weight tuned at one T stays meaningful at another.
Positions are the same as for CE (prompt and padding excluded).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sparselm.distill.align import target_mask
from sparselm.distill.registry import LossInputs, register_loss


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
          temperature: float = 1.0, count: torch.Tensor | None = None) -> torch.Tensor:
    """T²-scaled mean per-token KL(teacher ‖ student) over positions with targets ≠ -100 (`count`: the divisor
    instead of their number, see LossInputs.token_count)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the vocabularies must match for KD")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, T, V)
    kl_tok = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (B, T)
    m = target_mask(targets)
    n = m.sum() if count is None else count.to(m.dtype)
    return (temperature ** 2) * (kl_tok * m).sum() / n.clamp_min(1.0)


@register_loss("kd")
class KDLoss:
    needs_teacher_logits = True
    needs_hidden = False

    def __init__(self, temperature: float = 1.0) -> None:
        # 1.0: the plain KL; >1 softens both distributions (the recipe's `loss.temperature`).
        self.temperature = temperature

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise ValueError("KD loss needs teacher logits (set a teacher in the recipe)")
        return kd_kl(inputs.student_logits, inputs.teacher_logits, inputs.targets, self.temperature,
                     inputs.token_count)
