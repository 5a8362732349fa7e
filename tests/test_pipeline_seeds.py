"""sparselm.pipeline.seeds / `sparselm seeds`: one study over several seeds, from run dirs and from records."""
import gzip
import json

import pytest
from typer.testing import CliRunner

from sparselm.cli import app
from sparselm.pipeline.seeds import load_study, summarize, write_seeds


def _rows(correct):
    return [{"answer": str(i), "prediction": str(i) if c else "x", "correct": c} for i, c in enumerate(correct)]


def _study(root, seed, results, gz=False, lr=1e-4, record=None):
    """A `sparselm run` output dir (or, with `record`, a record_study layout) holding `results`:
    {(sparsity, loss): list of per-item correctness}."""
    runs_dir = root / "runs" if record is None else root / f"replication_{record}_runs"
    runs = []
    for (sparsity, loss), correct in results.items():
        d = runs_dir / f"s{round(100 * sparsity)}-{loss}"
        d.mkdir(parents=True)
        text = "".join(json.dumps(r) + "\n" for r in _rows(correct))
        if gz:
            with gzip.open(d / "predictions_test.jsonl.gz", "wt") as f:
                f.write(text)
        else:
            (d / "predictions_test.jsonl").write_text(text)
        runs.append({"sparsity": sparsity, "loss": loss, "split": "test", "value": sum(correct) / len(correct)})
    res = {"task": "toy", "model": "tiny", "metric": "exact_match", "higher_is_better": True,
           "dense_all": {"test": {"exact_match": 0.9}}, "runs": runs,
           "settings": {"train": {"seed": seed}, "sparse": {"lr": lr}, "output": {"dir": str(root)}}}
    path = root / "results.json" if record is None else root / f"replication_{record}.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return path.parent if record is None else path


