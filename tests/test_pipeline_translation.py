"""`sparselm run` on translation with a T5 built from a config: a BPE trained on the pairs, a dense teacher trained
from scratch, SparseGPT + SquareHead fine-tune, BLEU — end to end on a tiny T5 and a few dozen template pairs
(a data dir, so no system package is needed), plus the recipe checks that gate it."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sparselm.data.translation import translation_prompt
from sparselm.pipeline import load_pipeline_recipe, validate_pipeline_recipe
from sparselm.pipeline.run import NotRunnableError, check_runnable, run_pipeline
from sparselm.recipes.schema import RecipeError, validate_finetune_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src" / "sparselm" / "recipes"
NOUNS = [("house", "Das Haus"), ("dog", "Der Hund"), ("cat", "Die Katze"), ("car", "Das Auto"),
         ("tree", "Der Baum"), ("book", "Das Buch")]
ADJS = [("big", "groß"), ("small", "klein"), ("old", "alt"), ("new", "neu"), ("red", "rot"), ("good", "gut")]


def _pairs_dir(root: Path) -> Path:
    """36 'The X is Y.' -> 'Der/Die/Das X ist Y.' items: 24 train, 4 validation, 8 test (unseen combinations)."""
    items = [{"prompt": translation_prompt(f"The {n} is {a}."), "completion": f" {N} ist {A}.",
              "answer": f"{N} ist {A}.", "source": "gettext:toy" if i % 2 else "trans-de-en"}
             for i, (n, N) in enumerate(NOUNS) for a, A in ADJS]
    random.Random(0).shuffle(items)
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in (("test", items[:8]), ("validation", items[8:12]), ("train", items[12:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


def _recipe(data: Path, out: Path, tokenizer: str = "train-bpe") -> dict:
    return {"model": {"name": "tiny-t5", "kind": "seq2seq",
                      "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                               "vocab_size": 300, "max_positions": 64, "tokenizer": tokenizer}},
            "task": {"name": "translation", "data_dir": str(data)},
            "eval": {"splits": ["test"], "limit": 8, "batch_size": 8, "max_new_tokens": 12},
            "teacher": {"steps": 150, "lr": 3e-3, "eval_every": 50},
            "sparsities": [0.5], "losses": ["squarehead"], "sparse": {"steps": 4, "lr": 1e-3},
            "pruning": {"method": "sparsegpt", "calib_samples": 4},
            "train": {"batch_size": 8, "seqlen": 64, "log_every": 50, "threads": 1},
            "output": {"dir": str(out)}}


def test_tiny_t5_translation_end_to_end(tmp_path, monkeypatch) -> None:
    from sparselm.data import registry
    from sparselm.models import load_model

    monkeypatch.setattr(registry, "DEFAULT_CACHE_DIR", tmp_path / "cache")  # the tokenizer cache too
    out = run_pipeline(validate_pipeline_recipe(_recipe(_pairs_dir(tmp_path / "data"), tmp_path / "out")),
                       command="test")
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "bleu" and res["higher_is_better"]
    # a teacher trained from scratch through the learned BPE translates unseen noun/adjective pairs (66 BLEU when
    # written; an untrained model or a broken tokenizer scores 0)
    assert res["dense"] > 20, res["dense_all"]
    (run,) = res["runs"]
    assert run["sparsity"] == 0.5 and run["loss"] == "squarehead" and run["value"] is not None
    assert 0 <= run["value"] <= 100 and "chrf" in run["metrics"]
    sparsity = json.loads((out / "runs" / "s50-squarehead" / "sparsity.json").read_text())
    assert sparsity["method"] == "sparsegpt" and abs(sparsity["overall"] - 0.5) < 1e-3
    assert any(k.startswith("decoder.block.") for k in sparsity["layers"])  # both stacks of the T5 are pruned
    # the teacher directory carries the learned tokenizer (the sparse runs and evaluation read it from there)
    model, tok = load_model(out / "teacher", kind="seq2seq")
    assert (tok.pad_token_id, tok.eos_token_id, model.config.decoder_start_token_id) == (0, 1, 0)
    assert model.config.vocab_size == 300 and len(tok) <= 300
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*/tokenizer.json"))) == 1  # one shared vocabulary
    # teacher.eval_every: validation CE every 50 steps on the validation split; the best step is recorded
    val = [json.loads(x) for x in (out / "teacher" / "metrics.jsonl").read_text().splitlines() if "val/ce" in x]
    assert [r["step"] for r in val] == [50, 100, 150]
    chosen = json.loads((out / "teacher" / "selection.json").read_text())["p0"]
    assert chosen["step"] in (50, 100, 150) and chosen["val"] == min(r["val/ce"] for r in val)
    # BLEU per corpus in results.json and in the report
    assert set(res["dense_all"]["test"]["per_source"]) == set(run["metrics"]["per_source"]) <= {"gettext",
                                                                                                "trans-de-en"}
    report = (out / "report.md").read_text()
    assert "## BLEU per corpus (`test`)" in report and "| 50% | CE + SquareHead |" in report


def test_char_tokenizer_translation_is_refused(tmp_path) -> None:
    rec = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", tokenizer="char"))
    with pytest.raises(NotRunnableError, match="tokenizer=train-bpe"):
        check_runnable(rec)
    check_runnable(validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out")))


def test_shipped_translation_recipe_is_runnable() -> None:
    rec = load_pipeline_recipe(RECIPES / "translation-t5.yaml")
    check_runnable(rec)
    t = rec.model.tiny
    assert t is not None and t.tokenizer == "train-bpe"
    assert (t.hidden_size, t.num_layers, t.num_heads, t.intermediate_size) == (512, 6, 8, 2048)  # T5-small


@pytest.mark.parametrize("tiny, field", [({"arch": "whisper", "tokenizer": "train-bpe"}, "audio"),
                                         ({"arch": "t5", "tokenizer": "train-bpe", "vocab_size": 100}, "259"),
                                         ({"arch": "t5", "tokenizer": "sentencepiece"}, "tokenizer")])
def test_tokenizer_field_validation(tiny, field) -> None:
    rec = {"model": {"name": f"tiny-{tiny['arch']}", "tiny": tiny}, "train": {"steps": 1, "seqlen": 32}}
    with pytest.raises(RecipeError, match=field):
        validate_finetune_recipe(rec)


def test_vocab_below_tokenizer_size_is_an_error(tmp_path) -> None:
    from sparselm.train.setup import load_student

    rec = validate_finetune_recipe({"model": {"name": "tiny-llama", "tiny": {"vocab_size": 8}},
                                    "train": {"steps": 1, "seqlen": 32}, "output": {"dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="vocab_size 8 is below"):
        load_student(rec)
