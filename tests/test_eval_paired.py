"""Paired significance tests (sparselm.eval.paired): exact McNemar values, the AR test's behaviour, and errors."""
import math

import pytest

from sparselm.eval.paired import compare_predictions, mcnemar_exact, paired_corpus_metric


def test_mcnemar_exact_values():
    # 10 discordant items all for a: p = 2 * 0.5^10
    r = mcnemar_exact([True] * 10 + [False] * 5, [False] * 10 + [False] * 5)
    assert (r["a_only"], r["b_only"]) == (10, 0) and r["p_value"] == pytest.approx(2 / 1024)
    assert r["diff"] == pytest.approx(10 / 15)
    # 7 vs 3 discordant: two-sided binomial tail = 2 * P(X <= 3 | n=10)
    a = [True] * 7 + [False] * 3 + [True] * 4
    b = [False] * 7 + [True] * 3 + [True] * 4
    want = 2 * sum(math.comb(10, i) for i in range(4)) / 2 ** 10
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(want)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0   # no discordant items
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(want)            # symmetric
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True], [True, False])


def test_paired_ar_bleu_separates_a_real_difference_from_none():
    refs = [f"der Hund Nummer {i} bellt laut im Garten" for i in range(200)]
    wrong = "etwas ganz anderes"
    base = [r if i % 2 else wrong for i, r in enumerate(refs)]           # half right
    better = [r if i % 4 else wrong for i, r in enumerate(refs)]         # three quarters right
    r = paired_corpus_metric(base, better, refs, n_samples=2000)
    assert r["diff"] > 10 and r["p_value"] < 0.01
    lo, hi = r["system_ci95"]
    assert lo < r["system"] < hi
    same = paired_corpus_metric(base, list(base), refs)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_compare_predictions_checks_the_items():
    base = [{"answer": "4", "prediction": "4", "correct": True}, {"answer": "5", "prediction": "6", "correct": False}]
    system = [{"answer": "4", "prediction": "4", "correct": True}, {"answer": "5", "prediction": "5", "correct": True}]
    r = compare_predictions(base, system, "exact_match")
    assert (r["a_only"], r["b_only"], r["diff"]) == (1, 0, 0.5)
    with pytest.raises(ValueError, match="different reference answers"):
        compare_predictions(base, [dict(system[0]), {**system[1], "answer": "7"}], "exact_match")
    with pytest.raises(ValueError, match="no paired test"):
        compare_predictions(base, system, "perplexity")


def test_pipeline_paired_tests_report_a_mismatch_instead_of_failing(tmp_path):
    import json

    from sparselm.pipeline.paired import paired_table, paired_tests

    for run, rows in (("s50-ce", [{"answer": "1", "prediction": "1", "correct": True}]),
                      ("s50-squarehead", [{"answer": "1", "prediction": "1", "correct": True},
                                          {"answer": "2", "prediction": "3", "correct": False}])):
        d = tmp_path / "runs" / run
        d.mkdir(parents=True)
        (d / "predictions_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"metric": "exact_match", "runs": [{"sparsity": 0.5, "loss": loss, "split": "test"}
                                                 for loss in ("ce", "squarehead", "none")]}
    rows = paired_tests(tmp_path, results)
    assert len(rows) == 1 and "not the same split" in rows[0]["error"]
    assert "not tested" in paired_table(rows, {})
    assert paired_tests(tmp_path, {**results, "metric": "perplexity"}) == []


def _rows(correct: list[bool]) -> list[dict]:
    return [{"answer": str(i), "prediction": str(i) if c else "x", "correct": c} for i, c in enumerate(correct)]


