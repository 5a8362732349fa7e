"""Chain-of-thought diagnostics (sparselm.eval.chains): equations read through unit words, checked safely."""
import pytest

from sparselm.eval.chains import arithmetic, chain_diagnostics, check_equations


@pytest.mark.parametrize("text,expected", [
    ("While Emma is processing 42 orders in a day, Olivia processes 42 orders/day * 3 = 126 orders/day.", (1, 0)),
    ("In a day, they process 126 orders/day + 42 orders/day = 168 orders together.", (1, 0)),
    ("she used 190/216*1512 = 1330", (1, 0)),
    ("The total is 168 orders/day * 7 days/week = 1176 orders", (1, 0)),
    ("5 * 4 = 21", (1, 1)),
    ("$5 + $3 = $8 and 2 * (3 + 4) = 14", (2, 0)),
    ("3 x 4 = 12, then 3×5 = 16", (2, 1)),
    ("1,000 * 2 = 2,000 coins", (1, 0)),
    ("0.25 * 300 = 75 orcs", (1, 0)),
    ("-3 + 5 = 2", (1, 0)),
    ("x = 5, so the total is 12 = 12", (0, 0)),          # labels and bare numbers: nothing to check
    ("20% of 50 = 10", (0, 0)),                          # percentages are not read
    ("10 / 3 = 3.33 per person", (1, 0)),                # rounding within 0.5%
    ("7 / 0 = 1", (0, 0)),                               # not arithmetic: skipped, not counted wrong
])
def test_check_equations(text, expected):
    assert check_equations(text) == expected


def test_arithmetic_is_closed():
    assert arithmetic("2 * (3 + 4)") == 14
    for bad in ("__import__('os')", "2 ** 10", "a + 1", "[1]", "", "True + 1"):
        assert arithmetic(bad) is None


def test_chain_diagnostics():
    gens = ["4 * 3 = 12\n#### 12", "4 * 3 = 13\n#### 13", "no answer here 2 + 2 = 4"]
    d = chain_diagnostics(gens)
    assert d == {"no_answer": pytest.approx(1 / 3), "equations_per_item": 1.0,
                 "equation_error_rate": pytest.approx(1 / 3), "items_with_wrong_equation": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="no generations"):
        chain_diagnostics([])


def test_report_shows_how_chains_fail(tmp_path):
    from sparselm.pipeline.report import chains_table, write_report

    chains = {"no_answer": 0.1, "equations_per_item": 2.5, "equation_error_rate": 0.2,
              "items_with_wrong_equation": 0.4}
    res = {"task": "gsm", "model": "tiny", "metric": "exact_match", "higher_is_better": True,
           "dense_all": {"test": {"exact_match": 0.5, "n": 10, "chains": chains}},
           "runs": [{"sparsity": 0.75, "loss": "ce", "split": "test", "value": 0.3,
                     "metrics": {"exact_match": 0.3, "chains": {**chains, "no_answer": 0.9},
                                 "ends": {"eos": 0.25, "stop": 0.5, "budget": 0.25}}}]}
    table = chains_table(res)
    assert "| 0% (dense) | teacher | 10.0% | 2.50 | 20.0% | 40.0% | - |" in table  # recorded before `ends`
    assert "| 25.0% / 50.0% / 25.0% |" in table
    assert "| 75% | CE | 90.0% |" in table
    assert "## How the chains fail (`test`)" in write_report(res, tmp_path).read_text()
    assert chains_table({"runs": [], "dense_all": {"test": {"n": 3}}}) == ""


