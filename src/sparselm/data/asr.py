"""Speech recognition data for Whisper: synthetic espeak-ng clips with exact transcripts, the real pocketsphinx
clips for evaluation, a fine-tuning collator, batched greedy transcription and WER.

    from sparselm.data.asr import synthetic_asr, real_clips, WhisperASRCollator, transcribe, wer
    splits = synthetic_asr("out/asr_cache", n_sentences=400)       # {"train", "validation", "test"}
    batch = WhisperASRCollator(processor)([splits["train"][i] for i in range(8)])
    clips = real_clips()                                            # 10 real 16 kHz clips, evaluation only
    print(wer(clips.texts(), transcribe(model, processor, clips.audios(), batch_size=5)))

WER = (S + D + I) / N over the whole corpus (jiwer), after `normalize_transcript` on both sides: lowercase,
hyphens/dashes -> space, other punctuation removed, whitespace collapsed. Nothing else is mapped ("Mr." stays
"mr", so a reference "mister" counts one substitution).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator
from transformers.utils import logging as hf_logging

__all__ = [
    "SAMPLE_RATE", "POCKETSPHINX_DATA", "IGNORE_INDEX", "SpeechItem", "SpeechDataset", "SyntheticASRConfig",
    "template_sentences", "sentence_splits", "synthesize", "synthetic_asr", "real_clips", "load_wav",
    "normalize_transcript", "wer", "WhisperASRCollator", "transcribe", "evaluate_wer",
]

SAMPLE_RATE = 16_000  # Hz: Whisper's feature extractor expects 16 kHz mono
POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")  # Debian pocketsphinx-testdata
IGNORE_INDEX = -100  # label id that torch's cross-entropy skips (padding of `labels`)
_APT_HINT = "install it with `apt-get install -y espeak-ng sox` (as root, after `apt-get update`)"


# ---------------------------------------------------------------------------------------------- audio + text


def load_wav(path: str | Path) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV as float32 samples in [-1, 1); one-line error for any other format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: {rate} Hz, {channels} ch, {8 * width}-bit; need 16000 Hz mono 16-bit "
                             f"(convert with `sox in.wav -r 16000 -c 1 -b 16 out.wav`)")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def normalize_transcript(text: str) -> str:
    """Lowercase; hyphens and dashes -> space; other punctuation removed; whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Pd":  # "cold-hearted" must match a reference "cold hearted"
            chars.append(" ")
        elif not cat.startswith("P"):
            chars.append(ch)
    return " ".join("".join(chars).split())


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate (S + D + I) / N of normalized transcripts (jiwer)."""
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"wer: {len(refs)} references but {len(hyps)} hypotheses")
    refs_n, hyps_n = [normalize_transcript(r) for r in refs], [normalize_transcript(h) for h in hyps]
    empty = [i for i, r in enumerate(refs_n) if not r]
    if empty:
        raise ValueError(f"wer: reference {empty[0]} is empty after normalization")
    return float(jiwer.wer(refs_n, hyps_n))


# ------------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class SpeechItem:
    """One clip: an id, its exact transcript and the path of a 16 kHz mono WAV."""

    id: str
    text: str
    path: Path


class SpeechDataset(torch.utils.data.Dataset):
    """Clips loaded lazily; an example is ``{"id", "text", "audio": float32 (n_samples,) at 16 kHz}``."""

    def __init__(self, items: Sequence[SpeechItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        return {"id": item.id, "text": item.text, "audio": load_wav(item.path)}

    def texts(self) -> list[str]:
        return [it.text for it in self.items]

    def audios(self) -> list[np.ndarray]:
        return [load_wav(it.path) for it in self.items]


def _read_transcriptions(path: Path) -> dict[str, str]:
    """Sphinx transcription lines ``<s> words </s> (utt_id)`` -> {utt_id: words}."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\((\S+)\)\s*", line)
        if m is None:
            raise ValueError(f"{path}:{n}: not a '<s> text </s> (id)' line")
        out[m.group(2)] = " ".join(m.group(1).split())
    return out


