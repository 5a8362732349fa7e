"""The speech (task "asr") side of the pipeline: Whisper training items + collator for `sparselm.train.finetune`,
and WER evaluation on the synthetic espeak-ng test split and the 10 real pocketsphinx clips.

Data location (`task.data_dir`, else `task.args.cache_dir`, else `<DEFAULT_CACHE_DIR>/asr`): the cache root of
`sparselm.data.asr.synthetic_asr`, i.e. `<dir>/<fingerprint>/manifest.json` + WAVs. A cache that exists is only
read, so a machine without espeak-ng (the GPU machines) uses clips generated elsewhere. The real clips are read
from `<dir>/pocketsphinx/{librivox,cards}` when present (copied there by `export`), else from the Debian
pocketsphinx-testdata folder. Make such a self-contained folder here, then carry it to the GPU machine:

    python -m sparselm.pipeline.asr export out/asr-data            # 400 sentences: ~37 MB of WAVs + manifest
    sparselm run src/sparselm/recipes/asr-whisper.yaml --out $OUT/asr task.data_dir=out/asr-data

`task.args`: fields of `SyntheticASRConfig` (n_sentences, seed, ...; they pick the cache entry), `language`
(forced on multilingual models) and `real_dir` (another pocketsphinx data folder).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from sparselm.pipeline.schema import TaskSpec

_OWN_ARGS = ("cache_dir", "language", "real_dir")


def _synthetic_args(task: TaskSpec) -> dict[str, Any]:
    """The `SyntheticASRConfig` overrides among `task.args`; any other unknown key is a one-line error."""
    from sparselm.data.asr import SyntheticASRConfig

    known = set(SyntheticASRConfig.model_fields)
    bad = sorted(set(task.args) - known - set(_OWN_ARGS))
    if bad:
        raise ValueError(f"task.args: unknown key(s) {', '.join(bad)} for task 'asr'; known: "
                         f"{', '.join(sorted(known | set(_OWN_ARGS)))}")
    # YAML gives lists; the config's tuple fields would otherwise warn when the cache entry is fingerprinted
    return {k: tuple(v) if isinstance(v, list) else v for k, v in task.args.items() if k in known}


def data_root(task: TaskSpec) -> Path:
    """Where the synthetic clips are cached (and an exported copy of the real clips may lie)."""
    from sparselm.data.registry import DEFAULT_CACHE_DIR

    root = task.data_dir or task.args.get("cache_dir")
    return Path(root) if root else DEFAULT_CACHE_DIR / "asr"


def speech_split(task: TaskSpec, split: str):
    """A `SpeechDataset`: "real" = the 10 real clips; "train" / "validation" / "test" = the synthetic splits."""
    from sparselm.data import asr

    root = data_root(task)
    if split == "real":
        exported = root / "pocketsphinx"
        real = task.args.get("real_dir") or (exported if exported.is_dir() else asr.POCKETSPHINX_DATA)
        return asr.real_clips(real)
    splits = asr.synthetic_asr(root, **_synthetic_args(task))
    if split not in splits:
        raise ValueError(f"task 'asr' has no split {split!r}; splits: real, {', '.join(splits)}")
    return splits[split]


def train_items(task: TaskSpec) -> list[dict[str, Any]]:
    """`{"id", "text", "audio"}` examples of `task.train_split` (first `task.num_examples`), audio in memory:
    400 clips of ~3 s at 16 kHz float32 are ~80 MB, and re-reading WAVs every epoch would cost more."""
    data = speech_split(task, task.train_split)
    n = len(data) if task.num_examples is None else min(task.num_examples, len(data))
    return [data[i] for i in range(n)]


def load_processor(name: str | Path):
    """The WhisperProcessor of a model directory (or a bundled name, which loads the model once)."""
    path = Path(name)
    if path.is_dir():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)
    from sparselm.models import load_model

    _, processor = load_model(str(name))
    return processor


def speech_data(task: TaskSpec, model_name: str | Path, max_label_tokens: int = 448
                ) -> tuple[list[dict[str, Any]], Any]:
    """(items, collate) for `sparselm.train.finetune(items=..., collate=...)`: log-mel features + label ids.
    `max_label_tokens`: the recipe's `train.seqlen`, capped at Whisper's 448 decoder positions."""
    from sparselm.data.asr import WhisperASRCollator

    processor = load_processor(model_name)
    if not hasattr(processor, "feature_extractor"):
        raise ValueError(f"model {model_name}: task 'asr' needs a Whisper model with a processor, "
                         f"got {type(processor).__name__}")
    return train_items(task), WhisperASRCollator(processor, max_label_tokens=min(max_label_tokens, 448))


def evaluate_asr(model, processor, task: TaskSpec, split: str, limit: int | None,
                 batch_size: int) -> dict[str, Any]:
    """Greedy transcription + corpus WER of one split, in `sparselm.eval.evaluate`'s result format
    (predictions included; the pipeline drops them)."""
    from sparselm.data import asr

    data = speech_split(task, split)
    if limit is not None:
        data = asr.SpeechDataset(data.items[:limit])
    refs = data.texts()
    hyps = asr.transcribe(model, processor, data.audios(), batch_size=batch_size,
                          language=task.args.get("language", "en"))
    return {"task": "asr", "split": split, "n": len(refs), "metric": "wer", "wer": asr.wer(refs, hyps),
            "predictions": [{"answer": r, "prediction": h} for r, h in zip(refs, hyps)]}


def export_asr_data(out_dir: str | Path, real_dir: str | Path | None = None, **synthetic: Any) -> Path:
    """Generate (or reuse) the synthetic clips in `out_dir` and copy the real pocketsphinx clips to
    `out_dir/pocketsphinx`: one folder that `task.data_dir` can point to on a machine without espeak-ng."""
    from sparselm.data import asr

    out = Path(out_dir)
    splits = asr.synthetic_asr(out, **synthetic)
    src = Path(real_dir) if real_dir else asr.POCKETSPHINX_DATA
    asr.real_clips(src)  # fails here, naming what to install, rather than on the GPU machine
    dst = out / "pocketsphinx"
    tmp = out / ".pocketsphinx.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for subset in ("librivox", "cards"):
        shutil.copytree(src / subset, tmp / subset)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    asr.real_clips(dst)  # the copy reads back
    print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + ", real 10 clips")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sparselm.pipeline.asr",
                                description="export: synthetic + real ASR clips into one carryable folder")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("out_dir", type=Path)
    e.add_argument("--n-sentences", type=int, default=None, help="synthetic clips in all splits (default 400)")
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--real-dir", type=Path, default=None, help="pocketsphinx test data folder")
    e.add_argument("--voices", default=None,
                   help="comma list of espeak-ng voices picked per clip, e.g. en-us,en-us+f3,en-gb-x-rp+m2")
    e.add_argument("--noise-snr-db", default=None, help="comma list of SNRs (dB) of white noise picked per clip")
    a = p.parse_args(argv)
    synthetic = {k: v for k, v in (("n_sentences", a.n_sentences), ("seed", a.seed)) if v is not None}
    if a.voices:
        synthetic["voices"] = tuple(v.strip() for v in a.voices.split(",") if v.strip())
    if a.noise_snr_db:
        synthetic["noise_snr_db"] = tuple(float(v) for v in a.noise_snr_db.split(","))
    export_asr_data(a.out_dir, a.real_dir, **synthetic)


if __name__ == "__main__":
    main()
