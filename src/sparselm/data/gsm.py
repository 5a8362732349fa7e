"""`gsm`: GSM8K-style math word problems from reasoning-gym's ``gsm_symbolic`` (GSM-Symbolic templates).

Item:  prompt     = "Question: {question}\\nAnswer:"
       completion = " {chain of thought}\\n#### {answer}"  (``metadata["answer_cot"]``; its last ``#### x`` line is
                    rewritten to the canonical integer answer, since some templates print ``#### 36.0``)
       answer     = the integer answer as reasoning-gym gives it, e.g. "288"
       source     = "gsm_symbolic/<template id>"

Splits: train / validation / test draw from the 70 templates not in `HELD_OUT_TEMPLATES`; test-unseen only from
those 15 (every sixth of reasoning-gym's 85 usable templates, fixed here so it never changes with a library
update). The template of item ``i`` is ``dataset.task_indices[i]`` (reasoning-gym does not put it in the item
metadata). Default sizes follow GSM8K (7,473 train / 1,319 test problems).
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

from sparselm.data.gym import GymTask, Source
from sparselm.data.registry import Item, register_task

HELD_OUT_TEMPLATES = frozenset({0, 6, 12, 18, 24, 30, 39, 45, 51, 57, 66, 72, 82, 91, 99})
_FINAL = re.compile(r"####\s*[^\n]*\s*$")


def gsm_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


@register_task("gsm")
class GSMTask(GymTask):
    name: ClassVar[str] = "gsm"
    metric: ClassVar[str] = "gsm_exact_match"
    # Chains of thought in gsm_symbolic run to ~150 tokens with a GPT-2-style BPE; 256 leaves room.
    max_new_tokens: ClassVar[int] = 256

    def __init__(self, n_train: int = 7473, n_validation: int = 500, n_test: int = 1319,
                 n_test_unseen: int = 1000, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(n_train, n_validation, n_test, n_test_unseen, seed, **kwargs)

    def _source(self, held_out: bool) -> Source:
        def keep(ds, idx: int) -> bool:
            return (ds.task_indices[idx] in HELD_OUT_TEMPLATES) == held_out

        def tag(ds, idx: int) -> str:
            return f"gsm_symbolic/{ds.task_indices[idx]}"

        return Source("gsm_symbolic", "gsm_symbolic", keep=keep, tag=tag)

    def seen_sources(self) -> list[Source]:
        return [self._source(held_out=False)]

    def unseen_sources(self) -> list[Source]:
        return [self._source(held_out=True)]

    def to_item(self, raw: dict[str, Any]) -> Item:
        answer = str(raw["answer"]).strip()
        cot = raw["metadata"]["answer_cot"].strip()
        cot = _FINAL.sub("", cot).rstrip()
        return {"prompt": gsm_prompt(raw["question"]), "completion": f" {cot}\n#### {answer}", "answer": answer}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "held_out": sorted(HELD_OUT_TEMPLATES)}
