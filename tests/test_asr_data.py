"""ASR data: transcript normalization + WER, sentence splits, espeak-ng synthesis cache, pocketsphinx clip parsing,
the Whisper fine-tuning collator and batched transcription (tiny random Whisper)."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

from sparselm.data import asr
from sparselm.data.asr import (IGNORE_INDEX, SyntheticASRConfig, WhisperASRCollator, load_wav, normalize_transcript,
                               real_clips, sentence_splits, synthetic_asr, template_sentences, transcribe, wer)
from sparselm.models.whisper_ct2 import whisper_tokenizer_from_ct2

HAS_ESPEAK = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> WhisperProcessor:
    """A byte-level tokenizer (no merges) with Whisper's special tokens, and an 80-mel feature extractor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tok.to_str())
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                            tokenizer=whisper_tokenizer_from_ct2(path, vocab_size=280, multilingual=False))


def test_normalization_and_wer_values() -> None:
    got = normalize_transcript("  Cold-hearted, rather SELFISH!  Mr. Dashwood's ")
    assert got == "cold hearted rather selfish mr dashwoods"
    assert wer(["a b c d"], ["a x c"]) == pytest.approx(0.5)  # one substitution + one deletion over 4 words
    assert wer(["Ten of clubs", "five five"], ["ten of clubs.", "Five, five!"]) == 0.0
    assert wer(["one two"], ["one two three four"]) == pytest.approx(1.0)  # two insertions over 2 words
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        wer(["..."], ["a"])


def test_sentences_and_splits_are_deterministic_and_disjoint() -> None:
    sents = template_sentences(300, seed=3)
    assert len(set(sents)) == 300 and sents == template_sentences(300, seed=3)
    assert sents != template_sentences(300, seed=4)
    assert all(s[0].isupper() and s[-1] in ".?" and not any(ch.isdigit() for ch in s) for s in sents)
    cfg = SyntheticASRConfig(n_sentences=300, seed=3)
    splits = sentence_splits(cfg)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [240, 30, 30]
    sets = [set(v) for v in splits.values()]
    assert sum(map(len, sets)) == 300 and len(set.union(*sets)) == 300  # disjoint and complete
    assert splits == sentence_splits(SyntheticASRConfig(n_sentences=300, seed=3))
    with pytest.raises(ValueError, match="sum to 1"):
        SyntheticASRConfig(fractions=(0.5, 0.2, 0.2))


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng/sox missing: apt-get install -y espeak-ng sox")
def test_synthetic_clips_cached_and_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = synthetic_asr(tmp_path, n_sentences=10, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "validation": 1, "test": 1}
    ex = splits["train"][0]
    assert ex["audio"].dtype == np.float32 and 0.5 * 16_000 < len(ex["audio"]) < 10 * 16_000
    assert np.abs(ex["audio"]).max() > 0.05  # speech, not silence
    assert ex["text"] == sentence_splits(SyntheticASRConfig(n_sentences=10, seed=1))["train"][0]
    monkeypatch.setattr(asr, "synthesize", lambda *a, **k: pytest.fail("cache miss: re-synthesized"))
    again = synthetic_asr(tmp_path, n_sentences=10, seed=1)
    assert again["test"].texts() == splits["test"].texts()


