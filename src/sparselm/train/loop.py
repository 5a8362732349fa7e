"""The inner training loop of one phase (a dense fine-tune, or one pruning stage with its mask fixed).

Per optimizer step: `grad_accum` micro-batches (DDP gradient sync only on the last), optional clipping, AdamW step,
post-step hooks (the fixed mask re-zeroes pruned weights and their Adam moments), schedule step. The device is
synchronised only every `log_every` steps (loss values are summed as tensors in between) and at checkpoints, where
a non-finite loss stops the run before anything is written, so the last checkpoint on disk is always a good one.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint was kept."""


class MetricsLog:
    """metrics.jsonl: one JSON object per logging step, flushed at once (a killed run keeps what it logged)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, global_step: int) -> None:
        """Drop lines logged after `global_step` (they will be logged again by the resumed run)."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get("global_step", 0) <= global_step]
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


@dataclass
class Phase:
    """One training phase. `stage` indexes recipe.pruning.stages (None for dense phases)."""

    index: int
    name: str                      # "dense-teacher" | "dense" | "stage-<i>"
    steps: int
    stage: int | None = None
    sparsity: float | None = None
    pattern: str | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    lr: float | None = None        # peak learning rate of this phase; None = the recipe's optim.lr


@dataclass
class LoopParts:
    """What `train_phase` needs; built by `finetune` (composition: every piece is swappable)."""

    accelerator: Any
    model: nn.Module               # what runs forward (maybe DDP / compiled)
    module: nn.Module              # the bare model (parameters, checkpoints)
    objective: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    optimizer: torch.optim.Optimizer
    schedule: Any
    plan: Any                      # BatchPlan
    post_step: list[Callable[[torch.optim.Optimizer], None]]
    save: Callable[[int], Path]    # save(step_in_phase) -> checkpoint path
    verify: Callable[[], None]     # sparsity re-check before each checkpoint
    metrics: MetricsLog
    grad_accum: int = 1
    grad_clip: float | None = None
    log_every: int = 10
    ckpt_every: int | None = None
    global_offset: int = 0         # optimizer steps taken in earlier phases
    selection: "BestSelection | None" = None  # dense phases: validation loss every N steps, best weights kept


@dataclass
class BestSelection:
    """Model selection by validation loss for a dense phase: every `every` optimizer steps (and at the phase end)
    `evaluate()` returns the validation loss; each new best is written by `keep(step, loss)`, and at the end of the
    phase `restore()` loads it back, so the phase returns its best weights, not its last ones. With `patience`,
    the phase stops after that many evaluations without a new best. Every rank must get the same loss from
`evaluate()` (the runner broadcasts rank 0's), so all ranks take the same early-stop decision.

    Why: a teacher trained from scratch on a small corpus (14.5k translation pairs) memorizes it within a few
    dozen epochs; a fixed epoch count either underfits or hands the students a memorizer. A resumed run restores
    `state()` from its checkpoint.
    """

    every: int
    evaluate: Callable[[], float]
    keep: Callable[[int, float], None]
    restore: Callable[[], None]
    patience: int | None = None
    best: float = float("inf")
    best_step: int = 0
    stale: int = 0                 # evaluations since the last new best
    last: float = float("nan")     # the latest validation loss

    def state(self) -> dict[str, Any]:
        """What a checkpoint records, so a resume compares against the same best with the same patience left."""
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.stale = float(state["best"]), int(state["best_step"]), int(state["stale"])

    def check(self, step: int) -> bool:
        """Evaluate at `step`; True when the phase should stop early."""
        loss = self.last = float(self.evaluate())
        if loss < self.best:
            self.best, self.best_step, self.stale = loss, step, 0
            self.keep(step, loss)
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _check_finite(bad: torch.Tensor, phase: Phase, step: int, last_ckpt: str) -> None:
    if bool(bad):
        raise NonFiniteLossError(f"non-finite loss in phase {phase.name} before step {step}: stopping; the last "
                                 f"good checkpoint is {last_ckpt} (lower optim.lr or set optim.grad_clip)")


