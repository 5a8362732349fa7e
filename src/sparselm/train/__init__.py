"""Sparse fine-tuning: the training loop, the fixed-mask post-step hook, checkpoints/resume, staged pruning.

    from sparselm.train import finetune
    out_dir = finetune("src/sparselm/recipes/tiny-cpu.yaml", ["train.steps=40"], out="runs/tiny", resume=False)

Names are imported lazily so that `sparselm.train.step` / `.mask` / `.optim` (torch only, used by
benchmarks/train_step.py on a bare GPU machine) do not pull in the recipe schema's pydantic/yaml.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"finetune": "sparselm.train.runner", "resolve_recipe": "sparselm.train.runner",
         "FinetuneRun": "sparselm.train.runner", "NonFiniteLossError": "sparselm.train.loop",
         "FixedMask": "sparselm.train.mask", "SparsityViolation": "sparselm.train.mask"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparselm.train' has no attribute {name!r}")
