"""Capture block outputs with forward hooks during the model's own forward pass.

Hooks keep a reference to each block's output tensor (no `output_hidden_states=True`, which would also return the
embeddings and keep a tuple of every layer alive inside the model output). Optionally the forward is cut short
after the last captured block: a teacher that only feeds SquareHead never runs its final norm and LM head.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import nn

Blocks = list[tuple[str, nn.Module]]


class StopForward(Exception):
    """Raised from the last capture hook to skip the rest of a forward whose logits nobody reads."""


def select_blocks(blocks: Blocks, layers: Sequence[int] | str | None) -> Blocks:
    """A subset of `blocks` (forward order kept): None = all; a list of indices into the flat block list
    (negative counts from the end); or a regex searched in the full module names."""
    if layers is None:
        return list(blocks)
    if isinstance(layers, str):
        pattern = re.compile(layers)
        chosen = [b for b in blocks if pattern.search(b[0])]
        if not chosen:
            raise ValueError(f"loss.layers regex {layers!r} matches no block; blocks are "
                             f"{blocks[0][0]} … {blocks[-1][0]}")
        return chosen
    n = len(blocks)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"loss.layers index {i} is out of range for a model with {n} blocks")
    idx = sorted({i % n for i in layers})
    return [blocks[i] for i in idx]


class BlockCapture:
    """Forward hooks that store `block_hidden(output)` of each named block; read them with `take()`."""

    def __init__(self, blocks: Blocks, block_hidden: Callable[[object], torch.Tensor],
                 stop_after_last: bool = False) -> None:
        self.names = [name for name, _ in blocks]
        self.block_hidden = block_hidden
        self.stop_after_last = stop_after_last
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [mod.register_forward_hook(self._hook(name)) for name, mod in blocks]

    def _hook(self, name: str) -> Callable[..., None]:
        last = bool(self.names) and name == self.names[-1]

        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            self._out[name] = self.block_hidden(out)
            if last and self.stop_after_last:
                raise StopForward

        return hook

    def take(self) -> list[torch.Tensor]:
        """The captured hidden states in block order; clears the store so tensors are freed with the step."""
        missing = [n for n in self.names if n not in self._out]
        if missing:
            raise RuntimeError(f"blocks {missing[:3]} did not run in the forward pass")
        outs = [self._out[n] for n in self.names]
        self._out = {}
        return outs

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._out = {}


def block_stack_ids(stacks: list[Blocks], chosen: Blocks) -> list[int]:
    """For each chosen block, the index of its stack (0 = encoder / only stack, 1 = decoder)."""
    where = {name: i for i, stack in enumerate(stacks) for name, _ in stack}
    return [where[name] for name, _ in chosen]


def hidden_token_masks(batch: dict[str, torch.Tensor], stack_ids: Sequence[int], hidden: Sequence[torch.Tensor],
                       encoder_decoder: bool) -> list[torch.Tensor | None]:
    """The (B, T) real-token mask of each captured layer, or None (= all real).

    Decoder-only: `attention_mask`. Encoder-decoder: encoder blocks use `attention_mask` (absent for Whisper's
    audio frames -> None); decoder blocks use `decoder_attention_mask` or, failing that, `labels != -100`
    (decoder position i is fed labels[i-1] and predicts labels[i]). A mask whose shape does not match the hidden
    state (e.g. Whisper's 2x conv downsampling) falls back to None.
    """
    if encoder_decoder:
        dec = batch.get("decoder_attention_mask")
        if dec is None and batch.get("labels") is not None:
            dec = batch["labels"] != -100
        per_stack = [batch.get("attention_mask"), dec]
    else:
        per_stack = [batch.get("attention_mask")]
    masks: list[torch.Tensor | None] = []
    for sid, h in zip(stack_ids, hidden, strict=True):
        m = per_stack[sid] if sid < len(per_stack) else None
        masks.append(m if m is not None and tuple(m.shape) == tuple(h.shape[:2]) else None)
    return masks
