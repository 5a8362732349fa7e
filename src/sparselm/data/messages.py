"""English→German pairs from the gettext message catalogs installed with system software.

Every package that ships a German translation installs ``/usr/share/locale/de/LC_MESSAGES/<domain>.mo``: a table
of English source messages (``msgid``) and their German translations (``msgstr``), made by human translators.
On a Debian machine with the usual base packages (coreutils, git, glib, gtk, postgres client, ...) that is ≈80
catalogs and ≈32,000 usable pairs: a second offline parallel corpus, of a different domain from the dictionary's
example sentences (software messages: literal, repetitive terminology, printf placeholders) and far more regular,
which is what a translator trained from scratch needs.

A pair is kept when, after collapsing whitespace (multi-line messages become one line):
  * the English side has 3-40 words and both sides are non-empty and differ (an untranslated entry copies msgid);
  * neither side contains ``<``, ``>``, ``$``, a backslash, a tab, ``...`` or ``…`` (markup, shell fragments,
    elisions);
  * it is not a plural form or a context-qualified entry (those are keyed by tuples or carry ``\\x04``).
printf placeholders (``%s``, ``%d``, ``%1$s`` is excluded by the ``$`` rule) stay: a translator must copy them.
Pairs are deduplicated by the English message, first catalog in sorted file order kept. Catalogs that cannot be
decoded (a wrong charset in the header) are skipped and named in the returned `skipped` list.
"""
from __future__ import annotations

import gettext
import struct
import re
from pathlib import Path

DEFAULT_LOCALE_DIR = Path("/usr/share/locale")
_REJECT = re.compile(r"[<>$\\\t]|\.\.\.|…")
MIN_WORDS, MAX_WORDS = 3, 40


def _catalog(path: Path) -> dict:
    with path.open("rb") as f:
        return gettext.GNUTranslations(f)._catalog  # the parsed msgid -> msgstr table of the stdlib reader


def keep_pair(en: str, de: str) -> bool:
    """The filter of the module docstring, on whitespace-collapsed messages."""
    return (bool(en) and bool(de) and en != de and "\x04" not in en and MIN_WORDS <= len(en.split()) <= MAX_WORDS
            and not _REJECT.search(en) and not _REJECT.search(de))


def parse_catalogs(locale_dir: str | Path = DEFAULT_LOCALE_DIR, lang: str = "de"
                   ) -> tuple[list[tuple[str, str, str]], list[str]]:
    """((english, german, domain) pairs deduplicated by English, in sorted catalog order; skipped catalogs)."""
    folder = Path(locale_dir) / lang / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no gettext catalogs (*.mo); they come with installed software's "
                                f"translations (on Debian/Ubuntu the packages keep /usr/share/locale/{lang}; a "
                                f"minimal image may exclude it in /etc/dpkg/dpkg.cfg.d)")
    pairs: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    for path in files:
        try:
            catalog = _catalog(path)
        except (OSError, UnicodeDecodeError, ValueError, struct.error) as e:  # a lying charset; a truncated file
            skipped.append(f"{path.name}: {type(e).__name__}")
            continue
        for en, de in catalog.items():
            if not isinstance(en, str) or not isinstance(de, str):  # plural forms: (msgid, index) keys
                continue
            en, de = " ".join(en.split()), " ".join(de.split())
            if keep_pair(en, de):
                pairs.setdefault(en, (de, path.stem))
    return [(en, de, dom) for en, (de, dom) in pairs.items()], skipped
