"""Position alignment between logits and labels.

A causal LM's logits at position i predict token i+1, so its labels are shifted left by one (and -100 appended);
a seq2seq decoder's logits at position i already predict labels[i]. Shifting the *labels* instead of slicing the
logits avoids copying the (B, T, V) logits tensor, which is the largest activation of a training step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # the PyTorch / HF convention for "no loss at this position"


def shift_targets(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, T) labels -> (B, T) targets aligned with logits[:, t]."""
    if not causal:
        return labels
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def target_mask(targets: torch.Tensor) -> torch.Tensor:
    """(B, T) float 0/1 mask of positions that carry a loss."""
    return (targets != IGNORE_INDEX).float()
