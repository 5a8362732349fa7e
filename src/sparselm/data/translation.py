"""`translation`: English→German sentence pairs from the Debian dictionary ``trans-de-en`` (TU Chemnitz, GPL-2+).

The dictionary (``/usr/share/trans/de-en``) has one entry per line, ``DE | DE … :: EN | EN …``, whose ``|`` slots
align one to one. Most slots are words or phrases; some are example sentences. A slot pair is kept when both
sides, after removing the ``{f}``, ``[ugs.]``, ``<…>`` annotations, are full sentences:

  * start with a capital letter or digit (optionally after an opening quote), end with ``.``, ``!`` or ``?``
    (optionally before a closing quote), have at least 2 words;
  * contain no ``/``, ``;``, ``…`` or ``...`` (alternatives and elisions such as "abgemacht/ausgemacht",
    "Es regnet oft in …": a reference with alternatives in it would make BLEU meaningless).

That gives ≈16,100 pairs; they are deduplicated by the English sentence (first German kept), sorted, shuffled
with ``Random(seed)`` and cut into test / validation / train in that order, so the test set does not depend on
the train size. The data is installed at run time and never committed (licence GPL-2+):
``apt-get install trans-de-en``.

`corpus`: "dictionary" (the sentences above, the default), "messages" (English→German software messages from the
installed gettext catalogs, sparselm.data.messages: ≈32k pairs, a more literal and regular domain), or "both"
(the union, deduplicated by English, dictionary first; one shuffle, so every split mixes both sources in
proportion, ≈46k pairs). Each item's `source` names its origin ("trans-de-en" or "gettext:<domain>").

`unseen_catalogs` (corpus messages / both): every message of these gettext catalogs (e.g. "tar,dpkg,systemd") is
moved out of train / validation / test into an extra `test-unseen` split (the first `n_test_unseen`): translation
of a package the model never saw. Messages shared with another catalog belong to the first catalog in sorted
order (deduplication), so only a catalog's own messages are held out; near-duplicates elsewhere remain
(benchmarks/translation_overlap.py measures them). Empty (the default) leaves the splits exactly as before.

Item: prompt = "Translate English to German:\\n{en}\\nGerman:", completion = " {de}", answer = "{de}".
A seq2seq collator uses the prompt as the source and the completion as the target.

`n_phrases` > 0 adds that many of the dictionary's word and phrase pairs to the *train* split only (validation and
test stay sentences): the first alternative of each slot pair that is not a sentence, 1-6 words a side, without
the dictionary's placeholders (sth., sb., etw., jdn. ...), deduplicated by English and disjoint from every
sentence. ~265k exist. Why: 14.5k idiomatic example sentences are too few for a model trained from scratch to
learn the lexicon (a T5-small teacher stopped improving on validation after ~25 epochs at BLEU 1.6); a
bilingual lexicon as extra training pairs is the classic low-resource remedy. Measured so far only at a small
scale, where it did not help: a d 128, 2+2-layer T5 on the CPU reached 1.59 validation nats per character
after 2,000 steps with 60k phrase pairs vs 1.45 without (benchmarks/results/t5_probes.json). Off by default.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from sparselm.data.messages import DEFAULT_LOCALE_DIR, parse_catalogs
from sparselm.data.registry import Item, Task, register_task

CORPORA = ("dictionary", "messages", "both")
DEFAULT_PATH = Path("/usr/share/trans/de-en")
_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|<[^>]*>)")
_START = re.compile(r"^[„“\"'‚‘]?[A-ZÄÖÜ0-9]")
_END = re.compile(r"[.!?][“”\"'’‘]?$")
_ALTERNATIVES = re.compile(r"[…/;]|\.\.\.")


def _clean(slot: str) -> str:
    return re.sub(r"\s+", " ", _ANNOTATION.sub("", slot)).strip()


def is_sentence(s: str) -> bool:
    """A full sentence with no alternatives or elisions in it (see the module docstring)."""
    return bool(_START.match(s)) and bool(_END.search(s)) and len(s.split()) >= 2 and not _ALTERNATIVES.search(s)


def _slot_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    """(german slot, english slot) of every aligned dictionary entry, raw (annotations still in), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; install the EN-DE dictionary with "
                                f"`apt-get install trans-de-en` (Debian/Ubuntu, as root)")
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.rstrip("\n").split(" :: ", 1)
            de_slots, en_slots = de.split(" | "), en.split(" | ")
            if len(de_slots) == len(en_slots):  # a misaligned entry's slots cannot be paired
                yield from zip(de_slots, en_slots)


def parse_trans_de_en(path: str | Path = DEFAULT_PATH) -> list[tuple[str, str]]:
    """(english, german) sentence pairs from the dictionary file, deduplicated by English, in file order."""
    pairs: dict[str, str] = {}
    for d, e in _slot_pairs(path):
        d, e = _clean(d), _clean(e)
        if is_sentence(d) and is_sentence(e):
            pairs.setdefault(e, d)
    return list(pairs.items())


_PLACEHOLDER = re.compile(r"\b(sth|sb|etw|jd[mnrs]?|jds)\.|[()…/]|\.\.\.")


def parse_phrase_pairs(path: str | Path = DEFAULT_PATH, max_words: int = 6) -> list[tuple[str, str]]:
    """(english, german) word / phrase pairs (the first alternative of each non-sentence slot), deduplicated by
    English, in file order; none of them is a sentence of `parse_trans_de_en`."""
    pairs: dict[str, str] = {}
    for d, e in _slot_pairs(path):
        if is_sentence(_clean(d)) or is_sentence(_clean(e)):
            continue
        d, e = _clean(d.split(";")[0]), _clean(e.split(";")[0])
        if (d and e and len(d.split()) <= max_words and len(e.split()) <= max_words
                and not _PLACEHOLDER.search(d + " " + e) and not is_sentence(d) and not is_sentence(e)):
            pairs.setdefault(e, d)
    return list(pairs.items())


