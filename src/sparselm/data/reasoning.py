"""`reasoning`: an equal-weight mixture of easy reasoning-gym generators with short prompts and short answers.

Chosen so that a ~135M model fine-tuned densely can learn it: every answer is a number, a time, one word or a
few words (under ~16 tokens), every prompt is under ~250 characters, and the difficulty knobs are turned down
(two-digit operands, ≤3 terms, ≤3 animal kinds…). reasoning-gym has no chain of thought for these generators,
so the completion is the answer alone:

    prompt     = "Question: {question}\\nAnswer:"
    completion = " {answer}"
    answer     = reasoning-gym's answer string
    source     = generator name

test-unseen uses generators that train never sees (`UNSEEN`): ``products`` (new wording, multiplication) and
``decimal_chain_sum`` (chain_sum's wording, with one-decimal operands): transfer, not memorisation.
"""
from __future__ import annotations

from typing import Any, ClassVar

from sparselm.data.gym import GymTask, Source
from sparselm.data.gsm import gsm_prompt
from sparselm.data.registry import Item, register_task

# name -> reasoning-gym config; the order is part of the split definition (source i gets seed stream i).
SEEN: dict[str, dict[str, Any]] = {
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
    "basic_arithmetic": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2, operators=("+", "-"),
                             allow_parentheses=False, allow_negation=False),
    "leg_counting": dict(min_animals=1, max_animals=3, min_instances=1, max_instances=5),
    "simple_equations": dict(min_terms=2, max_terms=2, min_value=1, max_value=20, operators=("+", "-"),
                             operators_weights=[0.5, 0.5]),
    "time_intervals": dict(task_types=["time"]),
    "family_relationships": dict(min_family_size=4, max_family_size=4),
    "syllogism": dict(),
    "word_sequence_reversal": dict(min_words=3, max_words=5),
    "spell_backward": dict(min_word_len=3, max_word_len=6),
}
UNSEEN: dict[str, dict[str, Any]] = {
    "products": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2),
    "decimal_chain_sum": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, min_decimal_places=1,
                              max_decimal_places=1),
}


@register_task("reasoning")
class ReasoningTask(GymTask):
    name: ClassVar[str] = "reasoning"
    metric: ClassVar[str] = "exact_match"
    # Longest answers (a reversed list of 5 words) are ~12 BPE tokens; 32 leaves room and stays cheap.
    max_new_tokens: ClassVar[int] = 32

    def __init__(self, n_train: int = 20000, n_validation: int = 500, n_test: int = 1000,
                 n_test_unseen: int = 1000, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(n_train, n_validation, n_test, n_test_unseen, seed, **kwargs)

    def seen_sources(self) -> list[Source]:
        return [Source(name, name, cfg) for name, cfg in SEEN.items()]

    def unseen_sources(self) -> list[Source]:
        return [Source(name, name, cfg) for name, cfg in UNSEEN.items()]

    def to_item(self, raw: dict[str, Any]) -> Item:
        answer = str(raw["answer"]).strip()
        return {"prompt": gsm_prompt(raw["question"]), "completion": f" {answer}", "answer": answer}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seen": SEEN, "unseen": UNSEEN}
