"""Claims: several invocations sharing one output dir (one per GPU, same recipe) split the work between them
instead of repeating it. A claim is a file naming the process (host, pid) that holds a run dir, the teacher, or a
staged chain (`<out>/chains/<loss>`); a claim whose process is gone on this host is stale and taken over."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


#: a run's claim file: {"pid", "host"} of the invocation training it, so invocations sharing an output dir (one per
#: GPU, same recipe) split the runs between them instead of repeating them
CLAIM = ".claim.json"


def claim_run(run_dir: Path) -> str | None:
    """Claim `run_dir` for this process: None when claimed (or already ours), else "host:pid" of the live holder.
    A claim whose process is gone (killed by a timeout, a crash) on this host is stale and taken over; a claim
    from another host is honoured (its liveness cannot be checked from here)."""
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    path, me = run_dir / CLAIM, {"pid": os.getpid(), "host": socket.gethostname()}
    # written whole to a private file, then hard-linked into place: the link is the atomic "create if absent",
    # and a reader never sees a half-written claim (which would look stale and be taken over)
    tmp = run_dir / f".claim-{me['host']}-{me['pid']}.tmp"
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(3):  # a retry follows the removal of a stale claim
            try:
                os.link(tmp, path)
                return None
            except FileExistsError:
                other = _read_claim(path, me["host"])
                if other == me:
                    return None
                if other.get("host") != me["host"] or _alive(int(other.get("pid", -1))):
                    return f"{other.get('host')}:{other.get('pid')}"
                # stale: move it aside atomically; if what moved is not the claim judged stale (a new holder
                # linked its own in between), put that back and leave the run to it
                grave = run_dir / f".claim-stale-{me['host']}-{me['pid']}"
                try:
                    os.rename(path, grave)
                except FileNotFoundError:  # another invocation moved it first: try again
                    continue
                moved = _read_claim(grave, me["host"])
                if moved != other:
                    try:
                        os.link(grave, path)
                    except FileExistsError:
                        pass
                    grave.unlink(missing_ok=True)
                    return f"{moved.get('host')}:{moved.get('pid')}"
                grave.unlink(missing_ok=True)
        return "unknown (claim file contended)"
    finally:
        tmp.unlink(missing_ok=True)


def _read_claim(path: Path, host: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable (damaged): nobody can be shown to hold it
        return {"pid": -1, "host": host}


def wait_for_claim(run_dir: Path, say, poll_s: float = 10.0) -> None:
    """Claim `run_dir`, waiting while another live process holds it."""
    told = False
    while (holder := claim_run(run_dir)) is not None:
        if not told:
            say(f"{run_dir.name}: being made by process {holder}; waiting for it")
            told = True
        time.sleep(poll_s)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
