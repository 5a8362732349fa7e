"""`run_pipeline`: dense teacher -> for each sparsity x loss: prune (+ sparse fine-tune) -> evaluate -> results.json
-> report.md + plots. The paper's loss comparison (Kurtic et al. 2023, sec. 4) as one resumable job.

    sparselm run src/sparselm/recipes/demo-cpu.yaml --out out/demo-run          # CPU demo (~15 min on 2 cores)
    sparselm run src/sparselm/recipes/reasoning-smollm2.yaml --out $OUT/study task.data_dir=out/data/reasoning
    sparselm run src/sparselm/recipes/asr-whisper.yaml --out $OUT/asr task.data_dir=out/asr-data  # see pipeline.asr

Every sparse run starts from the same SparseGPT-pruned teacher (or, staged, from the previous sparsity's model of
the same loss) with the same steps, learning rate and data; only the loss differs. Output layout:

    <out>/recipe.yaml            the resolved pipeline recipe
    <out>/teacher/               the dense fine-tuned teacher (reused when its run.json exists)
    <out>/runs/s50-squarehead/   one dir per run: metrics.jsonl, sparsity.json, eval.json (weights only if kept)
    <out>/chains/<loss>/         staged: a claim on that loss's chain by the invocation growing it (pipeline.claims)
    <out>/results.json           the replication schema of issue 4, rewritten after every run
    <out>/report.md, *.png       table, settings, notes and plots (sparselm.pipeline.report)

Resume = run the same command again: finished runs are skipped, an interrupted fine-tune continues from its last
checkpoint, the teacher is reused, a staged chain whose weights were dropped is re-trained before it grows.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sparselm.pipeline.checks import NotRunnableError, TeacherCheckError, check_runnable, check_teacher_stops
from sparselm.pipeline.claims import CLAIM, claim_run, wait_for_claim
from sparselm.pipeline.paired import paired_tests
from sparselm.pipeline.schema import (LOSS_VARIANTS, LOSS_WEIGHTS, PipelineRecipe, dump_pipeline_recipe,
                                      load_pipeline_recipe, run_name, validate_pipeline_recipe)
from sparselm.recipes.schema import RecipeError, apply_overrides

#: task metric (sparselm.eval) -> (key of the value in its result dict, higher is better)
METRIC_KEYS: dict[str, tuple[str, bool]] = {"exact_match": ("exact_match", True),
                                            "gsm_exact_match": ("exact_match", True),
                                            "bleu": ("bleu", True), "wer": ("wer", False)}


def plan_runs(recipe: PipelineRecipe) -> list[tuple[float, str]]:
    """(sparsity, loss) in run order: sparsity-major, so a budget cut still leaves every loss at the first one."""
    return [(s, loss) for s in recipe.sparsities for loss in recipe.losses]


# -- fine-tuning recipes built from the pipeline recipe ---------------------------------------------------------------
def _base(recipe: PipelineRecipe, model: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    t, task = recipe.train, recipe.task
    return {"model": model,
            "data": {"source": "task", "task": task.name, "data_dir": task.data_dir, "task_args": task.args,
                     "split": task.train_split, "num_examples": task.num_examples,
                     "calib_samples": recipe.pruning.calib_samples, "seed": t.seed},
            "schedule": {"warmup_ratio": t.warmup_ratio, "decay": t.decay},
            "train": {"batch_size": t.batch_size, "grad_accum": t.grad_accum, "seqlen": t.seqlen,
                      "log_every": t.log_every, "seed": t.seed, "precision": t.precision, "compile": t.compile,
                      "threads": t.threads},
            "output": {"dir": str(out_dir)}}


def teacher_recipe(recipe: PipelineRecipe, out_dir: Path) -> dict[str, Any]:
    """The dense fine-tune of the pretrained model on the task (CE only, no pruning)."""
    rec = _base(recipe, recipe.model.model_dump(mode="json", exclude_none=True), out_dir)
    rec["optim"] = {"lr": recipe.teacher.lr}
    rec["train"].update({"epochs": recipe.teacher.epochs, "steps": recipe.teacher.steps})
    if recipe.teacher.ckpt_every:  # resumable mid-teacher (the model-selection state is checkpointed too)
        rec["train"]["ckpt_every"] = recipe.teacher.ckpt_every
    if recipe.teacher.eval_every:  # model selection on the task's validation split (epochs become a ceiling)
        rec["train"].update({"eval_every": recipe.teacher.eval_every,
                             "early_stop_patience": recipe.teacher.early_stop_patience})
        rec["data"]["eval_split"] = "validation"
    return rec


def sparse_recipe(recipe: PipelineRecipe, start: Path, teacher: Path, sparsity: float, loss: str,
                  out_dir: Path) -> dict[str, Any]:
    """Prune `start` to `sparsity` (SparseGPT by default, zeros kept) and fine-tune it with the mask fixed."""
    s = recipe.sparse
    rec = _base(recipe, {"name": str(start), "kind": recipe.model.kind}, out_dir)
    if s.num_examples is not None:
        rec["data"]["num_examples"] = s.num_examples
    rec["pruning"] = {"method": recipe.pruning.method,
                      "stages": [{"sparsity": sparsity, "epochs": s.epochs_at(sparsity), "steps": s.steps}]}
    weights = dict(LOSS_WEIGHTS.get(loss, LOSS_WEIGHTS["ce"]))  # "none" only uses the pruning half of this recipe
    weights["kd"] *= s.kd_weight
    weights["squarehead"] *= s.squarehead_weight
    rec["loss"] = {**weights, "temperature": s.temperature,
                   "squarehead_variant": LOSS_VARIANTS.get(loss, s.squarehead_variant)}
    if weights["kd"] or weights["squarehead"]:  # a CE-only run does not load a teacher it would not use
        rec["teacher"] = {"source": "path", "path": str(teacher)}
    rec["optim"] = {"lr": s.lr}
    if s.ckpt_every:  # resumable mid-run (the pruned mask and the optimizer state are in each checkpoint)
        rec["train"]["ckpt_every"] = s.ckpt_every
    return rec


#: (items, collate) for `finetune` when the task is not text (asr: Whisper audio items + their collator), else None
SpeechData = tuple[list[dict[str, Any]], Any] | None


def _extra(data: SpeechData) -> tuple:
    """The speech-data argument only when there is one (text tasks call `_finetune(rec)` as before)."""
    return () if data is None else (data,)


def _finetune(rec: dict[str, Any], data: SpeechData = None) -> None:
    from sparselm.recipes.schema import validate_finetune_recipe
    from sparselm.train import finetune
    from sparselm.train.checkpoint import latest_checkpoint

    out = Path(rec["output"]["dir"])
    resume = latest_checkpoint(out / "checkpoints") is not None
    items, collate = data if data is not None else (None, None)
    finetune(validate_finetune_recipe(rec, f"pipeline run {out.name}"), resume=resume, items=items, collate=collate)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final model is written beside them


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prune_only(rec: dict[str, Any], data: SpeechData = None) -> None:
    """'none': the SparseGPT-pruned start model, no fine-tune. It is pruned by the fine-tuning runner itself (same
    examples, same calibration batches, same seed), so it is exactly the fine-tuned runs' starting point."""
    from sparselm.recipes.schema import validate_finetune_recipe
    from sparselm.sparsity.report import sparsity_report
    from sparselm.train.runner import FinetuneRun

    fr = validate_finetune_recipe(rec, "pipeline prune-only run")
    job = FinetuneRun(fr, *(data if data is not None else (None, None)))
    phase = next(p for p in job.phases if p.stage is not None)
    job._prune(phase)
    out = Path(fr.output.dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    job.student.save_pretrained(tmp)
    job.tokenizer.save_pretrained(tmp)
    report = sparsity_report(job.student, fr.pruning.method, phase.sparsity)
    (tmp / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")
    (tmp / "run.json").write_text(json.dumps({"prune_only": True}) + "\n")  # written last: marks it finished
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# -- evaluation --------------------------------------------------------------------------------------------------------
def evaluate_dir(model_dir: Path, recipe: PipelineRecipe) -> dict[str, dict[str, Any]]:
    """Metrics per split of the model in `model_dir` (see sparselm.eval.evaluate); the per-item predictions go to
    `model_dir/predictions_<split>.jsonl`, not into the metrics."""
    from sparselm.eval import evaluate
    from sparselm.models import load_model

    model, tok = load_model(model_dir, device=_device())
    if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token
    e, task = recipe.eval, recipe.task
    task_kwargs = {**task.args, **({"data_dir": task.data_dir} if task.data_dir else {})}
    kwargs: dict[str, Any] = {} if task.name == "asr" else {"loglik": e.loglik, "max_new_tokens": e.max_new_tokens,
                                                            "progress": False}
    out = {}
    for split in e.splits:
        if task.name == "asr":  # its own data root (carried clips on machines without espeak-ng)
            from sparselm.pipeline.asr import evaluate_asr

            r = evaluate_asr(model, tok, task, split, e.limit, e.batch_size)
        else:
            r = evaluate(model, tok, task.name, split=split, limit=e.limit, batch_size=e.batch_size,
                         task_kwargs=task_kwargs, **kwargs)
        write_predictions(model_dir / f"predictions_{split}.jsonl", r.get("predictions") or [])
        out[split] = {k: v for k, v in r.items() if k != "predictions"}
    del model
    return out


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-item outputs beside the model (answer, prediction, correct, loglik, the generated text and how it ended;
    no prompts):
    what the paired tests between runs (sparselm.pipeline.paired) read. The generation is kept because an exact
    match that collapses while the log-likelihood does not is only explained by what the model wrote."""
    keep = ("answer", "prediction", "correct", "loglik", "generation", "end")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # atomic: two pipelines may evaluate one shared teacher
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in keep if row.get(k) is not None}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def headline(metrics: dict[str, Any]) -> tuple[str, bool, float | None]:
    """(metric name, higher is better, value) of one split's evaluation result."""
    key, higher = METRIC_KEYS.get(metrics.get("metric", ""), (metrics.get("metric", "value"), True))
    return key, higher, metrics.get(key)


# -- the job -----------------------------------------------------------------------------------------------------------
class Results:
    """results.json in the replication schema; rewritten atomically after every stage so a kill keeps the rest."""

    def __init__(self, path: Path, recipe: PipelineRecipe, command: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"task": Path(recipe.task.name).name, "model": recipe.model.name,
                                     "metric": None, "higher_is_better": True, "dense": None, "dense_all": None,
                                     "runs": [], "settings": recipe.model_dump(mode="json"), "command": command,
                                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                                     f"cpu ({os.cpu_count()} cores, torch threads: {torch.get_num_threads()})",
                                     "timings": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            self.data.update({k: old[k] for k in ("metric", "higher_is_better", "dense", "dense_all", "runs",
                                                  "timings") if k in old})

    def reload_dense(self) -> None:
        """Take the teacher's evaluation from disk when another invocation wrote it since this one started."""
        if self.path.is_file():
            self._take_dense(json.loads(self.path.read_text()))

    def _take_dense(self, disk: dict[str, Any]) -> None:
        if self.data.get("dense_all") is None and disk.get("dense_all") is not None:
            self.data.update({k: disk.get(k) for k in ("metric", "higher_is_better", "dense", "dense_all")})

    def done(self, sparsity: float, loss: str, splits: list[str]) -> bool:
        have = {r["split"] for r in self.data["runs"] if r["sparsity"] == sparsity and r["loss"] == loss}
        return set(splits) <= have

    def set_dense(self, ev: dict[str, dict[str, Any]]) -> None:
        first = ev[next(iter(ev))]
        self.data["metric"], self.data["higher_is_better"], self.data["dense"] = headline(first)
        self.data["dense_all"] = ev

    def add_run(self, sparsity: float, loss: str, ev: dict[str, dict[str, Any]], train_s: float) -> None:
        self.data["runs"] = [r for r in self.data["runs"] if not (r["sparsity"] == sparsity and r["loss"] == loss)]
        for split, m in ev.items():
            self.data["runs"].append({"sparsity": sparsity, "loss": loss, "split": split, "value": headline(m)[2],
                                      "loglik_per_token": m.get("loglik_per_token"), "metrics": m,
                                      "train_s": round(train_s, 1)})

    def save(self) -> None:
        """Write atomically, merged with what is on disk under a lock: several invocations may share one output
        dir (e.g. one per GPU, each with its own sparsities), and none may drop the others' runs."""
        import fcntl

        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                disk = json.loads(self.path.read_text())
                mine = {(r["sparsity"], r["loss"]) for r in self.data["runs"]}
                self.data["runs"] += [r for r in disk.get("runs", []) if (r["sparsity"], r["loss"]) not in mine]
                self._take_dense(disk)
                self.data["timings"] = {**disk.get("timings", {}), **self.data["timings"]}
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(tmp, self.path)


def _finished(run_dir: Path, splits: list[str]) -> tuple[dict[str, dict[str, Any]], float] | None:
    """(evaluation, train seconds) of a run that finished and was evaluated on every split, else None."""
    ev_file, timing = run_dir / "eval.json", run_dir / "timing.json"
    if not ((run_dir / "run.json").is_file() and ev_file.is_file() and timing.is_file()):
        return None
    ev = json.loads(ev_file.read_text())
    if not set(splits) <= set(ev):
        return None
    return {k: ev[k] for k in splits}, float(json.loads(timing.read_text())["train_s"])


def _drop_weights(run_dir: Path) -> None:
    for f in run_dir.glob("*.safetensors*"):
        f.unlink()


def _teacher(recipe: PipelineRecipe, out: Path, res: Results, say, data: SpeechData = None) -> Path:
    if recipe.teacher.path is not None:
        teacher = Path(recipe.teacher.path)
        if not (teacher / "config.json").is_file():
            raise FileNotFoundError(f"teacher.path {teacher}: no config.json (not a model directory)")
        return teacher
    teacher = out / "teacher"
    if not (teacher / "run.json").is_file():
        say(f"teacher: dense fine-tune of {recipe.model.name} -> {teacher}")
        t = time.perf_counter()
        _finetune(teacher_recipe(recipe, teacher), *_extra(data))
        res.data["timings"]["teacher_s"] = round(time.perf_counter() - t, 1)
    else:
        say(f"teacher: reusing {teacher} (delete it to train a new one)")
    return teacher


def _one_run(recipe: PipelineRecipe, teacher: Path, out: Path, sparsity: float, loss: str,
             prev: Path | None, data: SpeechData = None) -> tuple[Path, float]:
    """Prune (+ fine-tune) one (sparsity, loss) run unless its model is already there; returns (dir, seconds)."""
    run_dir = out / "runs" / run_name(sparsity, loss)
    start = prev if prev is not None else teacher
    if data is not None and recipe.sparse.num_examples is not None:  # speech items: the first N, as for text
        data = (data[0][: recipe.sparse.num_examples], data[1])
    if not any(start.glob("*.safetensors*")):  # run_pipeline rebuilds dropped stages first: a bug if reached
        raise FileNotFoundError(f"{start}: the staged run needs this model's weights, which were dropped")
    t = time.perf_counter()
    if (run_dir / "run.json").is_file() and not any(run_dir.glob("*.safetensors*")):
        shutil.rmtree(run_dir)  # trained earlier, weights dropped, evaluation now needs more (e.g. a new split)
    timing = run_dir / "timing.json"
    if (run_dir / "run.json").is_file() and timing.is_file():  # trained by an earlier invocation: its seconds
        return run_dir, float(json.loads(timing.read_text())["train_s"])
    if not (run_dir / "run.json").is_file():
        rec = sparse_recipe(recipe, start, teacher, sparsity, loss, run_dir)
        prune_only(rec, *_extra(data)) if loss == "none" else _finetune(rec, *_extra(data))
    # the trainer's count includes invocations before a resume (an interrupted fine-tune); prune-only runs have none
    train_s = json.loads((run_dir / "run.json").read_text()).get("train_s") or time.perf_counter() - t
    timing.write_text(json.dumps({"train_s": round(train_s, 1)}) + "\n")
    return run_dir, train_s


def _rebuild_chain(recipe: PipelineRecipe, teacher: Path, out: Path, res: Results, loss: str,
                   stages: list[tuple[float, Path]], data: SpeechData, say) -> None:
    """Re-train (and re-evaluate) a staged chain's finished stages whose weights were dropped, from the last one
    that kept them, so the chain's next stage has a model to start from (e.g. `sparsities` grew after the chain
    finished). The re-trained stages replace their old numbers: those are the models the next stage grows from."""
    kept = max((i for i, (_, d) in enumerate(stages) if any(d.glob("*.safetensors*"))), default=-1)
    start = stages[kept][1] if kept >= 0 else None
    for sparsity, d in stages[kept + 1:]:
        say(f"{d.name}: its weights were dropped; re-training it to start the next stage")
        d, train_s = _one_run(recipe, teacher, out, sparsity, loss, start, data)
        ev = evaluate_dir(d, recipe)
        (d / "eval.json").write_text(json.dumps(ev, indent=2) + "\n")
        res.add_run(sparsity, loss, ev, train_s)
        res.save()
        if start is not None and not recipe.output.keep_models:
            _drop_weights(start)
        start = d


def run_pipeline(recipe: PipelineRecipe | str | Path, overrides: list[str] | None = None, out: str | None = None,
                 command: str | None = None) -> Path:
    """Run (or resume) the pipeline; returns the output directory holding results.json and report.md."""
    from tqdm.auto import tqdm

    from sparselm.pipeline.report import write_report

    recipe = resolve(recipe, overrides, out)
    check_runnable(recipe)
    _quiet_transformers()
    if recipe.train.threads is not None:  # evaluation too, not only the fine-tunes
        torch.set_num_threads(recipe.train.threads)
    out_dir = Path(recipe.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _warn_if_changed(out_dir / "recipe.yaml", recipe)
    (out_dir / "recipe.yaml").write_text(dump_pipeline_recipe(recipe))
    res = Results(out_dir / "results.json", recipe, command or " ".join(["sparselm run", *sys.argv[2:]]))
    t0 = time.perf_counter()
    runs = plan_runs(recipe)
    bar = tqdm(total=1 + len(runs), desc="pipeline", unit="stage", dynamic_ncols=True)
    say = tqdm.write
    data = _speech_data(recipe, say)
    own = recipe.teacher.path is None  # a teacher this pipeline trains: claimed like a run, so a second
    if own:                            # invocation started at the same time waits for it instead of training it
        wait_for_claim(out_dir / "teacher", say)
        res.reload_dense()
    try:
        teacher = _teacher(recipe, out_dir, res, say, data)
        if not set(recipe.eval.splits) <= set(res.data.get("dense_all") or {}):
            bar.set_postfix_str("evaluating the teacher")
            res.set_dense(evaluate_dir(teacher, recipe))
            res.save()
    finally:
        if own:
            (out_dir / "teacher" / CLAIM).unlink(missing_ok=True)
    say(f"dense: {_summary(res.data['dense_all'])}")
    head = recipe.eval.splits[0]  # the headline split: the teacher was trained on its distribution
    check_teacher_stops({head: res.data["dense_all"].get(head) or {}}, recipe.eval.min_eos_share)
    bar.update(1)
    prev: dict[str, Path] = {}
    chain: dict[str, list[tuple[float, Path]]] = {loss: [] for loss in recipe.losses}  # finished staged models
    # staged: another invocation on this dir (e.g. the other GPU) may hold a loss's chain; its stages are skipped
    # here, whole, since each stage grows from the previous one's weights
    held: list[Path] = []
    foreign: set[str] = set()
    try:
        _run_all(recipe, runs, res, out_dir, teacher, data, prev, chain, held, foreign, bar, say, t0)
    finally:
        for d in held:
            (d / CLAIM).unlink(missing_ok=True)
    bar.close()
    if recipe.sparse.staged and not recipe.output.keep_models:
        for loss, d in prev.items():  # a chain's last model, once nothing after it is left to run (else a
            if loss not in foreign and all(res.done(s, l, recipe.eval.splits)  # resumed call needs it)
                                           for s, l in runs if l == loss):
                _drop_weights(d)
    res.data["timings"]["last_invocation_s"] = round(time.perf_counter() - t0, 1)
    res.data["paired"] = paired_tests(out_dir, res.data)  # also for runs another invocation finished
    res.save()
    write_report(res.data, out_dir)
    return out_dir


def _run_all(recipe: PipelineRecipe, runs: list[tuple[float, str]], res: Results, out_dir: Path, teacher: Path,
             data: SpeechData, prev: dict[str, Path], chain: dict[str, list[tuple[float, Path]]], held: list[Path],
             foreign: set[str], bar, say, t0: float) -> None:
    """The sparse runs, in order: skip what is done or held by another invocation, train + evaluate the rest."""
    from sparselm.pipeline.report import write_report

    for sparsity, loss in runs:
        name = run_name(sparsity, loss)
        bar.set_postfix_str(name)
        if loss in foreign:
            bar.update(1)
            continue
        if res.done(sparsity, loss, recipe.eval.splits):
            prev[loss] = out_dir / "runs" / name
            chain[loss].append((sparsity, prev[loss]))
            bar.update(1)
            continue
        if recipe.output.budget_s is not None and time.perf_counter() - t0 > recipe.output.budget_s:
            say(f"budget of {recipe.output.budget_s:.0f} s reached: not starting {name}")
            bar.update(1)
            continue
        cached = _finished(out_dir / "runs" / name, recipe.eval.splits)
        if cached is not None:  # trained and evaluated, but not in this results.json (e.g. it was lost)
            res.add_run(sparsity, loss, *cached)
            res.save()
            prev[loss] = out_dir / "runs" / name
            chain[loss].append((sparsity, prev[loss]))
            bar.update(1)
            continue
        if recipe.sparse.staged:
            lock = out_dir / "chains" / loss
            holder = None if lock in held else claim_run(lock)
            if holder is not None:
                foreign.add(loss)
                say(f"the {loss} chain: running in process {holder}, skipped here")
                bar.update(1)
                continue
            if lock not in held:
                held.append(lock)
        else:
            holder = claim_run(out_dir / "runs" / name)
            if holder is not None:  # another live invocation (e.g. the other GPU) is running it: take the next one
                say(f"{name}: running in process {holder}, skipped here")
                bar.update(1)
                continue
        try:
            if recipe.sparse.staged and loss in prev and not any(prev[loss].glob("*.safetensors*")):
                _rebuild_chain(recipe, teacher, out_dir, res, loss, chain[loss], data, say)
            run_dir, train_s = _one_run(recipe, teacher, out_dir, sparsity, loss,
                                        prev.get(loss) if recipe.sparse.staged else None, data)
            ev = evaluate_dir(run_dir, recipe)
            (run_dir / "eval.json").write_text(json.dumps(ev, indent=2) + "\n")
        finally:  # released once the run is on disk as finished, so no other invocation repeats it
            (out_dir / "runs" / name / CLAIM).unlink(missing_ok=True)
        res.add_run(sparsity, loss, ev, train_s)
        res.data["paired"] = paired_tests(out_dir, res.data)
        res.save()
        if not recipe.output.keep_models:
            # a staged run's weights start its chain's next stage: they go once that stage is on disk
            done_with = prev.get(loss) if recipe.sparse.staged else run_dir
            if done_with is not None:
                _drop_weights(done_with)
        prev[loss] = run_dir
        chain[loss].append((sparsity, run_dir))
        say(f"{name}: {_summary(ev)}  ({train_s:.0f} s)")
        write_report(res.data, out_dir)
        bar.update(1)


def _speech_data(recipe: PipelineRecipe, say) -> SpeechData:
    """Whisper items + collator for task "asr" (built once: every fine-tune of the job trains on the same clips)."""
    if recipe.task.name != "asr":
        return None
    from sparselm.pipeline.asr import speech_data

    data = speech_data(recipe.task, recipe.model.name, recipe.train.seqlen)
    say(f"asr: {len(data[0])} training clips from {recipe.task.train_split!r}")
    return data


def resolve(recipe: PipelineRecipe | str | Path, overrides: list[str] | None = None,
            out: str | None = None) -> PipelineRecipe:
    """A validated pipeline recipe with overrides applied (and `output.dir` replaced by `out` when given)."""
    overrides = list(overrides or []) + ([f"output.dir={out}"] if out else [])
    if isinstance(recipe, PipelineRecipe):
        return validate_pipeline_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides))
    return load_pipeline_recipe(recipe, overrides)


#: sections that may change between invocations of one output dir (more runs, other splits, a budget)
_RESUME_FREE = ("sparsities", "losses", "eval", "output", "notes")


def _warn_if_changed(path: Path, recipe: PipelineRecipe) -> None:
    """Resuming reuses the teacher and finished runs: say so when the settings that made them have changed."""
    import yaml

    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    new = recipe.model_dump(mode="json")
    changed = [k for k in new if k not in _RESUME_FREE and old.get(k) != new[k]]
    if changed:
        print(f"warning: {path.parent} was made with other {', '.join(changed)} settings; its teacher and "
              "finished runs are reused as they are (use a new --out to redo them)", file=sys.stderr)


def _quiet_transformers() -> None:
    """One progress bar for the pipeline (and the trainer's per phase), not one per weight load / shard write."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _summary(ev: dict[str, dict[str, Any]]) -> str:
    parts = []
    for split, m in ev.items():
        key, _, value = headline(m)
        ll = m.get("loglik_per_token")
        parts.append(f"{split} {key}={value:.3f}" if value is not None else f"{split} {key}=n/a")
        if ll is not None:
            parts[-1] += f" ll/tok={ll:.3f}"
        if isinstance(m.get("ends"), dict):  # a fine-tuned model should end at EOS, not run to the budget
            parts[-1] += f" eos={m['ends'].get('eos', 0.0):.0%}"
    return ", ".join(parts)


__all__ = ["METRIC_KEYS", "NotRunnableError", "RecipeError", "Results", "TeacherCheckError", "check_runnable",
           "check_teacher_stops", "evaluate_dir",
           "plan_runs", "prune_only", "resolve", "run_name", "run_pipeline", "sparse_recipe", "teacher_recipe"]