def _write_jsonl(path, rows) -> None:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_scored_reads_run_dirs_eval_jsons_and_bare_files(tmp_path):
    """The three things a user has: a `sparselm run` model dir, a `sparselm eval` results JSON, a predictions file;
    each gives the same test. Disagreeing metrics and an unknown metric are errors, not guesses."""
    import json

    from sparselm.eval.paired import compare_scored

    base, system = [True] * 10 + [False] * 20, [True] * 10 + [True] * 12 + [False] * 8
    run_a, run_b = tmp_path / "s75-ce", tmp_path / "s75-sh"
    for d, rows in ((run_a, _rows(base)), (run_b, _rows(system))):
        d.mkdir()
        _write_jsonl(d / "predictions_test.jsonl", rows)
        (d / "eval.json").write_text(json.dumps({"test": {"metric": "exact_match"}}))
    r = compare_scored(run_a, run_b)
    assert (r["a_only"], r["b_only"]) == (12, 0) and r["p_value"] == pytest.approx(2 / 2 ** 12)
    assert r["baseline_value"] == pytest.approx(10 / 30) and r["system_value"] == pytest.approx(22 / 30)
    ev = tmp_path / "eval_gsm_test.json"
    ev.write_text(json.dumps({"metric": "exact_match", "predictions_file": "p.jsonl"}))
    _write_jsonl(tmp_path / "p.jsonl", _rows(system))
    assert compare_scored(run_a, ev)["p_value"] == r["p_value"]
    assert compare_scored(run_a / "predictions_test.jsonl", run_b / "predictions_test.jsonl")["diff"] == r["diff"]
    import gzip

    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:  # the compressed copies benchmarks/results keeps
        f.write((run_b / "predictions_test.jsonl").read_text())
    assert compare_scored(run_a, tmp_path / "b.jsonl.gz")["diff"] == r["diff"]
    (run_b / "eval.json").write_text(json.dumps({"test": {"metric": "bleu"}}))
    with pytest.raises(ValueError, match="different metrics"):
        compare_scored(run_a, run_b)
    bare = [{"answer": "a", "prediction": "b"}]
    _write_jsonl(tmp_path / "x.jsonl", bare)
    with pytest.raises(ValueError, match="--metric"):
        compare_scored(tmp_path / "x.jsonl", tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="predictions_test-unseen"):
        compare_scored(run_a, run_b, split="test-unseen")


