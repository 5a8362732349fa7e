"""Task loaders: items, split disjointness, held-out generators, determinism, cache/export, clear errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sparselm.data import export_task, get_task, list_tasks, read_jsonl
from sparselm.data.gsm import HELD_OUT_TEMPLATES
from sparselm.data.reasoning import SEEN, UNSEEN
from sparselm.data.translation import DEFAULT_PATH, is_sentence, parse_phrase_pairs, parse_trans_de_en

rg = pytest.importorskip("reasoning_gym", reason="reasoning-gym missing: pip install reasoning-gym==0.1.25")

SMALL = dict(n_train=60, n_validation=20, n_test=30, n_test_unseen=30)


def _prompts(task, split):
    return {it["prompt"] for it in task.items(split)}


def _check_items(items, n):
    assert len(items) == n
    for it in items:
        assert set(it) >= {"prompt", "completion", "answer"}
        assert all(isinstance(it[k], str) for k in ("prompt", "completion", "answer"))
        assert it["prompt"] and it["answer"]


def _check_disjoint(task):
    splits = {s: _prompts(task, s) for s in task.splits}
    for s in splits:
        assert len(splits[s]) == len(task.items(s)), f"duplicate prompt inside {s}"
    for a in splits:
        for b in splits:
            if a < b:
                assert not splits[a] & splits[b], f"{a} and {b} share prompts"


def test_registry_lists_builtin_tasks():
    assert {"gsm", "reasoning", "translation", "jsonl"} <= set(list_tasks())
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        get_task("nope")


def test_gsm_items_splits_and_held_out_templates(tmp_path):
    task = get_task("gsm", cache_dir=tmp_path, **SMALL)
    for split in task.splits:
        _check_items(task.items(split), SMALL[f"n_{split.replace('-', '_')}"])
    for it in task.items("train"):
        assert it["completion"].endswith(f"\n#### {it['answer']}")
        assert it["prompt"].startswith("Question: ") and it["prompt"].endswith("\nAnswer:")
    _check_disjoint(task)
    template = lambda it: int(it["source"].split("/")[1])  # noqa: E731
    for split in ("train", "validation", "test"):
        assert not {template(it) for it in task.items(split)} & HELD_OUT_TEMPLATES
    assert {template(it) for it in task.items("test-unseen")} <= HELD_OUT_TEMPLATES


def test_reasoning_items_splits_and_held_out_generators(tmp_path):
    task = get_task("reasoning", cache_dir=tmp_path, **SMALL)
    _check_disjoint(task)
    train = task.items("train")
    _check_items(train, 60)
    assert {it["source"] for it in train} == set(SEEN)
    assert {it["source"] for it in task.items("test-unseen")} == set(UNSEEN)
    assert not set(SEEN) & set(UNSEEN)
    for it in train:  # short answers, short prompts: learnable by a small model
        assert it["completion"] == " " + it["answer"]
        assert len(it["answer"]) <= 60 and len(it["prompt"]) <= 300


def test_generation_is_deterministic_and_cached(tmp_path):
    a = get_task("reasoning", cache_dir=tmp_path / "a", **SMALL)
    b = get_task("reasoning", cache_dir=tmp_path / "b", use_cache=False, **SMALL)
    assert a.items("train") == b.items("train")
    assert a.cache_path("train").is_file() and not (tmp_path / "b").exists()
    assert read_jsonl(a.cache_path("train")) == a.items("train")
    # a different seed gives different data; the test split does not depend on the train size
    c = get_task("reasoning", cache_dir=tmp_path / "a", **{**SMALL, "seed": 1})
    assert c.items("test") != a.items("test")
    d = get_task("reasoning", cache_dir=tmp_path / "a", **{**SMALL, "n_train": 90})
    assert d.items("test") == a.items("test") and d.fingerprint() != a.fingerprint()


def test_export_and_reload_from_data_dir(tmp_path):
    task = get_task("gsm", cache_dir=tmp_path / "cache", **SMALL)
    paths = export_task(task, tmp_path / "export")
    assert sorted(p.name for p in paths) == sorted(f"{s}.jsonl" for s in task.splits)
    carried = get_task("gsm", data_dir=tmp_path / "export")
    assert carried.items("test", limit=5) == task.items("test")[:5]
    with pytest.raises(FileNotFoundError, match="export_task"):
        get_task("gsm", data_dir=tmp_path / "nowhere").items("test")


def test_export_command_line(tmp_path, capsys):
    from sparselm.data.__main__ import main

    assert main(["export", "reasoning", str(tmp_path / "r"), "--n-train", "9", "--n-validation", "9",
                 "--n-test", "9", "--n-test-unseen", "4", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "train.jsonl: 9 items" in capsys.readouterr().out
    assert len(get_task("reasoning", data_dir=tmp_path / "r").items("test-unseen")) == 4


def test_missing_reasoning_gym_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match="pip install reasoning-gym"):
        get_task("gsm", cache_dir=tmp_path, **SMALL).items("test")


def test_bad_split_and_size():
    with pytest.raises(ValueError, match="no split 'dev'"):
        get_task("gsm", use_cache=False, **SMALL).items("dev")
    with pytest.raises(ValueError, match="n_train=-1"):
        get_task("reasoning", n_train=-1)


# -- translation ----------------------------------------------------------------------------------------------
DICT_LINES = [
    "# License :: GPL",
    "Haus {n} | Häuser {pl} | Das Haus ist alt. | Ich gehe nach Hause! :: house | houses | The house is old. | I am going home!",
    "Abmachung {f} | Hast du vergessen, was wir abgemacht/ausgemacht [Ös.] haben? :: deal | Are you forgetting our deal?",
    "regnen {vi} | Es regnet oft in … :: to rain | It is apt to rain in …",
    "misaligned | Das ist gut. :: only one slot",
    "Hund {m} | Der Hund bellt. :: dog | The dog barks.",
    "Hund {m} (noch einmal) | Der Hund bellt laut. :: dog | The dog barks.",
]


def test_translation_parsing_rules(tmp_path):
    path = tmp_path / "de-en"
    path.write_text("\n".join(DICT_LINES) + "\n", encoding="utf-8")
    pairs = parse_trans_de_en(path)
    # annotation removed; alternatives ("/") and elisions ("…") dropped; misaligned line skipped; deduped by EN
    assert pairs == [("The house is old.", "Das Haus ist alt."), ("I am going home!", "Ich gehe nach Hause!"),
                     ("The dog barks.", "Der Hund bellt.")]
    assert is_sentence("Das ist gut.") and not is_sentence("das ist gut.") and not is_sentence("Haus")
    task = get_task("translation", path=path, n_validation=1, n_test=1, use_cache=False)
    assert [len(task.items(s)) for s in ("train", "validation", "test")] == [1, 1, 1]
    it = task.items("test")[0]
    assert it["completion"] == " " + it["answer"] and it["prompt"].endswith("\nGerman:")


def test_translation_phrase_pairs_join_the_train_split_only(tmp_path):
    path = tmp_path / "de-en"
    path.write_text("\n".join(DICT_LINES + [
        "Katze {f}; Mieze {f} | Katzen {pl} :: cat; puss | cats",
        "etw. abholen | jdn. abholen :: to collect sth. | to pick sb. up",
        "großes Haus | Das ist gut. :: big house | That is good.",
    ]) + "\n", encoding="utf-8")
    phrases = dict(parse_phrase_pairs(path))
    # first alternative of each non-sentence slot; placeholders (sth./etw., sb./jdn.) and annotations dropped
    assert phrases == {"house": "Haus", "houses": "Häuser", "deal": "Abmachung", "to rain": "regnen",
                       "dog": "Hund", "cat": "Katze", "cats": "Katzen", "big house": "großes Haus"}
    base = get_task("translation", path=path, n_validation=1, n_test=1, use_cache=False)
    task = get_task("translation", path=path, n_validation=1, n_test=1, n_phrases=5, use_cache=False)
    assert task.items("test") == base.items("test") and task.items("validation") == base.items("validation")
    train = task.items("train")
    assert len(train) == len(base.items("train")) + 5
    assert sum(it["source"] == "trans-de-en-phrase" for it in train) == 5
    with pytest.raises(ValueError, match="phrase pairs"):
        get_task("translation", path=path, n_validation=1, n_test=1, n_phrases=99, use_cache=False).items("train")


def test_translation_missing_file_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install trans-de-en"):
        get_task("translation", path=tmp_path / "none", use_cache=False).items("test")


@pytest.mark.assets
def test_translation_real_dictionary(tmp_path):
    if not DEFAULT_PATH.is_file():
        pytest.skip("trans-de-en missing: apt-get install trans-de-en")
    task = get_task("translation", cache_dir=tmp_path)
    sizes = {s: len(task.items(s)) for s in task.splits}
    assert sizes["test"] == 1000 and sizes["validation"] == 500
    assert 15_000 <= sum(sizes.values()) <= 17_500  # ≈16,000 sentence pairs
    _check_disjoint(task)


# -- generic --------------------------------------------------------------------------------------------------
def test_generic_jsonl_file_and_directory(tmp_path):
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps({"prompt": "2+2=", "completion": " 4"}) + "\n" + json.dumps({"text": "hello"}) + "\n")
    items = get_task(str(f)).items("test")
    assert items == [{"prompt": "2+2=", "completion": " 4", "answer": "4"},
                     {"prompt": "", "completion": "hello", "answer": "hello"}]
    d = tmp_path / "dir"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"q": "a", "a": "b"}) + "\n")
    task = get_task(str(d), fields={"prompt": "q", "completion": "a"})
    assert task.splits == ("train",) and task.items("train")[0]["completion"] == "b"
    (d / "test.jsonl").write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl: row 0 has neither"):
        get_task(str(d)).items("test")
    (d / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        get_task(str(d)).items("bad")


def test_generic_hf_dataset_directory(tmp_path, monkeypatch):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "dataset_dict.json").write_text("{}")
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            get_task(str(d))
        return
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "abc"}])})
    ds.save_to_disk(str(tmp_path / "hf2"))
    assert get_task(str(tmp_path / "hf2")).items("train") == [{"prompt": "", "completion": "abc", "answer": "abc"}]


def test_export_jsonl_is_atomic_on_failure(tmp_path):
    from sparselm.data import write_jsonl

    target = tmp_path / "out.jsonl"
    with pytest.raises(TypeError):
        write_jsonl(target, [{"ok": 1}, {"bad": object()}])
    assert not target.exists() and not list(Path(tmp_path).glob(".*tmp"))
