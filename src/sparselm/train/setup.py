"""Builders that turn a validated recipe into plain objects: accelerator, student/teacher models, data, phases.
(Configs do not reach past this file: the loop and losses take keyword arguments.)"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from sparselm.recipes.schema import FinetuneRecipe
from sparselm.train.data import Example, synthetic_arith, tokenize_items
from sparselm.train.loop import Phase


def resolve_precision(precision: str) -> str:
    """auto -> bf16 autocast on CUDA (fp32 master weights), fp32 on CPU (bf16 matmuls are slow there)."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def make_accelerator(recipe: FinetuneRecipe, block_cls: str | None = None):
    """An accelerate.Accelerator: single device, DDP under torchrun / accelerate launch, or FSDP2 when
    `train.fsdp` and more than one process."""
    from accelerate import Accelerator

    kwargs: dict[str, object] = {}
    if recipe.train.fsdp and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=[block_cls] if block_cls else None, reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT")
    precision = resolve_precision(recipe.train.precision)
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no",
                       cpu=not torch.cuda.is_available(), **kwargs)


def load_student(recipe: FinetuneRecipe) -> tuple[nn.Module, object]:
    """(model, tokenizer): a tiny model from its spec (character tokenizer, or a BPE trained on the recipe's
    training items), or `sparselm.models.load_model`."""
    spec = recipe.model
    if spec.tiny is not None:
        from sparselm.train.tiny import build_tiny_model, char_tokenizer

        t = spec.tiny
        tok = char_tokenizer() if t.tokenizer == "char" else trained_tokenizer(recipe)
        if t.vocab_size is not None and t.vocab_size < len(tok):
            raise ValueError(f"model.tiny.vocab_size {t.vocab_size} is below the tokenizer's {len(tok)} ids")
        model = build_tiny_model(t.arch, seed=recipe.train.seed, hidden_size=t.hidden_size,
                                 num_layers=t.num_layers, num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                                 intermediate_size=t.intermediate_size, vocab_size=t.vocab_size or len(tok),
                                 max_positions=t.max_positions, pad_id=tok.pad_token_id, bos_id=tok.bos_token_id,
                                 eos_id=tok.eos_token_id, dropout=t.dropout)
        return model, tok
    from sparselm.models import load_model

    model, tok = load_model(spec.name, kind=spec.kind)
    if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token  # right padding is masked out of every loss, so any id works
    return model.float(), tok


def load_teacher_from_path(recipe: FinetuneRecipe) -> tuple[nn.Module, object]:
    from sparselm.models import load_model

    assert recipe.teacher is not None and recipe.teacher.path
    model, tok = load_model(recipe.teacher.path, kind=recipe.model.kind)
    return model.float(), tok


def save_teacher_atomic(model: nn.Module, folder: Path) -> None:
    """Write the in-run teacher once (save_pretrained into a temp dir, then rename)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)


def reload_teacher(student: nn.Module, folder: Path) -> nn.Module:
    return type(student).from_pretrained(folder, dtype=torch.float32)


def snapshot(student: nn.Module) -> nn.Module:
    """A fresh copy of the student's architecture and weights (not a deepcopy: that would also copy hooks and
    regionally compiled `forward`s bound to the student's own blocks)."""
    with torch.random.fork_rng(devices=[]):  # the throw-away random init must not advance the run's RNG
        clone = type(student)(student.config)
    clone.load_state_dict(student.state_dict())
    return clone.to(next(student.parameters()).device)


#: ids a `train-bpe` tokenizer is trained to when model.tiny.vocab_size is unset (sparselm.data.tokenizer's default)
BPE_VOCAB = 8000


def trained_tokenizer(recipe: FinetuneRecipe):  # -> PreTrainedTokenizerFast
    """The `train-bpe` tokenizer: byte-level BPE on the prompts and targets of the recipe's training items (both
    languages for translation). Content-hashed and cached, so every run on the same items gets the same ids."""
    from sparselm.data.tokenizer import item_texts, train_tokenizer

    fields = _fields(recipe)
    size = recipe.model.tiny.vocab_size if recipe.model.tiny and recipe.model.tiny.vocab_size else BPE_VOCAB
    return train_tokenizer(item_texts(load_items(recipe), fields), size)