def _micro_step(p: LoopParts, batch: dict[str, torch.Tensor], sync: bool) -> tuple[torch.Tensor, dict]:
    acc = p.accelerator
    ctx = nullcontext() if sync or acc.num_processes == 1 else acc.no_sync(p.model)
    with ctx:
        with acc.autocast():
            total, logged = p.objective(batch)
        acc.backward(total / p.grad_accum)
    return total.detach(), logged


def train_phase(p: LoopParts, phase: Phase, start_step: int = 0, last_ckpt: str = "none") -> str:
    """Run optimizer steps start_step..phase.steps-1 of `phase`; returns the name of the last checkpoint."""
    acc, device = p.accelerator, p.accelerator.device
    bad = torch.zeros((), dtype=torch.bool, device=device)
    sums: dict[str, torch.Tensor] = {}
    tokens, t0, since = 0, time.perf_counter(), 0
    bar = tqdm(total=phase.steps, initial=start_step, desc=phase.name, disable=not acc.is_main_process,
               dynamic_ncols=True, leave=False)
    for step in range(start_step, phase.steps):
        for m in range(p.grad_accum):
            batch = _to_device(p.plan.micro_batch(step * p.grad_accum + m), device)
            total, logged = _micro_step(p, batch, sync=m == p.grad_accum - 1)
            bad |= ~torch.isfinite(total)
            for k, v in logged.items():
                sums[k] = sums.get(k, 0) + v.float() / p.grad_accum
            tokens += int(batch["attention_mask"].numel()) if "attention_mask" in batch else 0
        if p.grad_clip is not None:
            acc.clip_grad_norm_(p.module.parameters(), p.grad_clip)
        lr = p.schedule.lr()
        p.optimizer.step()
        for hook in p.post_step:
            hook(p.optimizer)
        p.schedule.step()
        p.optimizer.zero_grad(set_to_none=True)
        since += 1
        done = step + 1
        stop = False
        evaluate = p.selection is not None and (done % p.selection.every == 0 or done == phase.steps)
        if evaluate:
            _check_finite(bad, phase, done, last_ckpt)
            stop = p.selection.check(done)
        if done % p.log_every == 0 or done == phase.steps or (stop and since):
            _check_finite(bad, phase, done, last_ckpt)
            row = _log_row(p, phase, done, lr, sums, since, tokens, time.perf_counter() - t0)
            if acc.is_main_process:
                p.metrics.write(row)
            bar.set_postfix({k[5:]: f"{v:.4g}" for k, v in row.items() if k.startswith("loss/") and v is not None})
            sums, tokens, t0, since = {}, 0, time.perf_counter(), 0
        if evaluate and acc.is_main_process:
            p.metrics.write({"global_step": p.global_offset + done, "phase": phase.name, "step": done,
                             "val/ce": p.selection.last, "val/best": p.selection.best})
        if stop:
            sel = p.selection
            acc.print(f"[{phase.name}] early stop at step {done}: no better validation loss in {sel.stale} "
                      f"evaluations (best {sel.best:.4g} at step {sel.best_step})")
        if stop or (p.ckpt_every and done % p.ckpt_every == 0) or done == phase.steps:
            _check_finite(bad, phase, done, last_ckpt)
            p.verify()
            if stop or done == phase.steps:
                if p.selection is not None:
                    p.selection.restore()
                done = phase.steps  # a checkpoint at the phase's last step: a resume treats the phase as done
            last_ckpt = p.save(done).name
        bar.update(1)
        if stop:
            break
    bar.close()
    return last_ckpt


def _log_row(p: LoopParts, phase: Phase, done: int, lr: float, sums: dict[str, torch.Tensor], since: int,
             tokens: int, dt: float) -> dict[str, Any]:
    acc = p.accelerator
    row: dict[str, Any] = {"global_step": p.global_offset + done, "phase": phase.name, "step": done, "lr": lr}
    for k, v in sums.items():
        v = acc.reduce(v.detach().clone(), reduction="mean") if acc.num_processes > 1 else v
        row[k] = float(v) / since
    for name in ("ce", "kd", "squarehead"):  # every line has every key; null = term not in this phase's loss
        row.setdefault(f"loss/{name}", None)
    row["tokens_per_s"] = tokens * acc.num_processes / max(dt, 1e-9)
    return row