def test_gsm_failures_script(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gsm_failures.py"
    spec = importlib.util.spec_from_file_location("gsm_failures", path)
    gf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gf)
    rows = [{"answer": "10", "prediction": "10", "correct": True, "generation": "5 * 2 = 10\n#### 10"},
            {"answer": "10", "prediction": "200", "correct": False, "generation": "5 * 2 = 11\n#### 200"},
            {"answer": "10", "correct": False, "generation": "5 * 2 = 10"}]
    d = tmp_path / "preds"
    d.mkdir()
    (d / "s75-ce_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gf.main([str(d), "--out", str(tmp_path / "modes.json")])
    r = json.loads((tmp_path / "modes.json").read_text())["runs"]["s75-ce"]
    assert r["exact_match"] == pytest.approx(1 / 3) and r["no_answer"] == pytest.approx(1 / 3)
    assert r["off_by_10x"] == pytest.approx(1 / 3) and r["within_5pct"] == pytest.approx(1 / 3)
    assert r["chains"]["equation_error_rate"] == pytest.approx(1 / 3)
    assert (tmp_path / "modes.png").read_bytes()[:4] == b"\x89PNG"


def test_results_table_shows_chain_columns():
    from sparselm.eval.table import results_rows

    cols, rows = results_rows([{"task": "gsm", "exact_match": 0.5, "chains": {"no_answer": 0.25,
                                                                             "equation_error_rate": 0.125}}])
    assert cols == ["task", "exact_match", "no_answer", "equation_error_rate"]
    assert rows == [["gsm", "50.00%", "25.0%", "12.5%"]]
    cols, rows = results_rows([{"task": "gsm", "ends": {"eos": 0.75, "stop": 0.25, "budget": 0.0}}])
    assert cols == ["task", "ended_at_eos"] and rows == [["gsm", "75.0%"]]


def test_rescore_gsm_script(tmp_path):
    """Re-scoring reads the first #### answer of kept generations (plain or gzip files) and pairs runs with the
    baseline at the same sparsity."""
    import gzip
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rescore_gsm.py"
    spec = importlib.util.spec_from_file_location("rescore_gsm", path)
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)

    def write(d, gens, gz=False):
        d.mkdir(parents=True)
        rows = [{"answer": "4", "generation": g, "correct": g.rstrip().endswith("#### 4")} for g in gens]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if gz:
            with gzip.open(d / "predictions_test.jsonl.gz", "wt") as f:
                f.write(text)
        else:
            (d / "predictions_test.jsonl").write_text(text)

    write(tmp_path / "teacher", [" 2+2=4\n#### 4\n#### 5", " 2+2=4\n#### 4"])
    write(tmp_path / "ce", [" 2+2=5\n#### 5\n#### 4", " 2+2=4\n#### 4"], gz=True)
    write(tmp_path / "sh", [" 2+2=4\n#### 4\n#### 9", " 2+2=4\n#### 4"])
    rs.main(["--teacher", str(tmp_path / "teacher"), "--splits", "test", "--name", "t", "--results-dir",
             str(tmp_path), "--run", f"ce:0.7:ce:{tmp_path / 'ce'}", "--run", f"sh:0.7:squarehead:{tmp_path / 'sh'}"])
    rec = json.loads((tmp_path / "replication_t.json").read_text())
    assert rec["dense"] == 1.0 and rec["dense_all"]["test"]["value_as_recorded"] == 0.5
    ce, sh = rec["runs"]
    assert (ce["value"], ce["value_as_recorded"], sh["value"], sh["value_as_recorded"]) == (0.5, 1.0, 1.0, 0.5)
    assert ce["run_on"] == 0.5 and ce["chains"]["equation_error_rate"] == 0.5  # "2+2=5"; the run-on is not read
    assert rec["paired"][0]["label"] == "sh" and rec["paired"][0]["a_only"] == 1
    assert (tmp_path / "replication_t.png").read_bytes()[:4] == b"\x89PNG"


def test_pipeline_summary_line_shows_the_eos_share():
    from sparselm.pipeline.run import _summary

    line = _summary({"test": {"metric": "gsm_exact_match", "exact_match": 0.5, "loglik_per_token": -0.25,
                              "ends": {"eos": 0.9, "stop": 0.1, "budget": 0.0}}})
    assert line == "test exact_match=0.500 ll/tok=-0.250 eos=90%"
