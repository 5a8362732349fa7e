"""`sparselm compress MODEL --values int8 --out DIR`: a pruned (and fine-tuned) model's sparse linear layers stored in
the sparselm-bitmask format, in a directory `load_compressed` rebuilds without the dense weights.

    sparselm compress runs/demo/runs/s50-squarehead_token --values int4 --out out/demo-int4

The directory holds model.safetensors + compression.json (the format's index), config.json, the tokenizer when
the source has one, and compress.json: the settings that made it and what it saves (bytes before and after).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sparselm.artifacts import atomic_dir
from sparselm.compress.format import VALUE_NAMES
from sparselm.compress.io import INDEX_FILE, WEIGHTS_FILE, save_compressed

DENSE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def run_compress(model: str, values: str = "float16", group_size: int | None = None, min_sparsity: float = 0.3,
                 dense_dtype: str = "float16", out: str | Path = "out/compressed",
                 overwrite: bool = False) -> dict[str, Any]:
    """Compress MODEL into `out` (written atomically); returns the summary written to compress.json."""
    from sparselm.models.loaders import load_model
    from sparselm.runtime import sparsify

    if values not in VALUE_NAMES:
        raise ValueError(f"--values: one of {', '.join(VALUE_NAMES)}, got {values!r}")
    if dense_dtype not in DENSE_DTYPES:
        raise ValueError(f"--dense-dtype: one of {', '.join(DENSE_DTYPES)}, got {dense_dtype!r}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"--min-sparsity: a fraction in [0, 1], got {min_sparsity}")
    if group_size is not None and values not in ("int8", "int4"):
        raise ValueError(f"--group-size: only for int8 / int4 values, got --values {values}")
    net, tok = load_model(model, dtype=torch.float32)
    dense_bytes = sum(p.numel() * 2 for n, p in net.named_parameters() if p.dim() == 2)  # fp16 reference
    # the non-sparse tensors (embeddings, norms, dense layers) in the requested dtype; the sparse ones are
    # compressed from float32, so quantization sees the weights at full precision
    layers = sparsify(net, values_dtype=values, min_sparsity=min_sparsity, group_size=group_size)
    if not layers:
        raise ValueError(f"{model}: no linear layer inside the blocks is at least {min_sparsity:.0%} sparse; "
                         "prune it first (sparselm prune) or lower --min-sparsity")
    net.to(DENSE_DTYPES[dense_dtype])  # SparseLinear keeps its format's dtypes (fp32 scales, int8 / fp16 values)
    with atomic_dir(out, overwrite=overwrite) as staging:
        save_compressed(net, staging)
        if tok is not None:
            tok.save_pretrained(str(staging))
        index = json.loads((staging / INDEX_FILE).read_text())
        sparse_bytes = (staging / WEIGHTS_FILE).stat().st_size
        summary = {"source": str(model), "values": values, "group_size": group_size, "min_sparsity": min_sparsity,
                   "dense_dtype": dense_dtype, "layers": len(layers),
                   "mean_layer_sparsity": round(sum(layers.values()) / len(layers), 4),
                   "file_bytes": sparse_bytes, "dense_fp16_matrix_bytes": dense_bytes,
                   "format": index["format"], "version": index["version"]}
        (staging / "compress.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
