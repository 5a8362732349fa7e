"""`sparselm run`: the pipeline end to end on a tiny Llama (character tokenizer built in code, arithmetic items in a
data dir), resume, recipe validation errors, and every shipped pipeline recipe validates."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from sparselm.pipeline import load_pipeline_recipe, validate_pipeline_recipe
from sparselm.pipeline.run import plan_runs, run_pipeline, sparse_recipe, teacher_recipe
from sparselm.recipes.schema import RecipeError, validate_finetune_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src" / "sparselm" / "recipes"
PIPELINE_YAMLS = ["demo-cpu.yaml", "reasoning-smollm2.yaml", "gsm-smollm2.yaml", "asr-whisper.yaml",
                  "translation-t5.yaml"]


def _arith_dir(root: Path) -> Path:
    """train/validation/test .jsonl of "a+b=" -> "c" (characters the tiny char tokenizer knows)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("validation", 8), ("test", 8)):
        rows = []
        for _ in range(n):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            rows.append({"prompt": f"{a}+{b}=", "completion": f"{a + b}\n", "answer": str(a + b)})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _recipe(data: Path, out: Path, **extra) -> dict:
    r = {"model": {"name": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                   "intermediate_size": 64, "max_positions": 32}},
         "task": str(data),
         "eval": {"splits": ["test", "validation"], "limit": 6, "batch_size": 8, "max_new_tokens": 4},
         "teacher": {"steps": 8, "lr": 3e-3},
         "sparsities": [0.5], "losses": ["squarehead", "ce", "none"],
         "sparse": {"steps": 4, "lr": 1e-3},
         "pruning": {"method": "sparsegpt", "calib_samples": 8},
         "train": {"batch_size": 8, "seqlen": 16, "log_every": 2, "threads": 1},
         "output": {"dir": str(out)},
         "notes": ["tiny test budget: the numbers mean nothing"]}
    r.update(extra)
    return r


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    data = _arith_dir(root / "data")
    out = run_pipeline(validate_pipeline_recipe(_recipe(data, root / "out")), command="test")
    return data, out


