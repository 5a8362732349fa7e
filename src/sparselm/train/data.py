"""Training data for fine-tuning: items -> token ids with the loss on the completion only -> padded batches in a
deterministic order (so a resumed run sees exactly the batches an uninterrupted one would).

Causal LM:  input_ids = <s> prompt completion </s>,  labels = -100 over <s> and prompt, ids over the rest.
Seq2seq:    input_ids = prompt </s>,                labels = completion </s>.
Padding is on the right with the pad id in inputs and -100 in labels.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from sparselm.data.collate import prompt_ids
from sparselm.distill.align import IGNORE_INDEX


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def synthetic_arith(n: int, max_operand: int = 99, seed: int = 0) -> list[dict[str, str]]:
    """'a+b=' -> 'c' and 'a-b=' -> 'c' items: learnable by a 2-block model in ~100 steps, never trivially."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-")
        items.append({"prompt": f"{a}{op}{b}=", "completion": str(a + b if op == "+" else a - b)})
    return items


def tokenize_items(items: list[dict[str, str]], tokenizer, seqlen: int, causal: bool,
                   prompt_field: str = "prompt", target_field: str = "completion") -> list[Example]:
    """Token ids and completion-only labels, truncated to `seqlen` tokens."""
    eos = tokenizer.eos_token_id
    out = []
    for i, item in enumerate(items):
        if prompt_field not in item or target_field not in item:
            raise KeyError(f"data item {i} lacks field {prompt_field!r} or {target_field!r} "
                           f"(has {sorted(item)}); set data.prompt_field / data.target_field")
        c = tokenizer(item[target_field], add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
        if causal:
            head = prompt_ids(tokenizer, item[prompt_field])  # the one prompt encoding eval uses too
            ids, labels = head + c, [IGNORE_INDEX] * len(head) + c
            out.append(Example(ids[:seqlen], labels[:seqlen]))
        else:
            p = tokenizer(item[prompt_field], add_special_tokens=False).input_ids
            out.append(Example((p + ([eos] if eos is not None else []))[:seqlen], c[:seqlen]))
    return out


def collate(examples: list[Example], pad_id: int, causal: bool) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch."""
    n_in = max(len(e.input_ids) for e in examples)
    n_lab = n_in if causal else max(len(e.labels) for e in examples)
    ids = torch.full((len(examples), n_in), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), n_in), dtype=torch.long)
    lab = torch.full((len(examples), n_lab), IGNORE_INDEX, dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, :len(e.input_ids)] = torch.tensor(e.input_ids)
        att[r, :len(e.input_ids)] = 1
        lab[r, :len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


Collate = Callable[[list[Any]], dict[str, torch.Tensor]]


def example_collator(pad_id: int, causal: bool) -> Collate:
    """The collate function of `Example` lists (see `collate`)."""
    return functools.partial(collate, pad_id=pad_id, causal=causal)


class BatchPlan:
    """Micro-batch k of a phase is a pure function of (seed, phase, k): epoch e = k // batches_per_epoch uses the
    permutation seeded by (seed, phase, e); rank r of W takes its slice of the global micro-batch. The data
    position to resume from is therefore just the step counter. Items can be anything `collate` accepts
    (`Example`s here; a `sparselm.data` collator's items, e.g. Whisper audio features, via `finetune(items=...)`)."""

    def __init__(self, examples: Sequence[Any], batch_size: int, collate_fn: Collate, seed: int, phase: int,
                 rank: int = 0, world: int = 1) -> None:
        self.examples, self.batch_size, self.collate_fn = examples, batch_size, collate_fn
        self.seed, self.phase, self.rank, self.world = seed, phase, rank, world
        self.global_batch = batch_size * world
        self.batches_per_epoch = len(examples) // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"data: {len(examples)} examples are fewer than one global batch "
                             f"(train.batch_size {batch_size} x {world} processes)")
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.phase * 7919 + epoch)
            self._perm = (epoch, torch.randperm(len(self.examples), generator=g))
        return self._perm[1]

    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, b = divmod(k, self.batches_per_epoch)
        start = b * self.global_batch + self.rank * self.batch_size
        idx = self._permutation(epoch)[start:start + self.batch_size].tolist()
        return self.collate_fn([self.examples[i] for i in idx])


def calibration_batches(examples: Sequence[Any], n: int, collate_fn: Collate,
                        seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` single-sequence batches (no padding, which would pollute the pruner's Hessian statistics)."""
    g = torch.Generator().manual_seed(seed + 17)
    idx = torch.randperm(len(examples), generator=g)[:n].tolist()
    return [collate_fn([examples[i]]) for i in idx]
