"""Batched greedy generation for decoder-only and encoder-decoder HF models.

Decoder-only: prompts are left-padded (`sparselm.data.generation_batch`) so that every row's next token is
predicted at the same position; the new tokens are the columns after the padded prompt width. HF `generate`
derives position ids from the attention mask, so a left-padded row gets the same positions, hence the same
greedy tokens, as the unpadded prompt alone (checked in tests/test_eval_generate.py).
Encoder-decoder: the prompt is the encoder input; `generate` returns decoder tokens only.

A row also stops at `stop_pattern` (a regex over its new text, e.g. the end of GSM's ``#### N`` line): the
answer is given and the rest of the budget would only add text that no metric reads.

Prompts are processed longest first, so each batch holds prompts of similar length (less padding), and the
outputs are put back in input order.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from sparselm.data.collate import generation_batch, pad_token_id
from sparselm.models.loaders import generation_eos_ids


def is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def greedy_config(model, tokenizer, max_new_tokens: int):
    """The model's generation config forced to greedy decoding with `max_new_tokens` new tokens."""
    gc = copy.deepcopy(model.generation_config)
    # unset sampling knobs so that a chat model's shipped temperature/top_p cannot switch sampling on
    gc.update(do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens), max_length=None,
              temperature=None, top_p=None, top_k=None)
    if gc.pad_token_id is None:
        gc.pad_token_id = pad_token_id(tokenizer)
    # stop at the tokenizer's EOS too: it is what training appends (sparselm.train.data), and a model's shipped
    # generation config may name another end token (chat models) or none
    gc.eos_token_id = eos_ids(gc, tokenizer) or None
    return gc


def eos_ids(gc, tokenizer) -> list[int]:
    """The end-of-sequence ids: the generation config's (an int or a list) plus the tokenizer's."""
    ids = generation_eos_ids(gc)
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


class StopOnPattern(StoppingCriteria):
    """Per-row stop once the decoded tail of the row's new tokens matches `pattern`.

    Only the last `tail` tokens are decoded each step: the pattern marks the end of a short line, so a match
    always lies inside that window, and decoding whole rows every step would cost O(length^2)."""

    def __init__(self, tokenizer, pattern: str | re.Pattern, prompt_width: int, tail: int = 16) -> None:
        self.tokenizer, self.pattern, self.start, self.tail = tokenizer, re.compile(pattern), prompt_width, tail

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.start:]
        window = new[:, -self.tail:].tolist()
        done = [bool(self.pattern.search(self.tokenizer.decode(row, skip_special_tokens=True))) for row in window]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                    max_prompt_tokens: int | None = None, progress: bool = False,
                    stop_pattern: str | None = None) -> list[str]:
    """Greedy continuations of `prompts` (special tokens removed), in input order.

    `batch_size`: prompts per `generate` call (16: fits a 135M model with 256 new tokens in a few GB).
    `max_prompt_tokens`: prompts longer than this are cut (decoder-only: from the left), None: no cut.
    `stop_pattern`: a row stops once its new text matches this regex (decoder-only; see the module docstring).
    """
    return generate_greedy_ends(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt_tokens,
                                progress, stop_pattern)[0]


def _end_of(row: list[int], eos: set[int], text_before, pattern: re.Pattern | None) -> str:
    """Why a row ended: "eos", "stop" (the stop pattern) or "budget". A finished row is padded, and the pad id is
    often the EOS id, so a row whose text up to its first EOS-id already matches the pattern ended by the pattern."""
    cut = next((j for j, t in enumerate(row) if t in eos), None)
    if pattern is not None and pattern.search(text_before(row if cut is None else row[:cut])):
        return "stop"
    return "budget" if cut is None else "eos"


@torch.no_grad()
def generate_greedy_ends(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                         max_prompt_tokens: int | None = None, progress: bool = False,
                         stop_pattern: str | None = None) -> tuple[list[str], list[str]]:
    """`generate_greedy`'s texts, and per row why it ended ("eos", "stop" or "budget"): a fine-tuned model should
    end at EOS where training put it; rows that run to the budget are the symptom of a train/eval mismatch."""
    enc_dec = is_encoder_decoder(model)
    gc = greedy_config(model, tokenizer, max_new_tokens)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    ends: list[str] = ["budget"] * len(prompts)
    eos = set(eos_ids(gc, tokenizer))
    pattern = re.compile(stop_pattern) if stop_pattern is not None and not enc_dec else None

    def text(row: list[int]) -> str:
        return tokenizer.decode(row, skip_special_tokens=True)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    for start in batches:
        idx = order[start:start + batch_size]
        batch = generation_batch(tokenizer, [prompts[i] for i in idx], max_prompt_tokens, enc_dec)
        batch = {k: v.to(device) for k, v in batch.items()}
        stop = None
        if stop_pattern is not None and not enc_dec:
            stop = StoppingCriteriaList([StopOnPattern(tokenizer, stop_pattern, batch["input_ids"].shape[1])])
        seqs = model.generate(**batch, generation_config=gc, stopping_criteria=stop)
        new = seqs if enc_dec else seqs[:, batch["input_ids"].shape[1]:]  # (B, new tokens)
        for i, row in zip(idx, new.tolist()):
            out[i] = text(row)
            # an encoder-decoder's first token is its decoder start (the EOS id in some models): not an end
            ends[i] = _end_of(row[1:] if enc_dec else row, eos, text, pattern)
    return [s if s is not None else "" for s in out], ends
