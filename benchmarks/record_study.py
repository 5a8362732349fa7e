"""Copy a finished (or partly finished) `sparselm run` output dir into benchmarks/results as one study's record:

    replication_<name>.json   results.json (the issue's schema: task, model, metric, dense, runs, command, device)
    replication_<name>.md     report.md, its image links pointed at the copied plots
    replication_<name>.png    metric vs sparsity per loss
    replication_<name>_loss_curves.png
    replication_<name>_metrics/<run>.jsonl   per-run training logs (teacher.jsonl too)
    replication_<name>_runs/<run>/predictions_<split>.jsonl.gz   the generations (teacher too), gzipped: what
        `sparselm compare` and the re-scoring scripts read, so a later paired test needs no device time

    python benchmarks/record_study.py /path/to/run-dir gsm [--note "..."]
    python benchmarks/record_study.py /path/to/run-dir reasoning --merge   # add runs to an existing record

--merge folds the record already in benchmarks/results (its runs, generations and training logs) into the new dir's
results before recording, so one study grown over several device sessions stays one record with its paired tests
recomputed over all runs. It refuses when the two teachers differ (dense metrics, or the generations when both
kept them): runs against different teachers are different studies. The new dir's runs win a (sparsity, loss) tie.

Why a script: the device returns each study as a tarball of the pipeline's output dir, and the record must be
the same shape for every family (the report links, the metrics dir), whoever copies it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
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
    for gz in sorted(src.glob("runs/*/predictions_*.jsonl.gz")) + sorted(src.glob("teacher/predictions_*.jsonl.gz")):
        pdir = dest / f"{stem}_runs" / gz.parent.name  # already gzipped (a merged record's earlier runs)
        pdir.mkdir(parents=True, exist_ok=True)
        if gz.resolve() != (pdir / gz.name).resolve():
            shutil.copyfile(gz, pdir / gz.name)
    for pred in sorted(src.glob("runs/*/predictions_*.jsonl")) + sorted(src.glob("teacher/predictions_*.jsonl")):
        run = pred.parent.name
        pdir = dest / f"{stem}_runs" / run
        pdir.mkdir(parents=True, exist_ok=True)
        # mtime=0: the same generations give the same bytes, so re-recording a study leaves git clean
        with open(pred, "rb") as f, open(pdir / f"{pred.name}.gz", "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(f, gz)
    return out


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _same_teacher(new: dict, old: dict, new_dir: Path, old_runs: Path) -> str | None:
    """Why the two records' teachers differ, or None. Dense metrics first; then the generations, item by item."""
    for split, m in (old.get("dense_all") or {}).items():
        n = (new.get("dense_all") or {}).get(split)
        if n is None:
            continue
        for key in ("exact_match", "gsm_exact_match", "bleu", "wer", "loglik_per_token"):
            if key in m and key in n and abs(float(m[key]) - float(n[key])) > 1e-9:
                return f"dense {key} on {split}: {n[key]} here vs {m[key]} in the record"
    for split in (new.get("dense_all") or {}):
        a = new_dir / "teacher" / f"predictions_{split}.jsonl"
        b = old_runs / "teacher" / f"predictions_{split}.jsonl.gz"
        if a.is_file() and b.is_file():
            ga = [r.get("generation", r.get("prediction")) for r in _read_jsonl(a)]
            gb = [r.get("generation", r.get("prediction")) for r in _read_jsonl(b)]
            if ga != gb:
                diff = sum(x != y for x, y in zip(ga, gb)) + abs(len(ga) - len(gb))
                return f"the teachers' generations on {split} differ on {diff} items"
    return None


def merge_into(src: Path, name: str, dest: Path = RESULTS) -> Path:
    """A temporary copy of `src` with the existing record's runs folded in (see the module docstring)."""
    from sparselm.pipeline.paired import paired_tests
    from sparselm.pipeline.report import write_report
    from sparselm.pipeline.schema import run_name

    stem = f"replication_{name}"
    old = json.loads((dest / f"{stem}.json").read_text())
    new = json.loads((src / "results.json").read_text())
    old_runs = dest / f"{stem}_runs"
    why = _same_teacher(new, old, src, old_runs)
    if why is not None:
        raise SystemExit(f"not merged: {why} (different teachers: record it under its own name)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{stem}_merge_"))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    have = {(r["sparsity"], r["loss"]) for r in new["runs"]}
    kept = [r for r in old["runs"] if (r["sparsity"], r["loss"]) not in have]
    for run in {(r["sparsity"], r["loss"]) for r in kept}:
        rname = run_name(*run)
        rdir = tmp / "runs" / rname
        rdir.mkdir(parents=True, exist_ok=True)
        for gz in sorted((old_runs / rname).glob("predictions_*.jsonl.gz")):
            shutil.copyfile(gz, rdir / gz.name)
        log = dest / f"{stem}_metrics" / f"{rname}.jsonl"
        if log.is_file():
            shutil.copyfile(log, rdir / "metrics.jsonl")
    if not (tmp / "teacher").is_dir() and (old_runs / "teacher").is_dir():
        shutil.copytree(old_runs / "teacher", tmp / "teacher")
    new["runs"] = kept + new["runs"]
    new["merged"] = list(old.get("merged", [])) + [{"command": old.get("command"), "device": old.get("device"),
                                                     "runs": sorted({run_name(r["sparsity"], r["loss"])
                                                                     for r in kept})}]
    new["notes"] = list(old.get("notes", [])) + list(new.get("notes", []))
    new["paired"] = paired_tests(tmp, new)
    (tmp / "results.json").write_text(json.dumps(new, indent=2) + "\n")
    write_report(new, tmp)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="a `sparselm run` output dir")
    ap.add_argument("name", help="the study's name: replication_<name>.json")
    ap.add_argument("--note", action="append", default=[], help="a note appended to the record (repeatable)")
    ap.add_argument("--merge", action="store_true",
                    help="fold the existing record of this name into the new runs (same teacher only)")
    args = ap.parse_args()
    src = merge_into(args.src, args.name) if args.merge else args.src
    print(record(src, args.name, args.note))


if __name__ == "__main__":
    main()
