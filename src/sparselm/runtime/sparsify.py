"""sparsify(model): replace the (pruned) nn.Linear layers inside transformer blocks by SparseLinear.

Embeddings and the LM head stay dense (the seed paper prunes only linears inside blocks). Layers come from the
architecture adapter (sparselm.models); for an unknown architecture, every nn.Linear except the output embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from sparselm.runtime.sparse_linear import SparseLinear


def block_linear_names(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules inside transformer blocks."""
    try:
        from sparselm.models.adapters import get_adapter

        names = [n for n, m in get_adapter(model).prunable_linears(model).items() if isinstance(m, nn.Linear)]
    except (ImportError, ValueError):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]
    return names


def sparsify(model: nn.Module, values_dtype: str | torch.dtype | None = None, min_sparsity: float = 0.0,
             group_size: int | None = None, names: list[str] | None = None,
             cache_dense: bool | None = None) -> dict[str, float]:
    """Swap each selected nn.Linear whose sparsity >= min_sparsity for a SparseLinear, in place.

    values_dtype: "float16" | "bfloat16" | "float32" | "int8" | "int4" | None (keep the weight's dtype).
    min_sparsity: fraction in [0, 1]; 0 converts every selected layer (a dense layer then costs 1/8 byte per
        weight more than dense, so callers serving dense layers may want ~0.3).
    group_size: int8 / int4 columns per scale (None: int8 one scale per row, int4 128).
    cache_dense: keep a dense copy of W where it is used (None: on CPU always; on GPU only for the shapes where
        autotune measured cuBLAS faster at a decode-sized batch; False: never, W is decompressed per call).
    Returns {layer name: sparsity} of the converted layers.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity: must be in [0, 1], got {min_sparsity}")
    done: dict[str, float] = {}
    for name in names if names is not None else block_linear_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        if not isinstance(lin, nn.Linear):
            continue
        w = lin.weight.detach()
        sparsity = 1.0 - float((w != 0).sum()) / max(1, w.numel())
        if sparsity < min_sparsity:
            continue
        setattr(parent, child, SparseLinear.from_linear(lin, values_dtype, group_size, cache_dense))
        done[name] = sparsity
    return done


def densify(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Replace every SparseLinear by an nn.Linear holding its decompressed weight (the dense reference)."""
    count = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SparseLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            w = mod.dense_weight(dtype or (torch.float32 if mod.values.dtype == torch.int8 else mod.values.dtype))
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                            device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            setattr(parent, child, lin.requires_grad_(False))
            count += 1
    return count
