"""`sparselm prune`: validate every input before any work, prune, and write DIR atomically.

DIR holds the model (safetensors + config + tokenizer, loadable with `from_pretrained`), `sparsity.json` and the
resolved settings in `recipe.yaml`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sparselm.artifacts import atomic_dir
from sparselm.pruning.base import get_pruner
from sparselm.pruning.calibration import CalibrationError, read_text
from sparselm.pruning.driver import prune_model
from sparselm.recipes.provenance import write_recipe
from sparselm.sparsity.masks import check_sparsity, parse_pattern
from sparselm.sparsity.report import format_table, write_report


def validate_target(sparsity: float | None, pattern: str | None) -> str:
    if (sparsity is None) == (pattern is None):
        raise ValueError("give exactly one of --sparsity (unstructured) or --pattern (N:M)")
    if pattern is not None:
        parse_pattern(pattern)
        return pattern
    check_sparsity(sparsity)
    return str(sparsity)


def run_prune(model: str, method: str, sparsity: float | None, pattern: str | None, calib: Path | None,
              nsamples: int, seqlen: int, batch_size: int, scope: str | None, out: Path, device: str | None,
              offload: bool, seed: int, overwrite: bool, quiet: bool = False) -> dict:
    from sparselm.models.loaders import ModelNotFoundError, bundled_names, load_model

    if not Path(model).is_dir() and model not in bundled_names():
        raise ModelNotFoundError(f"model {model!r} not found: not a local directory, and not a bundled name "
                                 f"({', '.join(bundled_names())})")
    validate_target(sparsity, pattern)
    pruner_cls = get_pruner(method)
    if scope is not None and scope not in ("row", "layer", "block"):
        raise ValueError(f"--scope must be row, layer or block, got {scope!r}")
    if nsamples <= 0 or seqlen <= 0:
        raise ValueError(f"--nsamples and --seqlen must be positive (got {nsamples}, {seqlen})")
    text = None
    if pruner_cls.needs_inputs:
        if calib is None:
            raise CalibrationError(f"--calib is required for {method}")
        text = read_text(calib)  # raises on a missing or empty source
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, tokenizer = load_model(model)
    report = prune_model(net, method=method, sparsity=sparsity, pattern=pattern, calib=text, tokenizer=tokenizer,
                         nsamples=nsamples, seqlen=seqlen, batch_size=batch_size, scope=scope, device=device,
                         offload=offload, seed=seed, progress=not quiet)
    settings = {"model": str(model), "method": method, "sparsity": sparsity, "pattern": pattern,
                "calib": str(calib) if calib else None, "nsamples": nsamples, "seqlen": seqlen,
                "batch_size": batch_size, "scope": scope, "device": str(device), "offload": offload, "seed": seed}
    with atomic_dir(out, overwrite=overwrite) as stage:
        net.save_pretrained(stage, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        write_report({k: report[k] for k in ("method", "target", "overall", "layers")}, stage / "sparsity.json")
        write_recipe(stage / "recipe.yaml", settings)
    if not quiet:
        print(format_table(report, max_rows=14))
        print(f"pruned in {report['seconds']:.1f} s -> {out}")
    return report