def test_pipeline_end_to_end(finished) -> None:
    _, out = finished
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "exact_match" and res["higher_is_better"] is True
    assert set(res["dense_all"]) == {"test", "validation"} and res["dense"] is not None
    got = {(r["sparsity"], r["loss"], r["split"]) for r in res["runs"]}
    assert got == {(0.5, loss, s) for loss in ("squarehead", "ce", "none") for s in ("test", "validation")}
    for run in ("s50-squarehead", "s50-ce", "s50-none"):
        sp = json.loads((out / "runs" / run / "sparsity.json").read_text())
        assert abs(sp["overall"] - 0.5) < 0.02, (run, sp["overall"])
        assert not list((out / "runs" / run).glob("*.safetensors")), "weights are dropped unless keep_models"
    assert (out / "runs" / "s50-squarehead" / "metrics.jsonl").is_file()
    report = (out / "report.md").read_text()
    assert "| sparsity | loss | test exact_match" in report
    assert "| 50% | CE + SquareHead |" in report and "| 50% | SparseGPT only |" in report
    assert "tiny test budget" in report
    for png in ("metric_vs_sparsity.png", "loss_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in report
    # per-item predictions beside each run, and the paired test of each distillation loss against CE from them
    preds = [json.loads(x) for x in (out / "runs" / "s50-ce" / "predictions_test.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"answer", "prediction", "correct", "generation", "end"} <= set(preds[0])
    assert (out / "teacher" / "predictions_validation.jsonl").is_file()
    paired = {(r["sparsity"], r["loss"], r["split"]): r for r in res["paired"]}
    assert set(paired) == {(0.5, "squarehead", "test"), (0.5, "squarehead", "validation")}
    row = paired[(0.5, "squarehead", "test")]
    correct = {run: sum(json.loads(x)["correct"] for x in (out / "runs" / run / "predictions_test.jsonl")
                        .read_text().splitlines()) for run in ("s50-ce", "s50-squarehead")}
    assert row["test"] == "mcnemar_exact" and 0 < row["p_value"] <= 1
    assert row["diff"] == pytest.approx((correct["s50-squarehead"] - correct["s50-ce"]) / 6)
    assert "## Paired tests vs CE" in report


def test_pipeline_resume_skips_finished_runs(finished, monkeypatch, capsys) -> None:
    data, out = finished
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.jsonl")}
    teacher_mtime = (out / "teacher" / "run.json").stat().st_mtime_ns
    trained: list[str] = []
    import sparselm.pipeline.run as run_mod

    real = run_mod._finetune
    monkeypatch.setattr(run_mod, "_finetune", lambda rec: (trained.append(rec["output"]["dir"]), real(rec)))
    run_pipeline(validate_pipeline_recipe(_recipe(data, out, losses=["squarehead", "ce", "none", "kd"])))
    assert [Path(d).name for d in trained] == ["s50-kd"], "only the new run trains; the teacher is reused"
    assert (out / "teacher" / "run.json").stat().st_mtime_ns == teacher_mtime
    assert {p: p.stat().st_mtime_ns for p in before} == before
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 8
    # with KD there, SquareHead is tested against both baselines, KD against CE (CE never against KD twice)
    assert {(p["loss"], p["baseline"]) for p in res["paired"] if p["split"] == "test"} == {
        ("squarehead", "ce"), ("kd", "ce"), ("squarehead", "kd")}
    assert "| CE + SquareHead | CE + KD |" in (out / "report.md").read_text()
    # changed teacher settings: nothing is redone silently, and the user is told
    changed = _recipe(data, out, losses=["squarehead", "ce", "none", "kd"], teacher={"steps": 9, "lr": 3e-3})
    run_pipeline(validate_pipeline_recipe(changed))
    assert [Path(d).name for d in trained] == ["s50-kd"]
    assert "other teacher settings" in capsys.readouterr().err


def test_recipe_errors_name_the_field(tmp_path) -> None:
    base = _recipe(tmp_path, tmp_path / "o")
    cases = [({"teacher": {"epocs": 1}}, "teacher.epocs"),
             ({"losses": ["squarehead", "l2"]}, "losses.1"),
             ({"sparsities": [0.5, 1.2]}, "sparsities"),
             ({"sparse": {"lr": 1e-4}}, "sparse: Value error, set epochs or steps".split(":")[0]),
             ({"teacher": {"lr": 1e-4}}, "teacher"),
             ({"colour": "red"}, "colour")]
    for extra, field in cases:
        with pytest.raises(RecipeError) as e:
            validate_pipeline_recipe({**base, **extra})
        assert str(e.value).startswith("recipe: " + field), (extra, str(e.value))
    with pytest.raises(RecipeError, match="sparse.staged: sparsities must increase"):
        validate_pipeline_recipe({**base, "sparsities": [0.7, 0.5], "sparse": {"steps": 1, "staged": True}})


def test_overrides_and_built_finetune_recipes(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, tmp_path / "o")))
    r = load_pipeline_recipe(path, ["sparsities=[0.5,0.7]", "losses=[kd]", "sparse.lr=2e-4"])
    assert plan_runs(r) == [(0.5, "kd"), (0.7, "kd")]
    with pytest.raises(RecipeError, match="sparse.lr"):
        load_pipeline_recipe(path, ["sparse.lr=-1"])
    validate_finetune_recipe(teacher_recipe(r, tmp_path / "t"))
    fr = validate_finetune_recipe(sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.7, "kd", tmp_path / "s"))
    assert fr.pruning.stages[0].sparsity == 0.7 and fr.loss.kd == 1.0 and fr.optim.lr == 2e-4
    assert fr.teacher is not None and fr.teacher.path == str(tmp_path / "t")
    ce = validate_finetune_recipe(sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.7, "ce", tmp_path / "s"))
    assert ce.teacher is None and ce.loss.squarehead == 0


@pytest.mark.parametrize("name", PIPELINE_YAMLS)
def test_shipped_pipeline_recipes_validate(name) -> None:
    r = load_pipeline_recipe(RECIPES / name)
    # each one also yields valid fine-tuning recipes for its teacher and its first sparse run
    if r.teacher.path is None:
        validate_finetune_recipe(teacher_recipe(r, Path("t")))
    validate_finetune_recipe(sparse_recipe(r, Path("t"), Path("t"), r.sparsities[0], r.losses[0], Path("s")))


