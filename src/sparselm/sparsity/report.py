"""Per-layer sparsity report: the `sparsity.json` written beside every pruned or fine-tuned model.

Schema: {"method": str, "target": float | "N:M", "overall": fraction of zeros over all prunable weights,
         "layers": {module name: fraction of zeros}}
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sparselm.models.adapters import get_adapter
from sparselm.models.weights import weight_2d


@torch.no_grad()
def sparsity_report(model: nn.Module, method: str | None = None, target: float | str | None = None) -> dict:
    layers: dict[str, float] = {}
    zeros = total = 0
    for name, mod in get_adapter(model).prunable_linears(model).items():
        w = weight_2d(mod)
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return {"method": method, "target": target, "overall": zeros / max(total, 1), "layers": layers}


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> bool prune mask (True where the weight is zero), in the (N, K) convention."""
    return {name: (weight_2d(mod) == 0) for name, mod in get_adapter(model).prunable_linears(model).items()}


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def format_table(report: dict, max_rows: int | None = None) -> str:
    """Plain-text per-layer table (one line per layer) with the overall figure last."""
    names = list(report["layers"])
    width = max((len(n) for n in names), default=10)
    lines = [f"{'layer':<{width}}  sparsity"]
    shown = names if max_rows is None else names[:max_rows]
    lines += [f"{n:<{width}}  {report['layers'][n]:8.4f}" for n in shown]
    if max_rows is not None and len(names) > max_rows:
        lines.append(f"... ({len(names) - max_rows} more layers)")
    lines.append(f"{'overall':<{width}}  {report['overall']:8.4f}")
    return "\n".join(lines)