def _fields(recipe: FinetuneRecipe) -> tuple[str, str]:
    d = recipe.data
    return ("prompt", "completion") if d.source == "synthetic-arith" else (d.prompt_field, d.target_field)


def load_examples(recipe: FinetuneRecipe, tokenizer, causal: bool) -> list[Example]:
    return tokenize_items(load_items(recipe), tokenizer, recipe.train.seqlen, causal, *_fields(recipe))


def _task_items(d, split: str, limit: int | None) -> list[dict[str, str]]:
    from sparselm.data.registry import get_task

    kwargs = {**d.task_args, **({"data_dir": d.data_dir} if d.data_dir else {})}
    return get_task(d.task, **kwargs).items(split, limit=limit)


def _jsonl_items(path: str, limit: int | None) -> list[dict[str, str]]:
    from sparselm.data.jsonl import read_jsonl

    items = read_jsonl(path)
    return items[:limit] if limit else items


def load_items(recipe: FinetuneRecipe) -> list[dict[str, str]]:
    """The training items of `recipe.data` (before tokenization)."""
    d = recipe.data
    if d.source == "synthetic-arith":
        return synthetic_arith(d.num_examples or 512, d.max_operand, d.seed)
    items = _task_items(d, d.split, d.num_examples) if d.source == "task" else _jsonl_items(d.path, d.num_examples)
    if not items:
        raise ValueError(f"data: no items from source {d.source!r}")
    return items


def load_eval_examples(recipe: FinetuneRecipe, tokenizer, causal: bool) -> list[Example]:
    """The held-out items for `train.eval_every` (data.eval_split of the task, or data.eval_path), tokenized."""
    d = recipe.data
    if d.source == "task" and d.eval_split:
        items = _task_items(d, d.eval_split, d.eval_examples)
    elif d.eval_path:
        items = _jsonl_items(d.eval_path, d.eval_examples)
    else:
        raise ValueError(f"train.eval_every: data source {d.source!r} has no held-out data; set data.eval_split "
                         "(task) or data.eval_path (jsonl)")
    if not items:
        raise ValueError(f"train.eval_every: no held-out items in {d.eval_split or d.eval_path!r}")
    return tokenize_items(items, tokenizer, recipe.train.seqlen, causal, *_fields(recipe))


def plan_phases(recipe: FinetuneRecipe, batches_per_epoch: int) -> list[Phase]:
    """The run as phases: [dense-teacher]? then one per pruning stage, or a single dense phase."""
    t, loss = recipe.train, recipe.loss
    weights = {"ce": loss.ce, "kd": loss.kd, "squarehead": loss.squarehead}

    def length(steps: int | None, epochs: float | None) -> int:
        steps, epochs = steps or t.steps, epochs or (None if steps else t.epochs)
        if steps:
            return steps
        assert epochs is not None
        return max(1, math.ceil(epochs * batches_per_epoch / t.grad_accum))

    phases: list[Phase] = []
    if recipe.teacher is not None and recipe.teacher.source == "dense-finetune":
        phases.append(Phase(0, "dense-teacher", recipe.teacher.dense_steps, loss_weights={"ce": 1.0},
                            lr=recipe.teacher.dense_lr))
    if recipe.pruning is None:
        phases.append(Phase(len(phases), "dense", length(None, None), loss_weights=weights))
    else:
        for i, st in enumerate(recipe.pruning.stages):
            phases.append(Phase(len(phases), f"stage-{i}", length(st.steps, st.epochs), stage=i,
                                sparsity=st.sparsity, pattern=st.pattern, loss_weights=weights))
    return phases


def git_sha() -> str | None:
    """The project's commit, read from .git without running git (may be absent in an installed package)."""
    root = Path(__file__).resolve().parents[3] / ".git"
    try:
        ref = (root / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            return (root / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return None