def test_staged_runs_start_from_the_previous_sparsity(tmp_path) -> None:
    data = _arith_dir(tmp_path / "data")
    r = _recipe(data, tmp_path / "out", sparsities=[0.5, 0.7], losses=["ce"],
                sparse={"steps": 2, "lr": 1e-3, "staged": True}, teacher={"steps": 2, "lr": 1e-3},
                eval={"splits": ["test"], "limit": 2, "batch_size": 2, "max_new_tokens": 2})
    out = run_pipeline(validate_pipeline_recipe(r))
    s70 = out / "runs" / "s70-ce"
    assert yaml.safe_load((s70 / "recipe.yaml").read_text())["model"]["name"] == str(out / "runs" / "s50-ce")
    assert abs(json.loads((s70 / "sparsity.json").read_text())["overall"] - 0.7) < 0.02
    assert not list(s70.glob("*.safetensors")), "staged weights are dropped at the end unless keep_models"


def test_staged_chain_cut_by_the_budget_resumes(tmp_path, monkeypatch) -> None:
    """A call that stops after a chain's first stage keeps that stage's weights, so the next call can run the
    second stage from them (it used to drop them and fail with "the staged run needs this model's weights")."""
    import sparselm.pipeline.run as run_mod

    data = _arith_dir(tmp_path / "data")
    r = validate_pipeline_recipe(_recipe(
        data, tmp_path / "out", sparsities=[0.5, 0.7], losses=["ce"],
        sparse={"steps": 2, "lr": 1e-3, "staged": True}, teacher={"steps": 2, "lr": 1e-3},
        eval={"splits": ["test"], "limit": 2, "batch_size": 2, "max_new_tokens": 2}))
    one_run = run_mod._one_run

    def first_stage_then_out_of_time(recipe, *a, **k):
        result = one_run(recipe, *a, **k)
        recipe.output.budget_s = 1e-6  # as if the call's time ran out during the first stage
        return result

    monkeypatch.setattr(run_mod, "_one_run", first_stage_then_out_of_time)
    out = run_pipeline(r.model_copy(deep=True))
    s50, s70 = out / "runs" / "s50-ce", out / "runs" / "s70-ce"
    assert list(s50.glob("*.safetensors")) and not s70.exists()
    monkeypatch.setattr(run_mod, "_one_run", one_run)
    run_pipeline(r)
    assert abs(json.loads((s70 / "sparsity.json").read_text())["overall"] - 0.7) < 0.02
    assert not list(s50.glob("*.safetensors")) and not list(s70.glob("*.safetensors")), \
        "a finished chain keeps no weights unless keep_models"


def test_staged_chain_grows_after_its_weights_were_dropped(tmp_path) -> None:
    """A finished chain keeps no weights; adding a higher sparsity later re-trains the dropped stage first (and
    re-evaluates it, since that is the model the new stage grows from) instead of failing."""
    data = _arith_dir(tmp_path / "data")
    base = dict(losses=["ce"], sparse={"steps": 2, "lr": 1e-3, "staged": True}, teacher={"steps": 2, "lr": 1e-3},
                eval={"splits": ["test"], "limit": 2, "batch_size": 2, "max_new_tokens": 2})
    out = run_pipeline(validate_pipeline_recipe(_recipe(data, tmp_path / "out", sparsities=[0.5], **base)))
    s50, s70 = out / "runs" / "s50-ce", out / "runs" / "s70-ce"
    assert not list(s50.glob("*.safetensors"))
    run_pipeline(validate_pipeline_recipe(_recipe(data, tmp_path / "out", sparsities=[0.5, 0.7], **base)))
    assert yaml.safe_load((s70 / "recipe.yaml").read_text())["model"]["name"] == str(s50)
    assert abs(json.loads((s70 / "sparsity.json").read_text())["overall"] - 0.7) < 0.02
    assert (s50 / "eval.json").is_file() and not list(s50.glob("*.safetensors"))
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["sparsity"] for r in runs) == [0.5, 0.7]


