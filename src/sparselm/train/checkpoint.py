"""Atomic, pickle-free training checkpoints.

    <root>/<name>/model.safetensors       student weights (tied weights stored once)
                  masks.safetensors       fixed masks as uint8 (absent in dense phases)
                  optimizer.safetensors   AdamW tensors, keyed "<param index>.<state key>"
                  optimizer.json          param groups (scalars) + the parameter name of each index
                  rng.safetensors         torch CPU / CUDA generator states
                  state.json              phase, step, global step, schedule state, metrics so far
                  recipe.yaml             the resolved recipe
    <root>/latest                         name of the newest complete checkpoint (updated last)

A checkpoint is written into a temporary directory, every file fsync'ed, then renamed into place and the directory
fsync'ed, and only then `latest` is replaced (itself via rename): a crash at any point leaves the previous
checkpoint intact and `latest` naming a complete one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

LATEST = "latest"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def optimizer_tensors(optimizer: torch.optim.Optimizer,
                      names: dict[nn.Parameter, str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into safetensors-able tensors and JSON scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    params = [p for g in optimizer.param_groups for p in g["params"]]
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "param_names": [names[p] for p in params]}
    return tensors, meta


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   names: dict[nn.Parameter, str]) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if [names[p] for p in params] != meta["param_names"]:
        raise ValueError("checkpoint optimizer state belongs to a different parameter list (model or recipe changed)")
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(root: Path, name: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    masks: dict[str, torch.Tensor] | None, state: dict[str, Any], recipe_yaml: str,
                    keep: int = 2) -> Path:
    """Write checkpoint `root/name` atomically, point `latest` at it, keep the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    if masks:
        save_file(masks, str(tmp / "masks.safetensors"))
    if optimizer is not None:
        names = {p: n for n, p in model.named_parameters()}
        tensors, meta = optimizer_tensors(getattr(optimizer, "optimizer", optimizer), names)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")
    save_file(rng_tensors(), str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    final = root / name
    if final.exists():  # a re-run of the same step after a resume: replace it (latest still names the old one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST, name)
    _prune_old(root, keep, name)
    return final


def _prune_old(root: Path, keep: int, current: str) -> None:
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime_ns)
    for old in done[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    ptr = root / LATEST
    if not ptr.is_file():
        return None
    path = root / ptr.read_text(encoding="utf-8").strip()
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{ptr} names {path.name}, which is not a complete checkpoint")
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def load_weights(path: Path, model: nn.Module) -> None:
    """Load `path/model.safetensors` into `model` (tied duplicates may be absent from the file)."""
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected or [m for m in missing if not _is_tied(model, m)]:
        raise ValueError(f"{path}/model.safetensors does not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
    """Restore AdamW state from `path` if the checkpoint has one; returns whether it did."""
    if not (path / "optimizer.safetensors").is_file():
        return False
    names = {p: n for n, p in model.named_parameters()}
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    load_optimizer(getattr(optimizer, "optimizer", optimizer), load_file(str(path / "optimizer.safetensors")),
                   meta, names)
    return True


def load_rng(path: Path) -> None:
    set_rng(load_file(str(path / "rng.safetensors")))


def load_masks(path: Path) -> dict[str, torch.Tensor] | None:
    f = path / "masks.safetensors"
    return load_file(str(f)) if f.is_file() else None


def _is_tied(model: nn.Module, name: str) -> bool:
    """A key missing from the file because it shares storage with a saved one (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(name)
    return p is not None and sum(q is p for q in params.values()) > 1
