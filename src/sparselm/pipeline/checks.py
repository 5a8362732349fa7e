"""Checks that fail a pipeline before (or right after the teacher, before) any sparse work, with a message that
says what to change: a known-unsupported stage (`check_runnable`), a teacher that does not stop at EOS
(`check_teacher_stops`: every sparse run would inherit the end-token mismatch)."""
from __future__ import annotations

from typing import Any

from sparselm.pipeline.schema import PipelineRecipe


class NotRunnableError(RuntimeError):
    """A recipe that validates but needs something the training package does not provide yet."""


class TeacherCheckError(RuntimeError):
    """The dense teacher fails a check that every sparse run would inherit (eval.min_eos_share)."""


def check_teacher_stops(dense_all: dict[str, dict[str, Any]], floor: float | None) -> None:
    """Raise `TeacherCheckError` when a split's teacher generations end at EOS less often than `floor`."""
    if floor is None:
        return
    for split, m in dense_all.items():
        ends = m.get("ends")
        if isinstance(ends, dict) and ends.get("eos", 0.0) < floor:
            raise TeacherCheckError(
                f"the teacher's {split} generations end at EOS in {ends.get('eos', 0.0):.0%} of rows "
                f"(eval.min_eos_share {floor:.0%}; answer line {ends.get('stop', 0.0):.0%}, token budget "
                f"{ends.get('budget', 0.0):.0%}): check that the tokenizer's EOS is among the model's generation "
                "EOS ids (see the teacher's predictions, field 'end'), or lower eval.min_eos_share for a teacher "
                "trained too briefly to stop")


def check_runnable(recipe: PipelineRecipe) -> None:
    """Fail before any work when a stage is known to be unsupported (rather than deep inside a fine-tune)."""
    tiny = recipe.model.tiny  # tokenizer "train-bpe" learns a vocabulary from the pairs (sparselm.data.tokenizer)
    if tiny is not None and (recipe.task.name == "asr" or (recipe.task.name == "translation"
                                                           and tiny.tokenizer == "char")):
        raise NotRunnableError(f"model.tiny with task {recipe.task.name!r}: a model built from a config gets the "
                               "character tokenizer of the synthetic data, which cannot encode its inputs (for "
                               "translation: set model.tiny.tokenizer=train-bpe; for asr: save a tiny Whisper + "
                               "processor to a directory and name that)")
    if recipe.task.name == "asr" and recipe.teacher.eval_every:
        raise NotRunnableError("teacher.eval_every: the asr teacher trains on audio items that model selection "
                               "does not read yet; leave it unset for asr")