def real_clips(root: str | Path = POCKETSPHINX_DATA, subsets: Sequence[str] = ("librivox", "cards")) -> SpeechDataset:
    """The real pocketsphinx test clips (5 LibriVox sentences, 5 spoken card names), evaluation only.

    Reference transcripts come from each folder's ``transcription`` file (librivox) or ``cards.transcription``.
    """
    root = Path(root)
    files = {"librivox": ("fileids", "transcription"), "cards": ("cards.fileids", "cards.transcription")}
    items = []
    for subset in subsets:
        if subset not in files:
            raise ValueError(f"unknown pocketsphinx subset {subset!r}; known: {', '.join(files)}")
        folder = root / subset
        ids_file, trans_file = (folder / name for name in files[subset])
        if not ids_file.is_file() or not trans_file.is_file():
            raise FileNotFoundError(f"pocketsphinx clips missing under {folder}: "
                                    "install them with `apt-get install -y pocketsphinx-testdata`")
        refs = _read_transcriptions(trans_file)
        for utt in ids_file.read_text(encoding="utf-8").split():
            if utt not in refs:
                raise ValueError(f"{trans_file}: no transcript for {utt}")
            items.append(SpeechItem(f"{subset}/{utt}", refs[utt], folder / f"{Path(utt).name}.wav"))
    return SpeechDataset(items)


# ------------------------------------------------------------------------------------- synthetic sentences

_SUBJECTS = ["the old man", "my sister", "a young teacher", "the farmer", "our neighbor", "the little girl",
             "a tired doctor", "the captain", "her brother", "the quiet student", "the baker", "a careful driver",
             "my grandmother", "the new manager", "a friendly nurse", "the tall soldier"]
_VERBS = ["opened", "painted", "carried", "found", "cleaned", "repaired", "sold", "watched", "borrowed",
          "described", "dropped", "measured", "hid", "packed", "noticed", "washed"]
_OBJECTS = ["the heavy door", "a red box", "the broken window", "an old letter", "the wooden chair",
            "a small boat", "the silver key", "a warm blanket", "the green bottle", "a paper map",
            "the kitchen table", "a bright lamp", "the leather bag", "a yellow kite", "the garden gate"]
_PLACES = ["in the garden", "near the river", "at the station", "before dinner", "after the storm",
           "on a cold morning", "behind the school", "during the night", "by the harbor", "in the market",
           "under the bridge", "at the end of the day"]
_NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
_PLURALS = ["apples", "birds", "chairs", "letters", "boats", "coins", "books", "candles", "horses", "stones"]
_ADJS = ["cold", "quiet", "bright", "windy", "dark", "warm", "cloudy", "calm", "strange", "busy"]
_TIMES = ["this morning", "last night", "all afternoon", "on sunday", "in the evening", "yesterday"]
_TEMPLATES = [
    "{S} {V} {O} {P}.", "{S} {V} {O}.", "Did {s} find {o} {p}?", "Where did {s} put {o}?",
    "{S} counted {N} {L} {p}.", "It was {A} and {A2} {T}.", "Please bring {o} to {s}.",
    "{S} said that {s2} {V} {o}.", "We saw {N} {L} {p}.", "Why was {o} left {p}?",
]


def template_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences drawn from fixed templates (numbers spelled out, so the exact
    transcript is what is spoken). Deterministic in (n, seed); several thousand distinct sentences exist."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(200 * n):  # bounded: give up long before an infinite loop on an impossible n
        if len(out) == n:
            break
        s, s2 = rng.sample(_SUBJECTS, 2)
        a, a2 = rng.sample(_ADJS, 2)
        slots = {"s": s, "s2": s2, "v": rng.choice(_VERBS), "o": rng.choice(_OBJECTS),
                 "p": rng.choice(_PLACES), "n": rng.choice(_NUMBERS), "l": rng.choice(_PLURALS),
                 "a": a, "a2": a2, "t": rng.choice(_TIMES)}
        fields = {**slots, **{k.upper(): v for k, v in slots.items()}}
        text = rng.choice(_TEMPLATES).format(**fields)
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    if len(out) < n:
        raise ValueError(f"template_sentences: only {len(out)} distinct sentences reachable, asked for {n}")
    return out


