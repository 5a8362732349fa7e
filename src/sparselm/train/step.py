"""One micro-batch of the objective: teacher forward (no grad) + student forward, block outputs captured by hooks
in those same passes, then w_ce·CE + w_kd·KD + w_sh·SquareHead. Shared by the training loop, the architecture
tests and benchmarks/train_step.py so that what is benchmarked is what trains.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sparselm.distill import (BlockCapture, DistillationLoss, LossInputs, Teacher, hidden_token_masks,
                              select_blocks, shift_targets)
from sparselm.distill.capture import block_stack_ids

# Keys a batch may carry that are not model inputs.
_NON_INPUTS = ("labels",)


def decoder_inputs_from_labels(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Teacher forcing for encoder-decoders: shift labels right, start token first, -100 -> pad."""
    dec = labels.new_full(labels.shape, pad_id)
    dec[:, 1:] = labels[:, :-1]
    dec[:, 0] = start_id
    return dec.masked_fill(dec == -100, pad_id)


def model_inputs(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The forward kwargs of `batch`: labels are dropped (we compute the loss ourselves, once), and encoder-
    decoders get explicit `decoder_input_ids`."""
    inputs = {k: v for k, v in batch.items() if k not in _NON_INPUTS}
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" not in inputs:
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        inputs["decoder_input_ids"] = decoder_inputs_from_labels(batch["labels"], start, cfg.pad_token_id)
    return inputs


def compile_blocks(model: nn.Module, adapter) -> None:
    """Regional torch.compile: each transformer block's `forward` is compiled, the module call around it is not,
    so the forward hooks that capture block outputs keep running eagerly (a whole-model compile drops their side
    effects), and identical blocks share one compiled graph (compile time of one block, not of the model)."""
    if getattr(model, "_sparselm_compiled", False):
        return
    for _, block in adapter.blocks(model):
        block.forward = torch.compile(block.forward)
    model._sparselm_compiled = True


def global_token_count(targets: torch.Tensor) -> torch.Tensor | None:
    """Under data parallel, (target tokens summed over ranks) / world: the divisor that makes each rank's token-mean
    loss a share of the global batch's token mean (see LossInputs.token_count). None on a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    n = (targets != -100).sum().to(torch.float32)
    dist.all_reduce(n)  # one scalar per micro-batch; no host sync
    return n / dist.get_world_size()


class ObjectiveStep:
    """Callable on a batch -> (total loss, {"loss/<name>": detached value}).

    `student` is what runs the forward (possibly DDP/compile-wrapped); `student_module` the bare model whose blocks
    carry the hooks. Teacher blocks are selected with the same `layers` spec, so layer l of each side pairs up.
    """

    def __init__(self, student: nn.Module, student_module: nn.Module, adapter, loss: DistillationLoss,
                 teacher_model: nn.Module | None = None, layers: Sequence[int] | str | None = None,
                 teacher_bf16: bool = False) -> None:
        self.student, self.module, self.loss = student, student_module, loss
        self.encoder_decoder = bool(getattr(student_module.config, "is_encoder_decoder", False))
        self.capture: BlockCapture | None = None
        self.stack_ids: list[int] = []
        teacher_blocks = []
        if loss.needs_hidden:
            chosen = select_blocks(adapter.blocks(student_module), layers)
            self.capture = BlockCapture(chosen, adapter.block_hidden)
            self.stack_ids = block_stack_ids(adapter.stacks_of_blocks(student_module), chosen)
            if teacher_model is not None:
                from sparselm.models import get_adapter
                teacher_blocks = select_blocks(get_adapter(teacher_model).blocks(teacher_model), layers)
                if len(teacher_blocks) != len(chosen):
                    raise ValueError(f"teacher has {len(teacher_blocks)} selected blocks, student {len(chosen)}: "
                                     "SquareHead needs the same architecture depth")
        self.teacher: Teacher | None = None
        if loss.needs_teacher:
            if teacher_model is None:
                raise ValueError(f"losses {loss.names} need a teacher model")
            self.teacher = Teacher(teacher_model, teacher_blocks, adapter.block_hidden,
                                   need_logits=loss.needs_teacher_logits, bf16=teacher_bf16)

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = model_inputs(batch, self.module)
        t_logits, t_hidden = self.teacher(inputs) if self.teacher is not None else (None, [])
        s_logits = self.student(**inputs, use_cache=False).logits
        s_hidden = self.capture.take() if self.capture is not None else []
        targets = shift_targets(batch["labels"], causal=not self.encoder_decoder)
        masks = (hidden_token_masks(batch, self.stack_ids, s_hidden, self.encoder_decoder) if s_hidden else [])
        return self.loss(LossInputs(student_logits=s_logits, targets=targets, teacher_logits=t_logits,
                                    student_hidden=s_hidden, teacher_hidden=t_hidden, hidden_masks=masks,
                                    token_count=global_token_count(targets)))

    def close(self) -> None:
        for cap in (self.capture, self.teacher.capture if self.teacher else None):
            if cap is not None:
                cap.remove()
