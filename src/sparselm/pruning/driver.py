"""The one architecture-agnostic, sequential, layer-by-layer calibration driver.

For each stack of blocks (the decoder of a causal LM; encoder then decoder of T5/Whisper):
  1. one forward of the model over the calibration batches records, with pre-hooks, every block's call arguments
     (attention masks, rotary embeddings, T5 position biases, the encoder output for a decoder, ...) and the hidden
     state entering the first block. Recording each block's own arguments, rather than reusing block 0's, is what
     makes this work for models whose blocks differ (Gemma-3 alternates sliding and global attention masks).
  2. block l is run on its inputs with hooks feeding each of its prunable layers' pruner, pruned, and run again:
     its *pruned* outputs are the inputs of block l+1 (the sequential scheme of SparseGPT: later blocks learn to
     live with the errors of earlier ones).
Because the decoder's capture pass runs after the encoder is pruned, decoder blocks see the pruned encoder's output.
With `offload=True` only the block in hand sits on the accelerator; everything else stays on the CPU.
"""
from __future__ import annotations

import inspect
import logging
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from sparselm.models.adapters import block_linears, get_adapter
from sparselm.pruning.base import get_pruner
from sparselm.pruning.calibration import calibration_batches
from sparselm.sparsity.masks import check_sparsity, parse_pattern
from sparselm.sparsity.report import sparsity_report

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last block's pre-hook: nothing after the current stack is needed."""


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _hidden_arg_name(block: nn.Module) -> str:
    return next(iter(inspect.signature(block.forward).parameters))


def _capture_stack(model, blocks, batches, device, offload):
    """Per batch: the hidden state entering block 0, and each block's call kwargs (its hidden state left out)."""
    sigs = [inspect.signature(b.forward) for _, b in blocks]
    hidden0: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in blocks]
    handles = []

    def pre_hook(idx):
        def hook(mod, args, kw):
            bound = sigs[idx].bind_partial(*args, **kw).arguments
            flat = dict(bound)
            extra = flat.pop("kwargs", None)
            if isinstance(extra, dict):
                flat.update(extra)
            name = next(iter(sigs[idx].parameters))
            h = flat.pop(name)
            if idx == 0:
                hidden0.append(h)
            flat.pop("use_cache", None)
            kwargs[idx].append(flat)
            if offload:
                mod.to(device)
            if idx == len(blocks) - 1:
                raise _StopForward
            return None
        return hook

    def post_hook(mod, args, out):
        mod.to("cpu")

    for i, (_, blk) in enumerate(blocks):
        handles.append(blk.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        if offload:
            handles.append(blk.register_forward_hook(post_hook))
    try:
        for batch in batches:
            try:
                model(**_to(batch, device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden0, kwargs


def _parse_target(sparsity, pattern):
    if (sparsity is None) == (pattern is None):
        raise ValueError("give exactly one of sparsity (unstructured) or pattern (N:M)")
    if pattern is not None:
        n, m = parse_pattern(pattern)
        return None, n, m, pattern
    return check_sparsity(sparsity), None, None, float(sparsity)


@torch.no_grad()
def prune_model(model: nn.Module, method: str = "sparsegpt", sparsity: float | None = 0.5,
                pattern: str | None = None, calib=None, tokenizer=None, nsamples: int = 128, seqlen: int = 512,
                batch_size: int = 8, keep_zeros: bool = True, scope: str | None = None,
                device: str | torch.device | None = None, offload: bool = False, seed: int = 0,
                progress: bool = True) -> dict:
    """Prune every linear layer inside `model`'s transformer blocks in place; return the sparsity report.

    sparsity: fraction of zeros in [0, 1) (unstructured), or pattern "N:M" (keep N of every M inputs); a pattern
              takes precedence over the default sparsity, so `prune_model(m, pattern="2:4")` needs no sparsity=None.
    calib: text file / JSONL / HF dataset dir / str / list of model-input dicts (not needed for magnitude).
    scope: unstructured selection "row" | "layer" | "block" (default per pruner: magnitude layer, Wanda row,
           SparseGPT block). keep_zeros: already-zero weights stay pruned (staged pruning).
    """
    if pattern is not None and sparsity is not None and pattern:
        sparsity = None
    sparsity, n, m, target = _parse_target(sparsity, pattern)
    pruner_cls = get_pruner(method)
    adapter = get_adapter(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    home = next(model.parameters()).device
    batches = calibration_batches(model, tokenizer, calib, nsamples, seqlen, batch_size, seed) \
        if pruner_cls.needs_inputs else []
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    if offload:  # blocks stay on the CPU and visit the accelerator one at a time
        model.to("cpu")
    else:
        model.to(device)
    try:
        for stack in adapter.stacks_of_blocks(model):
            _prune_stack(model, adapter, stack, pruner_cls, batches, device, offload, sparsity, n, m,
                         keep_zeros, scope, progress)
    finally:
        model.to(home)
        model.train(was_training)
    report = sparsity_report(model, method, target)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _prune_stack(model, adapter, stack, pruner_cls, batches, device, offload, sparsity, n, m, keep_zeros, scope,
                 progress):
    if pruner_cls.needs_inputs:
        if offload:
            _move_non_blocks(model, adapter, device)
        hidden, kwargs = _capture_stack(model, stack, batches, device, offload)
    bar = tqdm(stack, desc="prune", unit="block", disable=not progress, leave=False)
    for idx, (bname, block) in enumerate(bar):
        block.to(device)
        pruners = {name: pruner_cls(layer) for name, layer in block_linears(block).items()}
        if pruner_cls.needs_inputs:
            handles = [layer.register_forward_hook(
                lambda mod, inp, out, p=pruners[name]: p.add_batch(inp[0]))
                for name, layer in block_linears(block).items()]
            for h, kw in zip(hidden, kwargs[idx]):
                block(h, **kw)
            for handle in handles:
                handle.remove()
        for pruner in pruners.values():
            pruner.prune(sparsity=sparsity, n=n, m=m, keep_zeros=keep_zeros, scope=scope)
            pruner.free()
        if pruner_cls.needs_inputs and idx + 1 < len(stack):  # the pruned block feeds the next one
            hidden = [adapter.block_hidden(block(h, **kw)) for h, kw in zip(hidden, kwargs[idx])]
        if offload:
            block.to("cpu")
        del pruners


def _move_non_blocks(model, adapter, device):
    """Put everything except the blocks on `device` (embeddings, rotary tables, final norm, heads)."""
    inside = {id(m) for _, b in adapter.blocks(model) for m in b.modules()}
    for mod in model.modules():
        if id(mod) in inside:
            continue
        for p in mod.parameters(recurse=False):
            p.data = p.data.to(device)
        for name, buf in list(mod.named_buffers(recurse=False)):
            mod._buffers[name] = buf.to(device)