def test_one_staged_chain_per_invocation_share_a_dir(tmp_path) -> None:
    """The two-GPU gsm layout: one invocation per loss into one output dir, each a staged chain; the teacher is
    trained once, the results merge, and the paired tests cover SquareHead against CE at every stage."""
    data = _arith_dir(tmp_path / "data")
    base = dict(sparsities=[0.5, 0.7], sparse={"steps": 2, "lr": 1e-3, "staged": True},
                teacher={"steps": 2, "lr": 1e-3},
                eval={"splits": ["test"], "limit": 4, "batch_size": 4, "max_new_tokens": 2})
    out = run_pipeline(validate_pipeline_recipe(_recipe(data, tmp_path / "out", losses=["ce"], **base)))
    teacher_mtime = (out / "teacher" / "run.json").stat().st_mtime
    run_pipeline(validate_pipeline_recipe(_recipe(data, tmp_path / "out", losses=["squarehead_token"], **base)))
    assert (out / "teacher" / "run.json").stat().st_mtime == teacher_mtime, "the teacher is reused"
    res = json.loads((out / "results.json").read_text())
    assert sorted((r["sparsity"], r["loss"]) for r in res["runs"]) == [
        (0.5, "ce"), (0.5, "squarehead_token"), (0.7, "ce"), (0.7, "squarehead_token")]
    assert sorted((p["sparsity"], p["loss"]) for p in res["paired"]) == [
        (0.5, "squarehead_token"), (0.7, "squarehead_token")]
    s70 = out / "runs" / "s70-squarehead_token"
    assert yaml.safe_load((s70 / "recipe.yaml").read_text())["model"]["name"] == str(out / "runs" /
                                                                                      "s50-squarehead_token")


def test_a_staged_chain_held_by_another_invocation_is_skipped_whole(tmp_path) -> None:
    """Two invocations of one staged recipe (both losses) on one dir, e.g. one per GPU: each chain is claimed
    whole (`<out>/chains/<loss>`), so the other invocation runs the other chain instead of the same stages; a chain
    left by a finished (or dead) holder is taken up later and grows from its own previous stage."""
    import os
    import socket

    from sparselm.pipeline.run import CLAIM

    data = _arith_dir(tmp_path / "data")
    r = validate_pipeline_recipe(_recipe(data, tmp_path / "out", sparsities=[0.5, 0.7],
                                         losses=["squarehead_token", "ce"],
                                         sparse={"steps": 2, "lr": 1e-3, "staged": True},
                                         teacher={"steps": 2, "lr": 1e-3},
                                         eval={"splits": ["test"], "limit": 2, "batch_size": 2, "max_new_tokens": 2}))
    lock = tmp_path / "out" / "chains" / "ce"
    lock.mkdir(parents=True)
    (lock / CLAIM).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # a live holder
    out = run_pipeline(r.model_copy(deep=True))
    runs = {(x["sparsity"], x["loss"]) for x in json.loads((out / "results.json").read_text())["runs"]}
    assert runs == {(0.5, "squarehead_token"), (0.7, "squarehead_token")}
    assert not (out / "runs" / "s50-ce").exists(), "the held chain's stages are not started here"
    assert not (out / "chains" / "squarehead_token" / CLAIM).exists(), "this invocation's chain claim is released"
    (lock / CLAIM).unlink()  # the holder finished (or died) without the chain
    run_pipeline(r.model_copy(deep=True))
    s70 = out / "runs" / "s70-ce"
    assert yaml.safe_load((s70 / "recipe.yaml").read_text())["model"]["name"] == str(out / "runs" / "s50-ce")
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 4


def test_results_of_concurrent_invocations_merge(tmp_path) -> None:
    """Two invocations on one output dir (e.g. one per GPU, disjoint sparsities) each save; neither drops the
    other's runs, and the one that evaluated the teacher keeps the dense numbers."""
    from sparselm.pipeline.run import Results

    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparsities=[0.5, 0.7]))
    path = tmp_path / "results.json"
    a, b = Results(path, r, "a"), Results(path, r, "b")  # both started before either saved
    ev = {"test": {"metric": "exact_match", "exact_match": 0.5}}
    a.set_dense(ev)
    a.add_run(0.5, "ce", ev, 1.0)
    a.save()
    b.add_run(0.7, "ce", {"test": {"metric": "exact_match", "exact_match": 0.25}}, 2.0)
    b.save()
    got = json.loads(path.read_text())
    assert {(x["sparsity"], x["value"]) for x in got["runs"]} == {(0.5, 0.5), (0.7, 0.25)}
    assert got["dense"] == 0.5 and got["metric"] == "exact_match"
    a.add_run(0.5, "ce", {"test": {"metric": "exact_match", "exact_match": 0.75}}, 1.0)  # a rerun replaces its own
    a.save()
    got = json.loads(path.read_text())
    assert sorted((x["sparsity"], x["value"]) for x in got["runs"]) == [(0.5, 0.75), (0.7, 0.25)]