def test_missing_tools_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(asr.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng sox"):
        synthetic_asr(tmp_path, n_sentences=5)


def test_real_clips_parsing_and_errors(tmp_path: Path) -> None:
    lib, cards = tmp_path / "librivox", tmp_path / "cards"
    _write_wav(lib / "utt-1.wav", np.zeros(1600)), _write_wav(cards / "001.wav", np.zeros(800))
    (lib / "fileids").write_text("utt-1\n")
    (lib / "transcription").write_text("<s> he was not an ill disposed young man </s> (utt-1)\n")
    (cards / "cards.fileids").write_text("001\n")
    (cards / "cards.transcription").write_text("<s> ten of clubs  </s> (001)\n")
    clips = real_clips(tmp_path)
    assert [it.id for it in clips.items] == ["librivox/utt-1", "cards/001"]
    assert clips.texts() == ["he was not an ill disposed young man", "ten of clubs"]
    assert [len(a) for a in clips.audios()] == [1600, 800]
    with pytest.raises(FileNotFoundError, match="apt-get install -y pocketsphinx-testdata"):
        real_clips(tmp_path / "nowhere")
    _write_wav(tmp_path / "fast.wav", np.zeros(100), rate=22_050)
    with pytest.raises(ValueError, match="22050 Hz"):
        load_wav(tmp_path / "fast.wav")


@pytest.mark.assets
def test_real_pocketsphinx_clips_present() -> None:
    if not (asr.POCKETSPHINX_DATA / "librivox" / "transcription").is_file():
        pytest.skip("pocketsphinx clips missing: apt-get install -y pocketsphinx-testdata")
    clips = real_clips()
    assert len(clips) == 10 and clips.texts()[5] == "ten of clubs"
    assert all(4_000 < len(a) < 30 * 16_000 for a in clips.audios())


def test_collator_shapes_and_label_padding(processor: WhisperProcessor) -> None:
    t = np.arange(16_000 * 2) / 16_000
    examples = [{"audio": 0.1 * np.sin(2 * np.pi * 440 * t[: 16_000 * (i + 1)]), "text": text}
                for i, text in enumerate(["Hi there.", "A much longer transcript here."])]
    batch = WhisperASRCollator(processor)(examples)
    assert batch["input_features"].shape == (2, 80, 3000) and batch["input_features"].dtype == torch.float32
    labels, tok = batch["labels"], processor.tokenizer
    notimestamps, eot = tok.convert_tokens_to_ids("<|notimestamps|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert labels.shape == (2, len(" A much longer transcript here.") + 2)  # byte tokens + prefix + eot
    assert labels[:, 0].tolist() == [notimestamps] * 2  # <|startoftranscript|> is left to the model's shift
    n_short = len(" Hi there.") + 2
    assert labels[0, n_short - 1] == eot and (labels[0, n_short:] == IGNORE_INDEX).all()
    text = tok.decode(labels[1][labels[1] != IGNORE_INDEX], skip_special_tokens=True)
    assert text == " A much longer transcript here."
    with pytest.raises(ValueError, match="max_label_tokens"):
        WhisperASRCollator(processor, max_label_tokens=5)(examples)


def test_transcribe_batches_and_loss_on_collated_batch(processor: WhisperProcessor) -> None:
    torch.manual_seed(0)
    tok = processor.tokenizer
    eot, sot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftranscript|>")
    cfg = WhisperConfig(vocab_size=280, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                        decoder_start_token_id=sot, suppress_tokens=None, begin_suppress_tokens=None)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config.no_timestamps_token_id = tok.convert_tokens_to_ids("<|notimestamps|>")
    model.generation_config.is_multilingual = False
    audios = [np.random.default_rng(i).normal(0, 0.1, 16_000).astype(np.float32) for i in range(5)]
    hyps = transcribe(model, processor, audios, batch_size=2, max_new_tokens=4)
    assert len(hyps) == 5 and all(isinstance(h, str) for h in hyps)
    batch = WhisperASRCollator(processor)([{"audio": a, "text": "ok"} for a in audios[:2]])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0
    with pytest.raises(ValueError, match="batch_size"):
        transcribe(model, processor, audios, batch_size=0)


def test_voices_and_noise_vary_clips_and_keep_old_fingerprints(tmp_path: Path) -> None:
    # a config without the optional fields names the same cache entry as before they existed
    assert SyntheticASRConfig(n_sentences=400).fingerprint() == "dc035bf2e928"
    cfg = dict(n_sentences=6, seed=3, voices=("en-us+f3", "en-gb-x-rp+m2"), noise_snr_db=(20.0,))
    assert SyntheticASRConfig(**cfg).fingerprint() != SyntheticASRConfig(n_sentences=6, seed=3).fingerprint()
    splits = synthetic_asr(tmp_path, **cfg)
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    items = [it for v in manifest["splits"].values() for it in v]
    assert {it["voice"] for it in items} <= set(cfg["voices"]) and all(it["snr_db"] == 20.0 for it in items)
    synthetic_asr(tmp_path / "clean", n_sentences=6, seed=3)
    wav = next((tmp_path / "clean").glob("*/test/*.wav"))
    noisy = tmp_path / "noisy.wav"
    shutil.copyfile(wav, noisy)
    asr.add_noise(noisy, 20.0, seed=1)
    a, b = asr.load_wav(noisy), asr.load_wav(wav)
    snr = 10 * np.log10(np.mean(b ** 2) / np.mean((a - b) ** 2))
    assert a.shape == b.shape and 19.0 < snr < 21.0, snr
