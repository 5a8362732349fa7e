"""The gettext-catalog corpus (sparselm.data.messages) and the translation task's `corpus` option, on catalogs
written here in the .mo format."""
from __future__ import annotations

import struct

import pytest

from sparselm.data.messages import keep_pair, parse_catalogs
from sparselm.data.registry import get_task


def write_mo(path, entries: dict[str, str], charset: str = "UTF-8") -> None:
    """A GNU .mo file (little-endian, no hash table): header, then the msgid and msgstr tables, then strings."""
    entries = {"": f"Content-Type: text/plain; charset={charset}\n", **entries}
    keys = sorted(entries)  # the format requires msgids in sorted order
    ids = [k.encode("utf-8") for k in keys]
    strs = [entries[k].encode("latin-1" if charset != "UTF-8" else "utf-8") for k in keys]
    n = len(keys)
    id_table, str_table = 28, 28 + 8 * n
    offset = 28 + 16 * n
    blob, id_rows, str_rows = b"", [], []
    for table, rows in ((ids, id_rows), (strs, str_rows)):
        for s in table:
            rows.append((len(s), offset + len(blob)))
            blob += s + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, id_table, str_table, 0, 0)
    body = b"".join(struct.pack("<2I", *r) for r in id_rows + str_rows)
    path.write_bytes(head + body + blob)


CATALOG = {
    "cannot open the file": "die Datei kann nicht geöffnet werden",
    "invalid option:\n  %s": "ungültige Option:\n  %s",         # multi-line, placeholder kept
    "File": "Datei",                                            # too short
    "untranslated message stays here": "untranslated message stays here",
    "see <b>the manual</b> for details": "siehe <b>Handbuch</b>",  # markup
    "copying files to the target...": "Dateien werden kopiert...",   # elision
    "the same message twice here": "erste Übersetzung",
}


def test_parse_catalogs_filters_and_deduplicates(tmp_path):
    lc = tmp_path / "de" / "LC_MESSAGES"
    lc.mkdir(parents=True)
    write_mo(lc / "alpha.mo", CATALOG)
    write_mo(lc / "beta.mo", {"the same message twice here": "zweite Übersetzung",
                              "remove the old package now": "das alte Paket jetzt entfernen"})
    (lc / "broken.mo").write_bytes(b"\xde\x12\x04\x95 truncated")
    pairs, skipped = parse_catalogs(tmp_path)
    assert pairs == [("cannot open the file", "die Datei kann nicht geöffnet werden", "alpha"),
                     ("invalid option: %s", "ungültige Option: %s", "alpha"),
                     ("the same message twice here", "erste Übersetzung", "alpha"),   # first catalog wins
                     ("remove the old package now", "das alte Paket jetzt entfernen", "beta")]
    assert [s.split(":")[0] for s in skipped] == ["broken.mo"]
    assert not keep_pair("a b c", "a b c") and not keep_pair("two words", "zwei Wörter")
    assert not keep_pair("costs $5 per month", "kostet 5 $ pro Monat")


def test_missing_catalogs_say_where_they_come_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="gettext catalogs"):
        parse_catalogs(tmp_path)


def test_translation_corpus_option(tmp_path):
    lc = tmp_path / "locale" / "de" / "LC_MESSAGES"
    lc.mkdir(parents=True)
    write_mo(lc / "tool.mo", {f"cannot read the file number {i}": f"Datei Nummer {i} kann nicht gelesen werden"
                              for i in range(6)} | {"The dog barks.": "Der Hund bellt laut."})
    dic = tmp_path / "de-en"
    dic.write_text("Hund {m} | Der Hund bellt. :: dog | The dog barks.\n"
                   "Haus {n} | Das Haus ist alt. :: house | The house is old.\n", encoding="utf-8")
    kw = dict(path=dic, locale_dir=tmp_path / "locale", n_validation=1, n_test=2, use_cache=False)
    msgs = get_task("translation", corpus="messages", **kw)
    both = get_task("translation", corpus="both", **kw)
    splits = {s: both.items(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [5, 1, 2]   # 6 messages + 2 sentences, one English duplicate
    seen = [it["prompt"] for v in splits.values() for it in v]
    assert len(seen) == len(set(seen))                      # disjoint splits
    by_source = {it["prompt"]: it for v in splits.values() for it in v}
    dog = next(it for p, it in by_source.items() if "The dog barks." in p)
    assert dog["answer"] == "Der Hund bellt." and dog["source"] == "trans-de-en"   # dictionary first
    assert sum(len(msgs.items(s)) for s in ("train", "validation", "test")) == 7
    assert all(it["source"] == "gettext:tool" for it in msgs.items("test"))
    assert both.config()["corpus"] == "both"
    with pytest.raises(ValueError, match="corpus must be one of"):
        get_task("translation", corpus="news", **kw)


def test_unseen_catalogs_become_their_own_split(tmp_path):
    lc = tmp_path / "locale" / "de" / "LC_MESSAGES"
    lc.mkdir(parents=True)
    write_mo(lc / "tool.mo", {f"cannot read the file number {i}": f"Datei {i} nicht lesbar" for i in range(6)})
    write_mo(lc / "other.mo", {f"remove the old package {i}": f"altes Paket {i} entfernen" for i in range(3)})
    kw = dict(locale_dir=tmp_path / "locale", corpus="messages", n_validation=1, n_test=1, use_cache=False)
    task = get_task("translation", unseen_catalogs="other", **kw)
    assert task.splits == ("train", "validation", "test", "test-unseen")
    unseen = task.items("test-unseen")
    assert len(unseen) == 3 and {it["source"] for it in unseen} == {"gettext:other"}
    rest = [it for s in ("train", "validation", "test") for it in task.items(s)]
    assert len(rest) == 6 and all(it["source"] == "gettext:tool" for it in rest)
    assert task.config()["unseen_catalogs"] == ["other"]
    plain = get_task("translation", **kw)  # no held-out catalogs: the three usual splits, all 9 messages
    assert plain.splits == ("train", "validation", "test") and "unseen_catalogs" not in plain.config()
    with pytest.raises(ValueError, match="no messages from"):
        get_task("translation", unseen_catalogs=["nosuch"], **kw).items("test")
    with pytest.raises(ValueError, match="needs corpus"):
        get_task("translation", unseen_catalogs=["other"], **{**kw, "corpus": "dictionary"})


def test_an_exported_directory_serves_its_extra_splits(tmp_path):
    """A held-out split exported with `--unseen-catalogs` is readable from the directory alone (the GPU machine has
    no catalogs, so the task there is built without `unseen_catalogs`); an absent split still names the real ones."""
    from sparselm.data.jsonl import write_jsonl

    item = {"prompt": "translate: open the file", "answer": "Datei öffnen", "source": "gettext:tool"}
    for split in ("train", "validation", "test", "test-unseen"):
        write_jsonl(tmp_path / f"{split}.jsonl", [item])
    task = get_task("translation", data_dir=tmp_path)
    assert task.items("test-unseen") == [item]
    with pytest.raises(ValueError, match="no split 'test-other'; splits: train, validation, test"):
        task.items("test-other")