def test_finished_runs_are_recovered_without_retraining(finished, tmp_path, monkeypatch) -> None:
    """results.json lost (or written by another invocation): evaluated runs are read back from their eval.json."""
    import shutil

    import sparselm.pipeline.run as run_mod

    data, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    monkeypatch.setattr(run_mod, "_finetune", lambda *a: pytest.fail("nothing should be retrained"))
    monkeypatch.setattr(run_mod, "prune_only", lambda *a: pytest.fail("nothing should be re-pruned"))
    run_pipeline(validate_pipeline_recipe(_recipe(data, copy)))
    got = json.loads((copy / "results.json").read_text())
    want = json.loads((out / "results.json").read_text())
    want["runs"] = [x for x in want["runs"] if x["loss"] in ("squarehead", "ce", "none")]  # an earlier test adds kd
    key = lambda x: (x["sparsity"], x["loss"], x["split"])  # noqa: E731
    assert sorted((key(x), x["value"]) for x in got["runs"]) == sorted((key(x), x["value"]) for x in want["runs"])


def test_a_run_trained_by_an_earlier_invocation_keeps_its_train_seconds(tmp_path, monkeypatch) -> None:
    """A call's budget can end between a run's training and its evaluation; the next call evaluates it and must
    report the seconds the training took, not the ~0 s of finding the model on disk."""
    import sparselm.pipeline.run as run_mod

    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparsities=[0.5]))
    teacher = tmp_path / "out" / "teacher"
    run_dir = tmp_path / "out" / "runs" / "s50-ce"
    for d in (teacher, run_dir):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"")
        (d / "run.json").write_text("{}")
    monkeypatch.setattr(run_mod, "_finetune", lambda *a: pytest.fail("the run is on disk: nothing to train"))
    (run_dir / "timing.json").write_text(json.dumps({"train_s": 123.4}))
    assert run_mod._one_run(r, teacher, tmp_path / "out", 0.5, "ce", None) == (run_dir, 123.4)
    (run_dir / "timing.json").unlink()  # no record (an older run dir): the seconds measured now, and kept
    _, secs = run_mod._one_run(r, teacher, tmp_path / "out", 0.5, "ce", None)
    assert json.loads((run_dir / "timing.json").read_text())["train_s"] == round(secs, 1)


def test_epochs_by_sparsity_lengthens_one_stage(tmp_path) -> None:
    """sparse.epochs_by_sparsity: a longer first stage of a chain (also from a command-line override); keys must
    be sparsities of the recipe and the length must be in epochs."""
    from sparselm.pipeline.run import resolve

    sparse = {"epochs": 2, "lr": 1e-3, "staged": True, "epochs_by_sparsity": {0.5: 5}}
    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparsities=[0.5, 0.7], sparse=sparse))
    got = {sp: sparse_recipe(r, tmp_path / "t", tmp_path / "t", sp, "ce", tmp_path / "s")["pruning"]["stages"][0]
           for sp in (0.5, 0.7)}
    assert got[0.5]["epochs"] == 5 and got[0.7]["epochs"] == 2
    again = resolve(r, ["sparse.epochs_by_sparsity={0.7: 9}"])
    assert again.sparse.epochs_at(0.7) == 9 and again.sparse.epochs_at(0.5) == 2
    with pytest.raises(Exception, match="not among the sparsities"):
        validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparsities=[0.5],
                                         sparse={**sparse, "epochs_by_sparsity": {0.6: 3}}))
    with pytest.raises(Exception, match="YAML reads"):  # {0.7:16} without the space: one string key
        resolve(r, ["sparse.epochs_by_sparsity={0.7:16}"])
    with pytest.raises(Exception, match="leave sparse.steps unset"):
        validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparsities=[0.5],
                                         sparse={"steps": 4, "lr": 1e-3, "epochs_by_sparsity": {0.5: 3}}))


def test_dry_run_prints_the_runs_or_the_chains_with_their_lengths() -> None:
    from typer.testing import CliRunner

    from sparselm.cli import app

    res = CliRunner().invoke(app, ["run", str(RECIPES / "gsm-smollm2.yaml"), "--dry-run",
                                   "sparse.epochs_by_sparsity={0.7: 16}"])
    assert res.exit_code == 0, res.output
    assert "chains: squarehead_token: 70% (16 epochs) -> 75% (8 epochs); ce: 70% (16 epochs)" in res.output
    res = CliRunner().invoke(app, ["run", str(RECIPES / "demo-cpu.yaml"), "--dry-run"])
    assert res.exit_code == 0 and "runs: s50-squarehead_token (20 steps), s50-none (pruned only)" in res.output


