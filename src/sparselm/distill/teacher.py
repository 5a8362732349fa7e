"""The frozen teacher: eval mode, no gradients, optionally bf16, block outputs captured in the same forward.

When no loss reads the teacher's logits (SquareHead without KD) the forward stops right after the last captured
block, skipping the final norm and the LM head (for a 135M Llama the head alone is ~20% of the forward FLOPs).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sparselm.distill.capture import BlockCapture, Blocks, StopForward


class VocabMismatchError(ValueError):
    """Student and teacher do not share a vocabulary, so their logits cannot be compared."""


def check_vocab(student: nn.Module, teacher: nn.Module, student_tokenizer: object | None = None,
                teacher_tokenizer: object | None = None) -> None:
    """Raise VocabMismatchError when the output vocabularies (config sizes, and token->id maps when tokenizers are
    given) differ."""
    sv = getattr(student.config, "vocab_size", None)
    tv = getattr(teacher.config, "vocab_size", None)
    if sv != tv:
        raise VocabMismatchError(f"teacher vocab_size {tv} != student vocab_size {sv}: distill from a teacher "
                                 "fine-tuned from the same base model (same tokenizer)")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        # a processor (Whisper: feature extractor + tokenizer) compares by its tokenizer
        student_tokenizer = getattr(student_tokenizer, "tokenizer", student_tokenizer)
        teacher_tokenizer = getattr(teacher_tokenizer, "tokenizer", teacher_tokenizer)
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            diff = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
            raise VocabMismatchError(f"teacher and student tokenizers map tokens to different ids "
                                     f"(e.g. {diff}); use the student's base tokenizer for the teacher")


class Teacher:
    """Wrap a model as a frozen teacher. Call with a batch of model inputs -> (logits | None, hidden list)."""

    def __init__(self, model: nn.Module, blocks: Blocks, block_hidden: Callable[[object], torch.Tensor],
                 need_logits: bool, bf16: bool = False) -> None:
        model.eval()
        model.requires_grad_(False)
        if bf16:
            model.to(torch.bfloat16)
        self.model = model
        self.need_logits = need_logits
        self.capture = BlockCapture(blocks, block_hidden, stop_after_last=not need_logits) if blocks else None

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        logits = None
        try:
            logits = self.model(**inputs, use_cache=False).logits
        except StopForward:
            pass
        hidden = self.capture.take() if self.capture is not None else []
        return logits, hidden

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self