class SyntheticASRConfig(BaseModel):
    """Everything that determines the synthetic clips; its JSON names the cache entry."""

    n_sentences: int = Field(400, ge=3, description="distinct sentences (clips) in all splits together")
    seed: int = Field(0, description="seed of sentence sampling, split assignment and voice variation")
    fractions: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/validation/test shares")
    voice: str = Field("en-us", description="espeak-ng voice")
    # words per minute; espeak-ng's default is 175. A spread of rates gives the model some variety.
    speeds_wpm: tuple[int, ...] = Field((140, 160, 180), min_length=1)
    # espeak-ng pitch 0..99 (default 50); varied per clip like the rate.
    pitches: tuple[int, ...] = Field((35, 50, 65), min_length=1)
    # More than one speaker: each clip picks one of these espeak-ng voices (e.g. "en-us+f3", "en-gb-x-rp+m2"),
    # overriding `voice`. One synthetic voice teaches a model that voice, not speech (see BENCHMARKS.md, ASR).
    voices: tuple[str, ...] | None = Field(None, min_length=1)
    # White noise at a signal-to-noise ratio (dB) picked per clip; None = clean clips.
    noise_snr_db: tuple[float, ...] | None = Field(None, min_length=1)

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {v}")
        return v

    def fingerprint(self) -> str:
        # exclude_none: the optional fields added later leave the caches made before them valid
        return hashlib.sha256(self.model_dump_json(exclude_none=True).encode()).hexdigest()[:12]


def _require_tools() -> tuple[str, str]:
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        missing = " and ".join(n for n, p in (("espeak-ng", espeak), ("sox", sox)) if p is None)
        raise FileNotFoundError(f"{missing} not found: {_APT_HINT}")
    return espeak, sox