def test_sparse_num_examples_limits_only_the_sparse_runs(tmp_path) -> None:
    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparse={"steps": 2, "lr": 1e-3,
                                                                             "num_examples": 16}))
    assert teacher_recipe(r, tmp_path / "t")["data"]["num_examples"] is None
    fr = validate_finetune_recipe(sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.5, "ce", tmp_path / "s"))
    assert fr.data.num_examples == 16


def test_two_concurrent_invocations_share_one_output_dir(finished, tmp_path) -> None:
    """The multi-GPU pattern: after the teacher exists, two processes run the same recipe into one output dir at
    the same time; run claims split the runs between them (none trained twice) and results.json has them all."""
    import os
    import shutil
    import subprocess
    import sys

    data, out = finished
    shared = tmp_path / "shared"
    shutil.copytree(out, shared)
    procs = []
    for sp in ("0.6", "0.7"):  # the same runs, listed in different orders
        sps = [0.6, 0.7] if sp == "0.6" else [0.7, 0.6]
        rec = _recipe(data, shared, sparsities=sps, losses=["ce", "none"])
        path = tmp_path / f"r{sp}.yaml"
        path.write_text(yaml.safe_dump(rec))
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        procs.append(subprocess.Popen([sys.executable, "-m", "sparselm.cli", "run", str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    trained = []
    for p in procs:
        out_text, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        trained += [ln.split(":")[0] for ln in out_text.splitlines() if ln.startswith(("s60-", "s70-"))
                    and "skipped" not in ln]
    assert sorted(trained) == ["s60-ce", "s60-none", "s70-ce", "s70-none"]  # each run trained exactly once
    assert not list(shared.glob("runs/*/.claim.json"))  # claims released
    got = json.loads((shared / "results.json").read_text())
    have = {(r["sparsity"], r["loss"]) for r in got["runs"]}
    assert {(0.6, "ce"), (0.6, "none"), (0.7, "ce"), (0.7, "none")} <= have
    assert {(0.5, "squarehead"), (0.5, "ce"), (0.5, "none")} <= have  # the earlier invocation's runs kept


def test_claim_run_skips_live_holders_and_takes_over_stale_ones(tmp_path) -> None:
    import os
    import socket

    from sparselm.pipeline.run import CLAIM, claim_run

    d = tmp_path / "runs" / "s50-ce"
    assert claim_run(d) is None and claim_run(d) is None  # claimed, then already ours
    host = socket.gethostname()
    (d / CLAIM).write_text(json.dumps({"pid": os.getppid(), "host": host}))  # a live process
    assert claim_run(d) == f"{host}:{os.getppid()}"
    (d / CLAIM).write_text(json.dumps({"pid": 2**22 + 12345, "host": host}))  # no such process: stale
    assert claim_run(d) is None
    assert json.loads((d / CLAIM).read_text())["pid"] == os.getpid()
    (d / CLAIM).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # not checkable from here: honoured
    assert claim_run(d) == "elsewhere:1"
    (d / CLAIM).write_text("{")  # half-written by a holder that died: stale
    assert claim_run(d) is None


@pytest.mark.parametrize("loss,weights,variant", [("squarehead_token", (1.0, 0.0, 1.0), "token_ratio"),
                                                  ("kd_squarehead_token", (1.0, 1.0, 1.0), "token_ratio"),
                                                  ("kd", (1.0, 1.0, 0.0), None)])
def test_sparse_recipe_loss_names_set_weights_and_variant(tmp_path, loss, weights, variant) -> None:
    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", losses=[loss]))
    fr = validate_finetune_recipe(sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.5, loss, tmp_path / "s"))
    assert (fr.loss.ce, fr.loss.kd, fr.loss.squarehead) == weights
    assert fr.teacher is not None
    if variant is not None:
        assert fr.loss.squarehead_variant == variant


def test_two_invocations_from_scratch_train_the_teacher_once(tmp_path) -> None:
    """Both start before any teacher exists: one trains and evaluates it, the other waits, then they split runs."""
    import os
    import subprocess
    import sys

    data = _arith_dir(tmp_path / "data")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(data, tmp_path / "out", sparsities=[0.6], losses=["ce", "none"])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, "-m", "sparselm.cli", "run", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out_text, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out_text)
    text = "\n".join(outs)
    assert text.count("teacher: dense fine-tune") == 1 and text.count("teacher: reusing") == 1
    assert text.count("dense: ") == 2  # both report the one evaluation
    trained = sorted(ln.split(":")[0] for ln in text.splitlines() if ln.startswith("s60-") and "skipped" not in ln)
    assert trained == ["s60-ce", "s60-none"]
    got = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["sparsity"], r["loss"]) for r in got["runs"]} == {(0.6, "ce"), (0.6, "none")}
    assert not list((tmp_path / "out").rglob(".claim.json"))


