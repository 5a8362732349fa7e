"""Sparse fine-tuning: the training loop, the fixed-mask post-step hook, checkpoints/resume, staged pruning.

    from sparselm.train import finetune
    out_dir = finetune("src/sparselm/recipes/tiny-cpu.yaml", ["train.steps=40"], out="runs/tiny", resume=False)
"""
from sparselm.train.finetune import FinetuneRun, finetune, resolve_recipe
from sparselm.train.loop import NonFiniteLossError
from sparselm.train.mask import FixedMask, SparsityViolation

__all__ = ["finetune", "resolve_recipe", "FinetuneRun", "NonFiniteLossError", "FixedMask", "SparsityViolation"]
