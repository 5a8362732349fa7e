"""What made an artifact: package version, git SHA, library versions, time. Written beside every output."""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path

import yaml


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    import torch
    import transformers

    from sparselm import __version__

    return {"sparselm": __version__, "git_sha": git_sha(), "torch": str(torch.__version__),
            "transformers": str(transformers.__version__), "python": platform.python_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_recipe(path: str | Path, settings: dict) -> None:
    """The resolved settings plus provenance, as YAML (never pickle)."""
    doc = {"settings": settings, "provenance": provenance()}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