def test_seeds_pool_the_paired_tests_and_report_the_spread(tmp_path):
    n = 20
    a = _study(tmp_path / "a", 0, {(0.75, "ce"): [False] * n, (0.75, "squarehead_token"): [True] * 6 + [False] * 14,
                                   (0.8, "ce"): [False] * n})
    b = _study(tmp_path / "r", 1, {(0.75, "ce"): [True] * 2 + [False] * 18,
                                   (0.75, "squarehead_token"): [True] * 7 + [False] * 13}, gz=True, record="toy_seed1")
    s = summarize([load_study(a), load_study(b)])
    row = next(r for r in s["rows"] if (r["sparsity"], r["loss"]) == (0.75, "squarehead_token"))
    assert row["values"] == [0.3, 0.35] and row["mean"] == pytest.approx(0.325) and row["seeds"] == 2
    assert next(r for r in s["rows"] if r["sparsity"] == 0.8)["values"] == [0.0, None]   # a seed without the run
    (t,) = s["tests"]
    assert [x["a_only"] for x in t["per_seed"]] == [6, 5] and [x["b_only"] for x in t["per_seed"]] == [0, 0]
    assert t["pooled"]["a_only"] == 11 and t["pooled"]["p_value"] == pytest.approx(2 / 2 ** 11)
    assert s["dense"] == [0.9, 0.9] and s["setting_differences"] == {}   # train.seed and output.dir may differ
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["seeds", str(a), str(b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "75% squarehead_token vs ce over 2 seeds" in res.output and "items 11 / 0" in res.output
    md = (out / "seeds.md").read_text()
    assert "| 75% | CE + SquareHead (per-token) | 30.0% | 35.0% | 32.5% |" in md and (out / "seeds.png").is_file()
    assert json.loads((out / "seeds.json").read_text())["tests"][0]["pooled"]["a_only"] == 11


def test_seeds_refuse_other_studies_and_flag_other_settings(tmp_path):
    a = _study(tmp_path / "a", 0, {(0.5, "ce"): [True, False]})
    b = _study(tmp_path / "b", 1, {(0.5, "ce"): [True, True]}, lr=3e-4)
    s = write_seeds([a, b], tmp_path / "out")
    assert s["setting_differences"] == {"sparse.lr": [1e-4, 3e-4]}
    assert "differ beyond the seed: `sparse.lr`" in (tmp_path / "out" / "seeds.md").read_text()
    res = CliRunner().invoke(app, ["seeds", str(a), str(b), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0 and "warning: settings differ beyond the seed: ['sparse.lr']" in res.output
    other = json.loads((b / "results.json").read_text())
    (b / "results.json").write_text(json.dumps({**other, "task": "gsm"}))
    with pytest.raises(ValueError, match="not the same study"):
        write_seeds([a, b], tmp_path / "o3")
    res = CliRunner().invoke(app, ["seeds", str(a), "--out", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "at least two" in res.output
    res = CliRunner().invoke(app, ["seeds", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o5")])
    assert res.exit_code == 2 and "neither a `sparselm run` output dir" in res.output


def test_seeds_pool_wer_runs(tmp_path):
    """An ASR study (WER, lower is better): per-utterance differences of both seeds in one sign-flip test."""
    refs = [f"the dog number {i} barks" for i in range(30)]
    bad = [r.replace("dog", "cat") for r in refs]
    srcs = []
    for seed in range(2):
        root = tmp_path / f"asr{seed}"
        for loss, hyps in (("ce", bad), ("squarehead_token", [r if i % 5 == seed else b
                                                              for i, (r, b) in enumerate(zip(refs, bad))])):
            d = root / "runs" / f"s75-{loss}"
            d.mkdir(parents=True)
            (d / "predictions_test.jsonl").write_text(
                "".join(json.dumps({"answer": r, "prediction": h}) + "\n" for r, h in zip(refs, hyps)))
        (root / "results.json").write_text(json.dumps({
            "task": "asr", "model": "whisper", "metric": "wer", "higher_is_better": False,
            "runs": [{"sparsity": 0.75, "loss": x, "split": "test", "value": v}
                     for x, v in (("ce", 0.2), ("squarehead_token", 0.16))]}))
        srcs.append(root)
    s = write_seeds(srcs, tmp_path / "out")
    (t,) = s["tests"]
    assert t["pooled"]["test"] == "paired_ar_wer_pooled" and t["pooled"]["diff"] == pytest.approx(-6 / 150)
    assert "| 75% | CE + SquareHead (per-token) | -0.040" in (tmp_path / "out" / "seeds.md").read_text()
    res = CliRunner().invoke(app, ["seeds", *map(str, srcs), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0 and "mean diff -0.0400" in res.output


def _record_study_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "record_study.py"
    spec = importlib.util.spec_from_file_location("record_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_record_study_merge_folds_an_earlier_record_and_refuses_another_teacher(tmp_path):
    """record_study.py --merge: one record grown over two sessions, paired tests over all runs, same teacher only."""
    mod = _record_study_module()
    dest = tmp_path / "results"
    n = 20
    _study(dest, 0, {(0.75, "ce"): [True] * 4 + [False] * 16, (0.75, "none"): [False] * n}, gz=True, record="toy")
    new = _study(tmp_path / "new", 0, {(0.75, "squarehead_token"): [True] * 14 + [False] * 6,
                                       (0.75, "none"): [True] * n})
    merged = mod.merge_into(new, "toy", dest)
    mod.record(merged, "toy", [], dest)
    rec = json.loads((dest / "replication_toy.json").read_text())
    got = {(r["sparsity"], r["loss"]): r["value"] for r in rec["runs"]}
    assert got == {(0.75, "ce"): 0.2, (0.75, "squarehead_token"): 0.7, (0.75, "none"): 1.0}  # the new run wins a tie
    assert rec["merged"][0]["runs"] == ["s75-ce"]
    (pair,) = [p for p in rec["paired"] if p["loss"] == "squarehead_token"]
    assert (pair["a_only"], pair["b_only"]) == (10, 0) and pair["diff"] == pytest.approx(0.5)  # vs the kept CE run
    assert (dest / "replication_toy_runs" / "s75-ce" / "predictions_test.jsonl.gz").is_file()
    assert (dest / "replication_toy_runs" / "s75-squarehead_token" / "predictions_test.jsonl.gz").is_file()
    other = _study(tmp_path / "other", 0, {(0.6, "ce"): [True] * n})
    res = json.loads((other / "results.json").read_text())
    res["dense_all"]["test"]["exact_match"] = 0.85
    (other / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="different teachers"):
        mod.merge_into(other, "toy", dest)


def test_plot_grid_reads_every_record_against_its_own_teacher(tmp_path):
    """benchmarks/plot_grid.py over toy records: each run divided by its own record's teacher, schedules kept."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "plot_grid.py"
    spec = importlib.util.spec_from_file_location("plot_grid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _study(tmp_path, 0, {(0.6, "ce"): [True] * 9 + [False]}, record="reasoning")  # teacher 0.9
    staged = _study(tmp_path, 0, {(0.75, "squarehead_token"): [True] * 3 + [False]}, record="reasoning_staged")
    rec = json.loads(staged.read_text())
    rec["dense_all"]["test"]["exact_match"] = 0.5  # another teacher
    staged.write_text(json.dumps(rec))
    rows = mod.collect(tmp_path)
    got = {(r["schedule"], r["loss"]): r["of_teacher"] for r in rows}
    assert got == {("one-shot", "ce"): pytest.approx(1.0), ("staged", "squarehead_token"): pytest.approx(1.5)}
    assert mod.plot(rows, tmp_path / "grid.png").is_file()