def translation_prompt(english: str) -> str:
    return f"Translate English to German:\n{english}\nGerman:"


def _item(english: str, german: str, source: str) -> Item:
    return {"prompt": translation_prompt(english), "completion": f" {german}", "answer": german, "source": source}


@register_task("translation")
class TranslationTask(Task):
    name: ClassVar[str] = "translation"
    metric: ClassVar[str] = "bleu"
    # German references run to ~40 words ≈ 100 BPE tokens; 128 new tokens cover them.
    max_new_tokens: ClassVar[int] = 128

    def __init__(self, n_train: int | None = None, n_validation: int = 500, n_test: int = 1000, seed: int = 0,
                 path: str | Path = DEFAULT_PATH, n_phrases: int = 0, corpus: str = "dictionary",
                 locale_dir: str | Path = DEFAULT_LOCALE_DIR, unseen_catalogs: Sequence[str] = (),
                 n_test_unseen: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_phrases < 0:
            raise ValueError(f"n_phrases must be >= 0, got {n_phrases}")
        if corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
        self.n_train, self.n_validation, self.n_test = n_train, n_validation, n_test  # n_train None: all the rest
        self.seed, self.path, self.n_phrases = seed, Path(path), n_phrases
        self.corpus, self.locale_dir = corpus, Path(locale_dir)
        if isinstance(unseen_catalogs, str):
            unseen_catalogs = [c for c in unseen_catalogs.split(",") if c]
        self.unseen_catalogs, self.n_test_unseen = tuple(sorted(set(unseen_catalogs))), n_test_unseen
        if self.unseen_catalogs:
            if corpus == "dictionary":
                raise ValueError("unseen_catalogs needs corpus 'messages' or 'both' (they are gettext catalogs)")
            self.splits = (*type(self).splits, "test-unseen")  # this instance's extra split
        self._pairs: list[tuple[str, str, str]] | None = None  # (english, german, source)
        self._unseen: list[tuple[str, str, str]] = []

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_train": self.n_train, "n_validation": self.n_validation,
                "n_test": self.n_test, "seed": self.seed, "path": str(self.path), "n_phrases": self.n_phrases,
                "corpus": self.corpus, "locale_dir": str(self.locale_dir),
                **({"unseen_catalogs": list(self.unseen_catalogs), "n_test_unseen": self.n_test_unseen}
                   if self.unseen_catalogs else {})}

    def _all_pairs(self) -> list[tuple[str, str, str]]:
        """The corpus's (english, german, source) pairs, deduplicated by English (dictionary first), sorted."""
        pairs: dict[str, tuple[str, str]] = {}
        if self.corpus in ("dictionary", "both"):
            for en, de in parse_trans_de_en(self.path):
                pairs.setdefault(en, (de, "trans-de-en"))
        if self.corpus in ("messages", "both"):
            for en, de, domain in parse_catalogs(self.locale_dir)[0]:
                pairs.setdefault(en, (de, f"gettext:{domain}"))
        return sorted((en, de, src) for en, (de, src) in pairs.items())

    def _phrase_items(self) -> list[Item]:
        # no phrase may repeat either side of any sentence pair (validation and test included)
        en_seen = {en for en, _, _ in self._pairs or []}
        de_seen = {de for _, de, _ in self._pairs or []}
        phrases = sorted(p for p in parse_phrase_pairs(self.path) if p[0] not in en_seen and p[1] not in de_seen)
        random.Random(self.seed + 1).shuffle(phrases)
        if self.n_phrases > len(phrases):
            raise ValueError(f"n_phrases={self.n_phrases}: the dictionary has {len(phrases)} phrase pairs")
        return [_item(en, de, "trans-de-en-phrase") for en, de in phrases[:self.n_phrases]]

    def generate(self, split: str) -> list[Item]:
        self.check_split(split)
        if self._pairs is None:
            pairs = self._all_pairs()
            random.Random(self.seed).shuffle(pairs)
            held = {f"gettext:{c}" for c in self.unseen_catalogs}
            self._unseen = [p for p in pairs if p[2] in held]
            self._pairs = [p for p in pairs if p[2] not in held]
            missing = held - {p[2] for p in self._unseen}
            if missing:
                have = sorted({p[2].split(":", 1)[1] for p in self._pairs if p[2].startswith("gettext:")})
                raise ValueError(f"unseen_catalogs: no messages from {sorted(m[8:] for m in missing)}; "
                                 f"catalogs with messages: {', '.join(have)}")
        if split == "test-unseen":  # messages of catalogs no other split holds (a package the model never saw)
            return [_item(*p) for p in self._unseen[:self.n_test_unseen]]
        n_eval = self.n_test + self.n_validation
        if n_eval >= len(self._pairs):
            raise ValueError(f"n_test + n_validation = {n_eval} leaves no training pairs (have {len(self._pairs)})")
        bounds = {"test": (0, self.n_test), "validation": (self.n_test, n_eval),
                  "train": (n_eval, len(self._pairs) if self.n_train is None else n_eval + self.n_train)}
        lo, hi = bounds[split]
        if hi > len(self._pairs):
            raise ValueError(f"n_train={self.n_train}: only {len(self._pairs) - n_eval} training pairs exist")
        items = [_item(*p) for p in self._pairs[lo:hi]]
        if split == "train" and self.n_phrases:  # lexicon pairs, interleaved so every batch mixes both kinds
            items = items + self._phrase_items()
            random.Random(self.seed + 2).shuffle(items)
        return items
