"""Distillation losses (CE, KD, SquareHead) and the frozen teacher wrapper.

    loss = DistillationLoss({"ce": 1.0, "squarehead": 1.0}, {"squarehead": {"variant": "masked_mean"}})
    total, logged = loss(LossInputs(student_logits, targets, teacher_hidden=..., student_hidden=...))
"""
from sparselm.distill import ce, kd, squarehead  # noqa: F401  (registers the built-in terms)
from sparselm.distill.align import IGNORE_INDEX, shift_targets
from sparselm.distill.capture import BlockCapture, StopForward, hidden_token_masks, select_blocks
from sparselm.distill.ce import cross_entropy
from sparselm.distill.combined import DistillationLoss
from sparselm.distill.kd import kd_kl
from sparselm.distill.registry import LossInputs, build_loss, list_losses, register_loss
from sparselm.distill.squarehead import squarehead_masked_mean, squarehead_sum_ratio, squarehead_token_ratio
from sparselm.distill.teacher import Teacher, VocabMismatchError, check_vocab

__all__ = ["IGNORE_INDEX", "shift_targets", "BlockCapture", "StopForward", "hidden_token_masks", "select_blocks",
           "cross_entropy", "DistillationLoss", "kd_kl", "LossInputs", "build_loss", "list_losses",
           "register_loss", "squarehead_masked_mean", "squarehead_sum_ratio", "squarehead_token_ratio", "Teacher",
           "VocabMismatchError", "check_vocab"]
