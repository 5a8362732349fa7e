"""Model selection for dense phases: validation cross-entropy, and the best weights so far kept on disk.

    val CE = -(1/N) Σ_{held-out target tokens} log p(y_i | y_<i, x)      (the training CE, on data.eval_split)

Used by `train.eval_every` (see `sparselm.train.loop.BestSelection`). The best weights live in `<out>/best/p<phase>/best/`
(a checkpoint without optimizer state, outside `checkpoints/`, so checkpoint rotation never deletes it), with the
step and loss in its state.json: a resumed run restores the best value it must beat, and the phase's final
weights are read back from there. When the run is written, the chosen steps go to `selection.json` and the copy
is deleted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from sparselm.distill.align import IGNORE_INDEX, shift_targets
from sparselm.distill.ce import cross_entropy
from sparselm.train import checkpoint as ckpt_io
from sparselm.train.step import model_inputs


@torch.no_grad()
def validation_loss(module: nn.Module, examples: Sequence[Any], collate: Callable[[list], dict],
                    batch_size: int, device: torch.device, autocast: Callable[[], Any]) -> float:
    """Token-weighted mean CE of `module` on `examples` (eval mode, so no dropout; training mode restored)."""
    causal = not getattr(module.config, "is_encoder_decoder", False)
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(list(examples[i:i + batch_size])).items()}
            with autocast():
                logits = module(**model_inputs(batch, module)).logits
            targets = shift_targets(batch["labels"], causal=causal)
            n = int((targets != IGNORE_INDEX).sum())
            total += float(cross_entropy(logits, targets)) * n
            count += n
    finally:
        module.train(was_training)
    if count == 0:
        raise ValueError("validation: the held-out items have no target tokens (all truncated by train.seqlen?)")
    return total / count


class BestWeights:
    """`<root>/p<phase>/best`: the best weights of one phase, with {"phase", "step", "val"} in state.json (one
    folder per phase, so a second dense phase's rotation never deletes the first's)."""

    def __init__(self, root: Path, phase: int, recipe_yaml: str) -> None:
        self.root, self.recipe_yaml, self.phase = root / f"p{phase}", recipe_yaml, phase

    @property
    def path(self) -> Path:
        return self.root / "best"

    def saved(self) -> dict[str, Any] | None:
        """The saved best's state ({"step", "val", ...}), or None when there is none."""
        return ckpt_io.read_state(self.path) if (self.path / "state.json").is_file() else None

    @staticmethod
    def chosen(root: Path) -> dict[str, dict[str, Any]]:
        """{"p<phase>": {"phase", "step", "val"}} for every phase with a saved best under `root`."""
        return {d.name: ckpt_io.read_state(d / "best") for d in sorted(root.glob("p*"))
                if (d / "best" / "state.json").is_file()}

    def save(self, module: nn.Module, step: int, loss: float) -> None:
        ckpt_io.save_checkpoint(self.root, "best", model=module, optimizer=None, masks=None,
                                state={"phase": self.phase, "step": step, "val": loss},
                                recipe_yaml=self.recipe_yaml, keep=1)

    def load_into(self, module: nn.Module) -> None:
        if self.saved() is None:
            raise FileNotFoundError(f"{self.path}: no saved best weights")
        ckpt_io.load_weights(self.path, module)
