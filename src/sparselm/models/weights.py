"""Uniform (out_features, in_features) access to the weight of a prunable layer.

GPT-2 style `Conv1D` stores its weight as (in, out), the transpose of `nn.Linear`; pruners, masks and kernels all
reason in the `nn.Linear` convention W (N out, K in) with y = x Wᵀ, so the transpose is handled here and only here.
"""
from __future__ import annotations

import torch
from torch import nn

try:  # transformers keeps Conv1D in pytorch_utils; import lazily-tolerant so tiny setups still work
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]

PRUNABLE_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES)


def is_transposed(module: nn.Module) -> bool:
    """True for Conv1D, whose `.weight` is (in, out)."""
    return isinstance(Conv1D, type) and isinstance(module, Conv1D)


def weight_2d(module: nn.Module) -> torch.Tensor:
    """The weight as a (N out, K in) view (no copy for Linear; a transposed view for Conv1D)."""
    w = module.weight
    return w.t() if is_transposed(module) else w


def set_weight_2d(module: nn.Module, w_nk: torch.Tensor) -> None:
    """Write a (N, K) tensor back into the module's own layout and dtype, in place."""
    target = module.weight.data
    src = w_nk.t() if is_transposed(module) else w_nk
    target.copy_(src.to(dtype=target.dtype, device=target.device))


def in_features(module: nn.Module) -> int:
    return weight_2d(module).shape[1]