def synthesize(text: str, out_path: str | Path, voice: str = "en-us", speed_wpm: int = 175, pitch: int = 50) -> Path:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit WAV at ``out_path`` (atomic: tmp + rename)."""
    espeak, sox = _require_tools()
    if not text.strip() or text.lstrip().startswith("-"):
        raise ValueError(f"synthesize: text must be non-empty and not start with '-': {text!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw, res = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        for cmd in ([espeak, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-w", str(raw), text],
                    [sox, str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(res)]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
        res.replace(out_path)
    return out_path


def add_noise(path: str | Path, snr_db: float, seed: int) -> None:
    """Mix white noise into a 16 kHz mono 16-bit WAV in place at `snr_db` (signal power over noise power)."""
    x = load_wav(path).astype(np.float64)
    power = float(np.mean(x ** 2)) or 1e-12
    noise = np.random.default_rng(seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), x.shape)
    pcm = np.clip(np.round((x + noise) * 32768.0), -32768, 32767).astype("<i2")
    tmp = Path(path).with_suffix(".noisy.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    tmp.replace(path)


def sentence_splits(cfg: SyntheticASRConfig) -> dict[str, list[str]]:
    """The sentences of each split: shuffled once with the seed, then cut train | validation | test, so the
    splits are disjoint by sentence and fixed by (n_sentences, seed, fractions)."""
    order = sorted(template_sentences(cfg.n_sentences, cfg.seed))  # independent of generation order
    random.Random(cfg.seed + 1).shuffle(order)
    n = len(order)
    n_val, n_test = max(1, round(cfg.fractions[1] * n)), max(1, round(cfg.fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"n_sentences={n} is too small for fractions {cfg.fractions}")
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


def synthetic_asr(cache_dir: str | Path, config: SyntheticASRConfig | None = None, workers: int | None = None,
                  **overrides) -> dict[str, SpeechDataset]:
    """Synthetic English ASR splits ``{"train", "validation", "test"}`` (disjoint by sentence), cached.

    Clips live at ``cache_dir/<fingerprint>/<split>/<id>.wav`` with ``manifest.json`` (config + items) beside
    them; a second call with the same config only reads the manifest. ``overrides`` set config fields
    (e.g. ``n_sentences=40``). ``workers``: parallel espeak-ng processes (default: CPU count).
    """
    # validated as a whole (model_copy(update=...) would skip validation and keep lists in tuple fields)
    cfg = SyntheticASRConfig.model_validate({**(config or SyntheticASRConfig()).model_dump(), **overrides})
    root = Path(cache_dir) / cfg.fingerprint()
    manifest = root / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return {split: SpeechDataset([SpeechItem(it["id"], it["text"], root / it["file"]) for it in items])
                for split, items in data["splits"].items()}
    _require_tools()
    rng = random.Random(cfg.seed + 2)
    splits = sentence_splits(cfg)
    jobs = []
    for split, sentences in splits.items():
        for i, text in enumerate(sentences):
            job = (split, f"{split}-{i:05d}", text, rng.choice(cfg.speeds_wpm), rng.choice(cfg.pitches))
            # drawn only when set, so configs without them keep their earlier clips
            voice = rng.choice(cfg.voices) if cfg.voices else cfg.voice
            snr = rng.choice(cfg.noise_snr_db) if cfg.noise_snr_db else None
            jobs.append((*job, voice, snr, rng.randrange(2 ** 31) if snr is not None else 0))

    def run(job: tuple) -> None:
        split, uid, text, speed, pitch, voice, snr, seed = job
        synthesize(text, root / split / f"{uid}.wav", voice, speed, pitch)
        if snr is not None:
            add_noise(root / split / f"{uid}.wav", snr, seed)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        list(pool.map(run, jobs))  # list(): re-raise the first failure here
    data = {"config": cfg.model_dump(), "splits": {s: [] for s in splits}}
    for split, uid, text, speed, pitch, voice, snr, _ in jobs:
        data["splits"][split].append({"id": uid, "text": text, "file": f"{split}/{uid}.wav",
                                      "speed_wpm": speed, "pitch": pitch, "voice": voice, "snr_db": snr})
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(manifest)  # the manifest appears last: a cache entry without it is rebuilt
    return synthetic_asr(cache_dir, cfg)


# ------------------------------------------------------------------------------------- Whisper fine-tuning


class WhisperASRCollator:
    """Examples ``{"audio", "text"}`` -> ``input_features`` (B, n_mels, 3000) log-mel and ``labels`` (B, L).

    labels = tokenizer(" " + text): the task prefix (``<|notimestamps|>``, with ``<|en|><|transcribe|>`` before it
    on a multilingual model), the text, ``<|endoftext|>``; the leading ``<|startoftranscript|>`` is dropped
    because the model prepends ``decoder_start_token_id`` when it shifts labels right. The leading space
    matches how Whisper itself emits the first word. Padding is -100 (ignored by the loss).
    """

    def __init__(self, processor, max_label_tokens: int = 448) -> None:  # 448: Whisper's decoder positions
        self.processor = processor
        self.max_label_tokens = max_label_tokens
        tok = processor.tokenizer
        self.sot = tok.convert_tokens_to_ids("<|startoftranscript|>")

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        audios = [np.asarray(ex["audio"], dtype=np.float32) for ex in examples]
        feats = self.processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        ids = self.processor.tokenizer([" " + ex["text"].strip() for ex in examples]).input_ids
        ids = [seq[1:] if seq and seq[0] == self.sot else seq for seq in ids]
        longest = max(len(seq) for seq in ids)
        if longest > self.max_label_tokens:
            raise ValueError(f"transcript of {longest} tokens exceeds max_label_tokens={self.max_label_tokens}")
        labels = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(ids):
            labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return {"input_features": feats.input_features, "labels": labels}


@torch.inference_mode()
def transcribe(model, processor, audios: Sequence[np.ndarray], batch_size: int = 8, language: str = "en",
               max_new_tokens: int = 128) -> list[str]:
    """Greedy transcripts of 16 kHz clips (each <= 30 s), ``batch_size`` clips per ``generate`` call.

    ``language`` is forced on multilingual models (task "transcribe"); English-only models ignore it.
    ``max_new_tokens``: 128 tokens is ~90 words, more than 30 s of speech holds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters())
    kwargs = {"num_beams": 1, "do_sample": False, "max_new_tokens": max_new_tokens}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs.update(language=language, task="transcribe")
    out: list[str] = []
    # Whisper's generate warns on every call about settings it combines itself (suppress_tokens, a decoder
    # pad == eos, max_length vs max_new_tokens): quiet them here, restore the caller's verbosity after.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for start in range(0, len(audios), batch_size):
            chunk = [np.asarray(a, dtype=np.float32) for a in audios[start:start + batch_size]]
            feats = processor.feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            ids = model.generate(feats.to(device=param.device, dtype=param.dtype), **kwargs)
            out += [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    finally:
        hf_logging.set_verbosity(verbosity)
    return out


def evaluate_wer(model, processor, dataset: SpeechDataset, batch_size: int = 8, language: str = "en"
                 ) -> tuple[float, list[str]]:
    """(corpus WER, hypotheses) of greedy transcription over ``dataset``."""
    hyps = transcribe(model, processor, dataset.audios(), batch_size=batch_size, language=language)
    return wer(dataset.texts(), hyps), hyps
