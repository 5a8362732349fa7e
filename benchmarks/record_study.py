"""Copy a finished (or partly finished) `sparselm run` output dir into benchmarks/results as one study's record:

    replication_<name>.json   results.json (the issue's schema: task, model, metric, dense, runs, command, device)
    replication_<name>.md     report.md, its image links pointed at the copied plots
    replication_<name>.png    metric vs sparsity per loss
    replication_<name>_loss_curves.png
    replication_<name>_metrics/<run>.jsonl   per-run training logs (teacher.jsonl too)
    replication_<name>_runs/<run>/predictions_<split>.jsonl.gz   the generations (teacher too), gzipped: what
        `sparselm compare` and the re-scoring scripts read, so a later paired test needs no device time

    python benchmarks/record_study.py /path/to/run-dir gsm [--note "..."]

Why a script: the device returns each study as a tarball of the pipeline's output dir, and the record must be
the same shape for every family (the report links, the metrics dir), whoever copies it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def record(src: Path, name: str, notes: list[str], dest: Path = RESULTS) -> Path:
    res_file = src / "results.json"
    if not res_file.is_file():
        raise FileNotFoundError(f"{src}: no results.json (not a `sparselm run` output dir)")
    res = json.loads(res_file.read_text())
    if notes:
        res["notes"] = list(res.get("notes", [])) + notes
    stem = f"replication_{name}"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{stem}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    for plot, suffix in (("metric_vs_sparsity.png", ".png"), ("loss_curves.png", "_loss_curves.png")):
        if (src / plot).is_file():
            shutil.copyfile(src / plot, dest / f"{stem}{suffix}")
    if (src / "report.md").is_file():
        md = (src / "report.md").read_text()
        md = md.replace("(metric_vs_sparsity.png)", f"({stem}.png)")
        md = md.replace("(loss_curves.png)", f"({stem}_loss_curves.png)")
        (dest / f"{stem}.md").write_text(md)
    mdir = dest / f"{stem}_metrics"
    logs = sorted(src.glob("runs/*/metrics.jsonl"))
    if logs or (src / "teacher" / "metrics.jsonl").is_file():
        mdir.mkdir(exist_ok=True)
        for log in logs:
            shutil.copyfile(log, mdir / f"{log.parent.name}.jsonl")
        if (src / "teacher" / "metrics.jsonl").is_file():
            shutil.copyfile(src / "teacher" / "metrics.jsonl", mdir / "teacher.jsonl")
    for pred in sorted(src.glob("runs/*/predictions_*.jsonl")) + sorted(src.glob("teacher/predictions_*.jsonl")):
        run = pred.parent.name
        pdir = dest / f"{stem}_runs" / run
        pdir.mkdir(parents=True, exist_ok=True)
        # mtime=0: the same generations give the same bytes, so re-recording a study leaves git clean
        with open(pred, "rb") as f, open(pdir / f"{pred.name}.gz", "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(f, gz)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="a `sparselm run` output dir")
    ap.add_argument("name", help="the study's name: replication_<name>.json")
    ap.add_argument("--note", action="append", default=[], help="a note appended to the record (repeatable)")
    args = ap.parse_args()
    print(record(args.src, args.name, args.note))


if __name__ == "__main__":
    main()