def test_record_study_copies_a_run_dir_into_the_results_shape(finished, tmp_path) -> None:
    """benchmarks/record_study.py: results.json -> replication_<name>.json (+ notes), plots, report links, logs."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "record_study.py"
    spec = importlib.util.spec_from_file_location("record_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _, out = finished
    dest = tmp_path / "results"
    got = mod.record(out, "toy", ["a note"], dest)
    rec = json.loads(got.read_text())
    assert got.name == "replication_toy.json" and rec["notes"][-1] == "a note"
    assert {"task", "model", "metric", "higher_is_better", "dense", "runs", "command", "device"} <= set(rec)
    md = (dest / "replication_toy.md").read_text()
    assert "(replication_toy.png)" in md and (dest / "replication_toy.png").is_file()
    assert (dest / "replication_toy_metrics" / "teacher.jsonl").is_file()
    assert sorted(p.stem for p in (dest / "replication_toy_metrics").glob("s*.jsonl"))
    from sparselm.eval.paired import read_predictions

    for pred in [*out.glob("runs/*/predictions_*.jsonl"), *out.glob("teacher/predictions_*.jsonl")]:
        kept = dest / "replication_toy_runs" / pred.parent.name / pred.name
        assert read_predictions(kept) == read_predictions(pred)   # read through the .gz
    assert list((dest / "replication_toy_runs").glob("*/predictions_*.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match="results.json"):
        mod.record(tmp_path, "none", [], dest)


def test_sparse_weights_scale_only_the_terms_a_loss_has(tmp_path) -> None:
    sparse = {"steps": 4, "lr": 1e-3, "squarehead_weight": 0.25, "kd_weight": 2.0}
    r = validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparse=sparse))
    got = {loss: validate_finetune_recipe(sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.5, loss,
                                                        tmp_path / "s")).loss
           for loss in ("ce", "kd", "squarehead_token", "kd_squarehead_token")}
    assert {k: (v.ce, v.kd, v.squarehead) for k, v in got.items()} == {
        "ce": (1.0, 0.0, 0.0), "kd": (1.0, 2.0, 0.0), "squarehead_token": (1.0, 0.0, 0.25),
        "kd_squarehead_token": (1.0, 2.0, 0.25)}
    with pytest.raises(Exception, match="squarehead_weight"):
        validate_pipeline_recipe(_recipe(tmp_path, tmp_path / "out", sparse={**sparse, "squarehead_weight": 0}))


def _count_optimizer_steps(monkeypatch, fail_at: int | None = None) -> dict:
    """Patch AdamW.step to count calls ({"n": ...}), raising RuntimeError("killed") at call `fail_at`: a run killed
    mid-training, or proof of how many steps a resumed invocation really trained."""
    import torch

    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return calls


def _logged_steps(metrics: Path) -> list[int]:
    return [row["step"] for row in map(json.loads, metrics.read_text().splitlines()) if "loss/ce" in row]


def test_a_teacher_stopped_midway_resumes_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    """teacher.ckpt_every: a pipeline killed during the teacher's training (here: the optimizer raises at step 5)
    continues from the step-4 checkpoint on the next invocation, and its log is not restarted."""
    data = _arith_dir(tmp_path / "data")
    r = validate_pipeline_recipe(_recipe(data, tmp_path / "out", losses=["ce"],
                                         teacher={"steps": 6, "lr": 3e-3, "ckpt_every": 2, "eval_every": 2}))
    assert teacher_recipe(r, tmp_path / "t")["train"]["ckpt_every"] == 2
    _count_optimizer_steps(monkeypatch, fail_at=5)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(r)
    teacher = tmp_path / "out" / "teacher"
    assert (teacher / "checkpoints" / "latest").is_file() and not list(teacher.glob("*.safetensors"))
    counted = _count_optimizer_steps(monkeypatch)
    run_pipeline(r)
    assert counted["n"] == 2 + 4  # the teacher's steps 5-6 (1-4 came from the checkpoint), then the sparse run's 4
    assert _logged_steps(teacher / "metrics.jsonl") == [2, 4, 6]  # one log, continued
    assert not (teacher / "checkpoints").exists()  # cleaned once the teacher is written
    assert list(teacher.glob("*.safetensors")) and (teacher / "run.json").is_file()


def test_a_sparse_run_stopped_midway_resumes_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    """sparse.ckpt_every: a sparse run killed at its step 3 continues from its step-2 checkpoint (same mask), and
    its log is not restarted; the finished run matches the layout of an uninterrupted one."""
    data = _arith_dir(tmp_path / "data")
    r = validate_pipeline_recipe(_recipe(data, tmp_path / "out", losses=["ce"], teacher={"steps": 4, "lr": 3e-3},
                                         sparse={"steps": 4, "lr": 1e-3, "ckpt_every": 2}))
    assert sparse_recipe(r, tmp_path / "t", tmp_path / "t", 0.5, "ce", tmp_path / "s")["train"]["ckpt_every"] == 2
    _count_optimizer_steps(monkeypatch, fail_at=4 + 3)  # the teacher's 4 steps, then the sparse run's third
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(r)
    run = tmp_path / "out" / "runs" / "s50-ce"
    assert (run / "checkpoints" / "latest").is_file()
    for state in (run / "checkpoints").glob("p*/state.json"):  # the killed invocation's seconds count too
        state.write_text(json.dumps({**json.loads(state.read_text()), "train_s": 1000.0}))
    counted = _count_optimizer_steps(monkeypatch)
    run_pipeline(r)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["train_s"] >= 1000
    assert counted["n"] == 2  # the sparse run's steps 3-4 only: the teacher is reused, steps 1-2 restored
    assert _logged_steps(run / "metrics.jsonl") == [2, 4]
    assert not (run / "checkpoints").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"]


def test_pipeline_with_compiled_blocks(tmp_path) -> None:
    """train.compile (regional torch.compile of the blocks, the GPU recipes' setting): teacher, prune, SquareHead
    fine-tune and the generation-based evaluation all run through the compiled blocks and finish with results."""
    data = _arith_dir(tmp_path / "data")
    r = _recipe(data, tmp_path / "out", losses=["squarehead"])
    r["train"] = {**r["train"], "compile": True}
    out = run_pipeline(validate_pipeline_recipe(r), command="test")
    res = json.loads((out / "results.json").read_text())
    assert {(x["sparsity"], x["loss"]) for x in res["runs"]} == {(0.5, "squarehead")}
    assert all(x["value"] is not None for x in res["runs"])
    sp = json.loads((out / "runs" / "s50-squarehead" / "sparsity.json").read_text())
    assert abs(sp["overall"] - 0.5) < 0.02


def test_a_teacher_that_does_not_stop_at_eos_stops_the_pipeline(tmp_path) -> None:
    """eval.min_eos_share: an 8-step teacher never ends at EOS within 4 tokens, so no sparse run starts, and the
    message says what to check; the check also holds on resume (the teacher's evaluation is reused)."""
    from sparselm.pipeline.run import TeacherCheckError, check_teacher_stops

    data = _arith_dir(tmp_path / "data")
    r = _recipe(data, tmp_path / "out", sparsities=[0.5], losses=["ce"],
                eval={"splits": ["test"], "limit": 4, "batch_size": 4, "max_new_tokens": 4, "min_eos_share": 0.9})
    for _ in range(2):
        with pytest.raises(TeacherCheckError, match="end at EOS in .* of rows"):
            run_pipeline(validate_pipeline_recipe(r))
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())
    check_teacher_stops({"test": {"ends": {"eos": 0.95, "stop": 0.05, "budget": 0.0}}}, 0.9)  # passes
    check_teacher_stops({"test": {"ends": {"eos": 0.0}}}, None)                                # off
