"""Save / load a whole compressed model as a directory (layout: FORMAT.md, "A whole compressed model").

model.safetensors holds each compressed layer's `<name>.{bitmask,values,row_ptr[,scales]}` and every other
state_dict tensor; compression.json lists the compressed layers with their metadata; config.json is the HF config.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparselm.compress.format import (FORMAT_NAME, FORMAT_VERSION, CompressedFormatError, CompressedTensor,
                                      check_metadata, pack_int4, unpack_int4, validate)

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "compression.json"
_PARTS = ("bitmask", "values", "row_ptr", "scales")


def _compressed_layers(model: torch.nn.Module) -> dict[str, Any]:
    from sparselm.runtime.sparse_linear import SparseLinear  # runtime sits above compress; import late

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SparseLinear)}


def save_compressed(model: torch.nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write `model` (whose sparse layers are SparseLinear modules) to `out_dir`; returns the directory.

    Dense tensors that share storage (tied embeddings) are written once and recorded under "tied".
    Files are written to a temporary directory first and moved in place, so a failure leaves nothing half-written.
    """
    out = Path(out_dir)
    layers = _compressed_layers(model)
    if not layers:
        raise CompressedFormatError("model: holds no SparseLinear layer; run sparselm.runtime.sparsify first")
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, Any] = {}
    for name, mod in layers.items():
        ct: CompressedTensor = mod.compressed
        validate(ct, name)
        for key, t in ct.tensors(prefix=f"{name}.").items():
            if ct.bits == 4 and key == f"{name}.values":  # int4: two codes per byte on disk
                t = pack_int4(t.detach().cpu())
            tensors[key] = t.detach().cpu().contiguous()
        if mod.bias is not None:
            tensors[f"{name}.bias"] = mod.bias.detach().cpu().contiguous()
        meta_layers[name] = ct.metadata()
    seen: dict[tuple[int, int], str] = {}
    tied: dict[str, str] = {}
    for key, t in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in layers:
            continue
        sig = (t.untyped_storage().data_ptr(), t.storage_offset())
        if sig in seen and t.numel() > 0:
            tied[key] = seen[sig]
            continue
        seen[sig] = key
        tensors[key] = t.detach().cpu().contiguous()
    dense_dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "layers": meta_layers, "tied": tied,
             "dense_dtypes": sorted(dense_dtypes)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)})
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
    if getattr(model, "config", None) is not None:
        model.config.save_pretrained(str(tmp))
    out.mkdir(exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out


def read_index(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / INDEX_FILE
    if not path.is_file():
        raise CompressedFormatError(f"{path}: missing; not a sparselm compressed model directory")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompressedFormatError(f"{path}: not valid JSON ({e})") from None
    check = {**index, "values_dtype": "float16", "shape": [0, 0]}  # the file-level header has no shape
    check_metadata(check, str(path))
    for name, meta in index.get("layers", {}).items():
        check_metadata(meta, name)
    return index


def load_compressed_tensors(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
                            ) -> tuple[dict[str, CompressedTensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate every layer: ({layer: CompressedTensor}, {dense key: tensor}, index)."""
    index = read_index(model_dir)
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CompressedFormatError(f"{path}: missing")
    try:
        f = safe_open(str(path), framework="pt", device=str(device))
    except Exception as e:  # safetensors raises its own error types on a truncated/corrupt header
        raise CompressedFormatError(f"{path}: unreadable safetensors file ({e})") from None
    with f:
        keys = set(f.keys())

        def get(key: str) -> torch.Tensor:
            try:
                return f.get_tensor(key)
            except Exception as e:
                raise CompressedFormatError(f"{key}: unreadable ({e})") from None

        layers: dict[str, CompressedTensor] = {}
        claimed: set[str] = set()
        for name, meta in index["layers"].items():
            need = [p for p in _PARTS[:3] if f"{name}.{p}" not in keys]
            if need:
                raise CompressedFormatError(f"{name}.{need[0]}: missing from {path}")
            parts = {p: get(f"{name}.{p}") for p in _PARTS if f"{name}.{p}" in keys}
            claimed |= {f"{name}.{p}" for p in parts}
            n, k = meta["shape"]
            values, bits = parts["values"], 8
            if meta["values_dtype"] == "int4":
                nnz = meta.get("nnz")
                if not isinstance(nnz, int) or nnz < 0:
                    raise CompressedFormatError(f"{name}: int4 values need the metadata's nnz, got {nnz!r}")
                values, bits = unpack_int4(values, nnz, f"{name}.values"), 4
            ct = CompressedTensor((n, k), parts["bitmask"], values, parts["row_ptr"],
                                  parts.get("scales"), meta.get("group_size"), bits)
            if ct.values_dtype != meta["values_dtype"]:
                raise CompressedFormatError(f"{name}.values: dtype {ct.values_dtype}, metadata says "
                                            f"{meta['values_dtype']}")
            validate(ct, name)
            layers[name] = ct
        dense = {k: get(k) for k in keys - claimed}
    return layers, dense, index


def _rebuild_nonpersistent_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Buffers outside the state_dict (rotary inv_freq) stay on meta after a meta build: re-run their init."""
    for name, mod in list(model.named_modules()):
        if any(b.is_meta for b in mod.buffers(recurse=False)):
            cfg = getattr(mod, "config", None)
            if cfg is None:
                raise RuntimeError(f"{name}: has a meta buffer and no config to rebuild it from")
            with torch.device(device):
                fresh = type(mod)(cfg)
            for bname, buf in fresh.named_buffers(recurse=False):
                setattr(mod, bname, buf)
            for attr in ("attention_scaling",):
                if hasattr(fresh, attr):
                    setattr(mod, attr, getattr(fresh, attr))


def load_compressed(model_dir: str | os.PathLike, device: str | torch.device = "cpu",
                    model_cls: Any = None) -> torch.nn.Module:
    """Build the HF model of `model_dir` with SparseLinear layers, without ever materializing dense weights.

    model_cls: a transformers class (default: config.architectures[0], else AutoModelForCausalLM).
    """
    import transformers

    from sparselm.runtime.sparse_linear import SparseLinear

    device = torch.device(device)
    layers, dense, index = load_compressed_tensors(model_dir, device)
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    if model_cls is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_cls = getattr(transformers, arch, None) if arch else None
        model_cls = model_cls or transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = (model_cls.from_config(config) if hasattr(model_cls, "from_config")
                 else model_cls._from_config(config))
    for name, ct in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child, None)
        if not isinstance(old, torch.nn.Linear):
            raise CompressedFormatError(f"{name}: not an nn.Linear in {model_cls.__name__}")
        if (old.out_features, old.in_features) != ct.shape:
            raise CompressedFormatError(f"{name}: shape {ct.shape} != model's {(old.out_features, old.in_features)}")
        bias = dense.pop(f"{name}.bias", None)
        setattr(parent, child, SparseLinear(ct, bias=bias))
    for alias, src in index.get("tied", {}).items():
        if src not in dense:
            raise CompressedFormatError(f"{alias}: tied to {src}, which is missing")
        dense[alias] = dense[src]
    missing, unexpected = model.load_state_dict(dense, strict=False, assign=True)
    missing = [m for m in missing if m.rsplit(".", 1)[0] not in layers]
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise CompressedFormatError(f"{bad}: {'missing from' if missing else 'unknown to'} the model "
                                    f"({len(missing)} missing, {len(unexpected)} unexpected)")
    _rebuild_nonpersistent_buffers(model, device)
    return model.eval()