def test_compare_command_prints_the_test_and_fails_cleanly(tmp_path):
    import json

    from typer.testing import CliRunner

    from sparselm.cli import app

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_jsonl(a, _rows([False] * 20))
    _write_jsonl(b, _rows([True] * 15 + [False] * 5))
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    assert "diff +75.00 pts" in res.output and "only the system gets right: 15" in res.output
    assert json.loads((tmp_path / "t.json").read_text())["test"] == "mcnemar_exact"
    res = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_pairs_pool_into_one_exact_test(tmp_path):
    """Two seeds of the same comparison: each pair keeps its own test, the pooled test sums the discordant items
    (64 vs 40 of the gsm study's two seeds gives p = 0.024), the command prints both and rejects an odd count."""
    import json

    from typer.testing import CliRunner

    from sparselm.cli import app
    from sparselm.eval.paired import pooled_mcnemar

    got = pooled_mcnemar([{"test": "mcnemar_exact", "n": 300, "a_only": 39, "b_only": 18, "diff": 0.07},
                          {"test": "mcnemar_exact", "n": 300, "a_only": 25, "b_only": 22, "diff": 0.01}])
    assert (got["a_only"], got["b_only"], got["pairs"]) == (64, 40, 2)
    assert abs(got["p_value"] - 0.02365) < 1e-4 and abs(got["diff"] - 0.04) < 1e-12
    one = mcnemar_exact([True] * 9 + [False], [False] * 10)
    assert pooled_mcnemar([one])["p_value"] == one["p_value"]      # one pair: the pair's own test
    with pytest.raises(ValueError, match="exact match"):
        pooled_mcnemar([{"test": "paired_ar_bleu", "n": 3, "diff": 1.0}])
    paths = []
    for seed, (base, system) in enumerate([([False] * 20, [True] * 6 + [False] * 14),
                                           ([False] * 20, [True] * 5 + [False] * 15)]):
        for name, correct in (("ce", base), ("sh", system)):
            paths.append(tmp_path / f"s{seed}-{name}.jsonl")
            _write_jsonl(paths[-1], _rows(correct))
    res = CliRunner().invoke(app, ["compare", *map(str, paths), "--out", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    assert "only the system gets right: 6" in res.output and "only the system gets right: 5" in res.output
    assert "pooled over 2 pairs" in res.output and "system gets right 11, only the baseline 0" in res.output
    doc = json.loads((tmp_path / "t.json").read_text())
    assert len(doc["pairs"]) == 2 and doc["pooled"]["p_value"] == 2 / 2 ** 11
    res = CliRunner().invoke(app, ["compare", *map(str, paths[:3])])
    assert res.exit_code == 2 and "pairs" in res.output


def test_paired_wer_matches_corpus_wer_and_separates_a_real_difference():
    """The test's two WERs are the corpus WERs `sparselm.data.asr.wer` reports; a system that fixes a third of
    the utterances is significant, identical outputs are not, and the sign says which is better (lower WER)."""
    from sparselm.data.asr import wer
    from sparselm.eval.paired import compare_predictions, paired_corpus_wer

    refs = [f"the dog number {i} barks in the garden" for i in range(90)]
    base = [r.replace("dog", "cat").replace("garden", "yard") for r in refs]        # 2 errors each
    better = [r if i % 3 == 0 else b for i, (r, b) in enumerate(zip(refs, base))]   # a third fixed
    res = paired_corpus_wer(base, better, refs, n_samples=2000)
    assert res["baseline"] == pytest.approx(wer(refs, base)) and res["system"] == pytest.approx(wer(refs, better))
    assert res["diff"] < 0 and res["p_value"] < 0.01
    same = paired_corpus_wer(base, list(base), refs)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    rows = lambda hyps: [{"answer": r, "prediction": h} for r, h in zip(refs, hyps)]  # noqa: E731
    assert compare_predictions(rows(base), rows(better), "wer")["test"] == "paired_ar_wer"
    with pytest.raises(ValueError, match="empty"):
        paired_corpus_wer(["a"], ["a"], ["!!"])


def test_pooled_wer_is_the_mean_of_the_pairs_differences_in_one_sign_flip_test(tmp_path):
    """Two seeds of an ASR comparison: the pooled diff is the mean of the two corpus WER differences, a consistent
    small gain that neither seed shows alone becomes significant, BLEU is refused, and `sparselm compare` prints it."""
    from typer.testing import CliRunner

    from sparselm.cli import app
    from sparselm.eval.paired import paired_corpus_wer, pooled_test

    refs = [f"the dog number {i} barks in the garden" for i in range(40)]
    base = [r.replace("dog", "cat").replace("garden", "yard") for r in refs]          # 2 errors each
    rows = lambda hyps: [{"answer": r, "prediction": h} for r, h in zip(refs, hyps)]  # noqa: E731
    pairs = []
    for seed in range(2):
        better = [r if i % 8 == seed else b for i, (r, b) in enumerate(zip(refs, base))]  # 5 of 40 fixed
        pairs.append((rows(base), rows(better)))
    one = [paired_corpus_wer([r["prediction"] for r in b], [r["prediction"] for r in s], refs) for b, s in pairs]
    got = pooled_test("wer", pairs)
    assert got["test"] == "paired_ar_wer_pooled" and got["pairs"] == 2 and got["n"] == 80
    assert got["diff"] == pytest.approx((one[0]["diff"] + one[1]["diff"]) / 2)
    assert got["p_value"] < min(t["p_value"] for t in one)
    with pytest.raises(ValueError, match="corpus scores"):
        pooled_test("bleu", pairs)
    paths = []
    for i, (b, s) in enumerate(pairs):
        for name, r in (("ce", b), ("sh", s)):
            paths.append(tmp_path / f"s{i}-{name}.jsonl")
            _write_jsonl(paths[-1], r)
    res = CliRunner().invoke(app, ["compare", *map(str, paths), "--metric", "wer"])
    assert res.exit_code == 0, res.output
    assert "pooled over 2 pairs: mean diff -0.0312" in res.output and "paired_ar_wer_pooled" in res.output
