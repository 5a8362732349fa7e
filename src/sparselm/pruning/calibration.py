"""Calibration data for one-shot pruning: random fixed-length token windows from a text source.

Sources: a plain-text file, a JSONL file (`text`, or `prompt`+`completion`), a local HF `datasets` directory
(saved with `save_to_disk`, column `text`), a Python string or list of strings, or ready-made batches
(a list of dicts that `model(**batch)` accepts — the way to calibrate speech models on audio features).
"""
from __future__ import annotations

from pathlib import Path

import torch


class CalibrationError(ValueError):
    """Unusable calibration data (missing, empty, or too short for the requested windows)."""


def read_text(source: str | Path) -> str:
    """All text of a calibration file or dataset directory, documents joined by blank lines."""
    path = Path(source)
    if not path.exists():
        raise CalibrationError(f"calibration source {path} does not exist")
    if path.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError as err:
            raise CalibrationError(f"{path} is a directory: reading HF datasets needs `pip install datasets`") from err
        ds = load_from_disk(str(path))
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict: take its first split
            ds = ds[sorted(ds.keys())[0]]
        if "text" not in ds.column_names:
            raise CalibrationError(f"dataset {path} has no 'text' column (columns: {ds.column_names})")
        docs = [t for t in ds["text"] if t]
    elif path.suffix in (".jsonl", ".json"):
        from sparselm.data.jsonl import read_jsonl

        try:
            rows = read_jsonl(path)
        except ValueError as err:
            raise CalibrationError(str(err)) from None
        docs = []
        for lineno, row in enumerate(rows, 1):
            text = row.get("text")
            if text is None and "prompt" in row:
                text = str(row["prompt"]) + str(row.get("completion", ""))
            if text is None:
                raise CalibrationError(f"{path}: record {lineno}: expected a 'text' (or 'prompt'/'completion') field")
            docs.append(str(text))
    else:
        docs = [path.read_text(encoding="utf-8", errors="replace")]
    text = "\n\n".join(d for d in docs if d.strip())
    if not text.strip():
        raise CalibrationError(f"calibration source {path} is empty")
    return text


def token_windows(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, seqlen) token ids: windows at random offsets of the tokenized text (seeded, reproducible)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < seqlen:
        raise CalibrationError(
            f"calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen}: give more text or a shorter --seqlen")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def calibration_batches(model, tokenizer, source, nsamples: int = 128, seqlen: int = 512, batch_size: int = 8,
                        seed: int = 0) -> list[dict]:
    """Batches that `model(**batch)` accepts, built from any supported source (see module docstring)."""
    if isinstance(source, list) and source and isinstance(source[0], dict):
        return source
    if nsamples <= 0 or seqlen <= 0:
        raise CalibrationError(f"nsamples and seqlen must be positive (got {nsamples}, {seqlen})")
    cfg = model.config
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if max_pos and seqlen > max_pos:
        raise CalibrationError(f"seqlen={seqlen} exceeds the model's context ({max_pos} positions)")
    if getattr(cfg, "model_type", "") == "whisper":
        raise CalibrationError("Whisper calibrates on audio: pass a list of {'input_features', 'decoder_input_ids'}"
                               " batches (sparselm.data.asr builds them)")
    if tokenizer is None:
        raise CalibrationError("text calibration needs a tokenizer")
    if isinstance(source, (list, tuple)):
        text = "\n\n".join(map(str, source))
    elif isinstance(source, str) and ("\n" in source or len(source) > 255):
        text = source  # raw text passed directly (a path is one short line)
    else:
        text = read_text(source)
    windows = token_windows(tokenizer, text, nsamples, seqlen, seed)
    batches = []
    for i in range(0, nsamples, batch_size):
        ids = windows[i:i + batch_size]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(cfg, "is_encoder_decoder", False):  # seq2seq: the decoder sees the same window
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids}
        batches.append(batch)
    return batches
