"""Tokenization and collation for causal LMs (prompt + completion) and seq2seq (T5-style) models.

Causal LM training example (CE on target tokens only):

    input_ids = prompt_ids + completion_ids + [eos]
    labels    = [-100] * len(prompt_ids) + completion_ids + [eos]      # -100: ignored by the CE loss

Prompt and completion are tokenized *separately* and concatenated, so the prompt tokens the model is trained on
are exactly those it sees at generation time (tokenizing the joined string could merge tokens across the
boundary). Training batches are padded on the right (labels -100 on padding); generation batches on the left,
so every row's last prompt token sits at the same position and new tokens are appended after it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

IGNORE_INDEX = -100  # label value skipped by torch.nn.functional.cross_entropy (its default ignore_index)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (many causal LMs ship without a pad token)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token")
    return int(pid)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The causal prompt as training builds it (`sparselm.train.data.tokenize_items`): BOS (when the tokenizer has
    one) + the prompt's ids, never a trailing EOS.

    BOS is added explicitly, not through `add_special_tokens`: many tokenizers define a BOS they do not add by
    themselves (SmolLM2's `<|im_start|>`), and a model fine-tuned with BOS in front of every prompt but asked
    without it runs off its training distribution (it stops answering at EOS and keeps writing).
    """
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    while ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids.pop()  # T5-style tokenizers append EOS; a causal prompt must not end the sequence
    bos = tokenizer.bos_token_id
    return ([int(bos)] if bos is not None else []) + ids


def encode_causal(tokenizer, prompt: str, completion: str, max_length: int | None = None,
                  add_eos: bool = True) -> dict[str, list[int]]:
    """One training example: `input_ids` and `labels` (-100 on the prompt).

    Too long for `max_length` (tokens): the prompt is cut from the left (its end, next to the answer, matters
    most); a completion longer than `max_length` on its own keeps its first `max_length` tokens, no prompt.
    """
    p = prompt_ids(tokenizer, prompt)
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        c.append(int(tokenizer.eos_token_id))
    if max_length is not None and len(p) + len(c) > max_length:
        c = c[:max_length]
        p = p[len(p) - (max_length - len(c)):] if max_length > len(c) else []
    return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}


def pad_right(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` (with `pad_id`) and `labels` (with -100); attention_mask 0 on padding."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token lists for batched generation: (B, T) input_ids and attention_mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def generation_batch(tokenizer, prompts: Sequence[str], max_length: int | None = None,
                     encoder_decoder: bool = False) -> dict[str, torch.Tensor]:
    """Prompts tokenized for `model.generate`: left-padded for a decoder-only model (prompts cut from the left
    to `max_length`); for an encoder-decoder, the encoder input as training builds it (prompt ids + EOS; padding
    side is irrelevant there, the attention mask hides it), cut from the right like the seq2seq collator."""
    if encoder_decoder:
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        seqs = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) + eos for p in prompts]
        seqs = [s[:max_length] if max_length else s for s in seqs]
    else:
        seqs = [prompt_ids(tokenizer, p) for p in prompts]
        seqs = [s[-max_length:] if max_length else s for s in seqs]
    return pad_left(seqs, pad_token_id(tokenizer))


class CausalLMCollator:
    """Items ({"prompt", "completion"}) → right-padded training batch with prompt/padding labels at -100.

    `max_length` in tokens; 1024 by default because GSM chains of thought stay under ~400 tokens and longer
    sequences only waste memory.
    """

    def __init__(self, tokenizer, max_length: int | None = 1024, add_eos: bool = True) -> None:
        self.tokenizer, self.max_length, self.add_eos = tokenizer, max_length, add_eos
        self.pad_id = pad_token_id(tokenizer)

    def encode(self, item: dict[str, Any]) -> dict[str, list[int]]:
        return encode_causal(self.tokenizer, item["prompt"], item["completion"], self.max_length, self.add_eos)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [it if "input_ids" in it else self.encode(it) for it in items]
        return pad_right(feats, self.pad_id)


class Seq2SeqCollator:
    """Items → encoder input (the prompt) and labels (the completion as given + EOS), both right-padded.

    The completion is not stripped: training (`sparselm.train.data.tokenize_items`) tokenizes it as given, and
    for a byte-level BPE " Sie" and "Sie" are different first tokens, so scoring a stripped reference would
    charge the model for a token it was never trained to emit (sentencepiece tokenizers treat both alike).

    The model builds decoder inputs by shifting the labels right (T5/BART/Whisper do it when given `labels`).
    Lengths in tokens: 512 source / 256 target by default, T5's pre-training source length and twice the
    longest German reference of the translation task.
    """

    def __init__(self, tokenizer, max_source_length: int = 512, max_target_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.pad_id = pad_token_id(tokenizer)

    def _with_eos(self, text: str, limit: int) -> list[int]:
        """The ids of `text` (no special tokens) + EOS: the rule training uses on both sides
        (`sparselm.train.data.tokenize_items`), so evaluation scores the sequences the model was trained on."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))  # the decoder must learn to stop
        return ids[:limit]

    def target_ids(self, completion: str) -> list[int]:
        return self._with_eos(completion, self.max_target_length)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        src = [self._with_eos(it["prompt"], self.max_source_length) for it in items]
        enc = pad_right([{"input_ids": s} for s in src], self.pad_id)
        tgt = pad_right([{"input_ids": self.target_ids(it["completion"])} for it in items], self.pad_id)  # -100 pads
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": tgt["labels"]}
