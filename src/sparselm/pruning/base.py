"""The observer -> solver protocol shared by every one-shot pruner, and the pruner registry.

A pruner wraps one prunable layer. The driver feeds it the layer's calibration inputs through a forward hook
(`add_batch(inp)`, inp (..., K)), then calls `prune(...)` once, which zeroes weights in place (and, for solvers such as
SparseGPT, updates the surviving weights) and returns the boolean prune mask (N, K). Adding a pruner is one module
plus one `register_pruner(...)` line; the CLI and YAML names come from this registry.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from sparselm.models.weights import weight_2d


class Pruner(ABC):
    """Base class: observes inputs of one layer, then solves for a mask (and possibly new weights)."""

    #: False for data-free pruners (magnitude); the driver then skips calibration forwards for them.
    needs_inputs: ClassVar[bool] = True

    def __init__(self, layer: nn.Module):
        self.layer = layer
        w = weight_2d(layer)
        self.rows, self.cols = w.shape  # (N out, K in)
        self.nsamples = 0  # tokens seen so far

    def add_batch(self, inp: torch.Tensor) -> None:
        """Accumulate statistics from one batch of layer inputs (..., K)."""

    @abstractmethod
    def prune(self, sparsity: float | None = None, n: int | None = None, m: int | None = None,
              keep_zeros: bool = True, scope: str | None = None) -> torch.Tensor:
        """Zero weights in place; return the prune mask (N, K), True where removed.

        Exactly one of `sparsity` (unstructured) or `n`,`m` (N:M: keep N of every M inputs) is given.
        `keep_zeros`: weights that are already zero stay pruned (staged pruning re-prunes a sparse model).
        """

    def free(self) -> None:
        """Release accumulated statistics (Hessians can be large)."""

    @staticmethod
    def _tokens(inp: torch.Tensor) -> torch.Tensor:
        return inp.detach().reshape(-1, inp.shape[-1]).float()  # (tokens, K), fp32 math even for bf16 models


_PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(name: str, cls: type[Pruner]) -> type[Pruner]:
    _PRUNERS[name] = cls
    return cls


def pruner_names() -> list[str]:
    return sorted(_PRUNERS)


def get_pruner(name: str) -> type[Pruner]:
    if name not in _PRUNERS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(pruner_names())}")
    return _PRUNERS[name]
