"""sparselm.data.tokenizer: byte-level BPE trained on task text — T5 special ids, lossless round trip,
determinism, the content-hash cache, atomic save/load, and (with trans-de-en installed) the real translation pairs."""
from __future__ import annotations

from pathlib import Path

import pytest

from sparselm.data import tokenizer as tokmod
from sparselm.data.tokenizer import item_texts, load_tokenizer, tokenizer_for_task, train_tokenizer

EN_DE = ["The house is big.", "Das Haus ist groß.", "Do you have any loose change for the toll?",
         "Hast du Kleingeld für die Maut?", "Translate English to German:\nThe dog is old.\nGerman:",
         " Der Hund ist alt.", "Über den Wolken muss die Freiheit wohl grenzenlos sein.", "Wir äßen Brötchen."]
TEXTS = EN_DE * 8  # repeated so that merges reach min_frequency


@pytest.fixture
def tok(tmp_path):
    return train_tokenizer(TEXTS, vocab_size=400, cache_dir=tmp_path / "cache")


def test_t5_special_ids(tok):
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token_id is None  # T5 has no BOS: the decoder starts from pad
    with_eos = tok("Das Haus ist groß.").input_ids
    without = tok("Das Haus ist groß.", add_special_tokens=False).input_ids
    assert with_eos == without + [1] and 1 not in without and 0 not in without
    assert len(tok) <= 400


@pytest.mark.parametrize("text", EN_DE + ["unseen: Quäntchen Ærø 東京 ☃ tabs\tand  double  spaces\n", ""])
def test_round_trip_is_lossless(tok, text):
    ids = tok(text, add_special_tokens=True).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in ids  # byte-level: every string has a spelling


def test_bpe_merges_frequent_words(tok):
    """Trained merges make frequent text shorter than its bytes (a BPE that learned nothing would not)."""
    text = "Das Haus ist groß."
    assert len(tok(text, add_special_tokens=False).input_ids) < len(text.encode()) / 2


def test_deterministic_and_cached(tmp_path, monkeypatch):
    a = train_tokenizer(TEXTS, vocab_size=400, cache_dir=tmp_path / "a")
    b = train_tokenizer(TEXTS, vocab_size=400, cache_dir=tmp_path / "b")
    (fa,), (fb,) = (tmp_path / "a").glob("*/tokenizer.json"), (tmp_path / "b").glob("*/tokenizer.json")
    assert fa.read_text() == fb.read_text() and fa.parent.name == fb.parent.name  # same content, same hash
    assert a.get_vocab() == b.get_vocab()

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds this tokenizer")

    monkeypatch.setattr(tokmod, "_train_core", no_training)
    c = train_tokenizer(TEXTS, vocab_size=400, cache_dir=tmp_path / "a")
    assert c.get_vocab() == a.get_vocab()
    assert not list((tmp_path / "a").glob(".*tmp*"))  # no temp dir left behind


def test_hash_depends_on_texts_and_size(tmp_path):
    train_tokenizer(TEXTS, vocab_size=400, cache_dir=tmp_path)
    train_tokenizer(TEXTS, vocab_size=300, cache_dir=tmp_path)
    train_tokenizer(TEXTS + ["Noch ein Satz."], vocab_size=400, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*/tokenizer.json"))) == 3


def test_default_cache_follows_data_cache(tmp_path, monkeypatch):
    from sparselm.data import registry

    monkeypatch.setattr(registry, "DEFAULT_CACHE_DIR", tmp_path)
    train_tokenizer(TEXTS, vocab_size=300)
    assert len(list((tmp_path / "tokenizers").glob("*/tokenizer.json"))) == 1


def test_out_dir_reloads_with_auto_tokenizer(tmp_path, tok):
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    train_tokenizer(TEXTS, vocab_size=400, out_dir=out, cache_dir=tmp_path / "cache")
    again = AutoTokenizer.from_pretrained(out)  # how sparselm.models.load_model reads a model dir's tokenizer
    text = "Translate English to German:\nThe dog is old.\nGerman:"
    assert again(text).input_ids == tok(text).input_ids
    assert (again.pad_token_id, again.eos_token_id) == (0, 1)
    assert load_tokenizer(out)(text).input_ids == tok(text).input_ids


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty texts"):
        train_tokenizer(["", ""], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_tokenizer(TEXTS, vocab_size=100, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nothing")


def test_item_texts_reads_both_sides():
    items = [{"prompt": "Translate English to German:\nHi.\nGerman:", "completion": " Hallo.", "answer": "Hallo."}]
    assert item_texts(items) == [items[0]["prompt"], " Hallo."]
    assert item_texts(items, ("answer",)) == ["Hallo."]


@pytest.mark.assets
def test_translation_pairs(tmp_path):
    """The real EN-DE train split: German and English words become single tokens; test data is not read."""
    if not Path("/usr/share/trans/de-en").is_file():
        pytest.skip("needs the EN-DE dictionary: apt-get install trans-de-en")
    tok = tokenizer_for_task("translation", vocab_size=2000, limit=3000, cache_dir=tmp_path)
    assert len(tok) == 2000
    for word in ("ĠHaus", "Ġthe", "Ġist", "German"):
        assert word in tok.get_vocab(), word
    text = "Translate English to German:\nThe weather is nice today.\nGerman:"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
