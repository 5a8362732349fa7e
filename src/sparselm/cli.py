"""sparselm command line: prune, finetune, eval, compare, seeds, run, compress, generate, demo.

    sparselm prune smollm2-135m --method sparsegpt --sparsity 0.5 --calib calib.txt --out out/smol-50
    sparselm prune ./my-llama --method wanda --pattern 2:4 --calib data.jsonl --nsamples 128 --seqlen 2048 --device cuda
    sparselm finetune recipes/tiny-cpu.yaml --out runs/tiny           # sparse fine-tune with distillation
    sparselm eval out/smol-50 --task perplexity                        # held-out perplexity
    sparselm compare runs/x/runs/s75-ce runs/x/runs/s75-squarehead     # paired test: more than item noise?
    sparselm seeds runs/seed0 runs/seed1 --out runs/seeds              # one study, several seeds: mean, sd, pooled tests
    sparselm run recipes/demo-cpu.yaml                                 # teacher -> prune -> fine-tune -> eval -> report
    sparselm compress out/smol-50 --values int4 --out out/smol-50-int4  # bitmask + packed values, no dense weights
    sparselm generate out/smol-50 --prompt "Q: ..." --compare-dense    # decode through the sparse kernels, timed
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune LLMs in one shot, sparse fine-tune them with distillation, run them faster.")

# Errors a user can fix: print one line naming the problem, exit non-zero, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@app.command(epilog="""\b
Examples:
  CPU, tiny:   sparselm prune smollm2-135m --method magnitude --sparsity 0.5 --out out/mag50
  CPU:         sparselm prune smollm2-135m --method sparsegpt --sparsity 0.5 --calib calib.txt --nsamples 32 --seqlen 256 --out out/sgpt50
  one GPU:     sparselm prune ./llama-7b --method sparsegpt --pattern 2:4 --calib c4.jsonl --seqlen 2048 --device cuda --offload --out out/7b-24
""")
def prune(
    model: str = typer.Argument(..., help="local HF model directory or bundled name (e.g. smollm2-135m)"),
    method: str = typer.Option("sparsegpt", help="pruner: sparsegpt | wanda | magnitude"),
    sparsity: Optional[float] = typer.Option(None, help="unstructured target: fraction of zeros in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M pattern, keep N of every M inputs (e.g. 2:4)"),
    calib: Optional[Path] = typer.Option(None, help="calibration text: .txt, .jsonl (text field) or HF dataset dir"),
    nsamples: int = typer.Option(128, help="calibration windows (the paper: 128)"),
    seqlen: int = typer.Option(512, help="tokens per calibration window"),
    batch_size: int = typer.Option(8, help="calibration windows per forward"),
    scope: Optional[str] = typer.Option(None, help="unstructured mask scope: row | layer | block (pruner default)"),
    out: Path = typer.Option(..., help="output directory (written atomically)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:1 (default: cuda if available)"),
    offload: bool = typer.Option(False, help="keep only the block being pruned on the device"),
    seed: int = typer.Option(0, help="seed for picking calibration windows"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """One-shot prune the linear layers inside the transformer blocks of MODEL and save it to --out."""
    settings = dict(locals())  # the resolved options, before anything else enters the scope
    from sparselm.pruning.prune_command import run_prune

    try:
        run_prune(**settings)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))


@app.command(epilog="""\b
Examples:
  CPU, tiny:   sparselm finetune src/sparselm/recipes/tiny-cpu.yaml --out runs/tiny
  one GPU:     sparselm finetune my-recipe.yaml --out runs/sparse train.batch_size=32 loss.squarehead=1.0
  multi-GPU:   torchrun --nproc-per-node 2 -m sparselm.train my-recipe.yaml --out runs/sparse
  resume:      sparselm finetune my-recipe.yaml --out runs/sparse --resume
""")
def finetune(
    recipe: Path = typer.Argument(..., help="fine-tuning recipe YAML"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. train.steps=40"),
    out: Optional[str] = typer.Option(None, help="output directory (default: the recipe's output.dir)"),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint under --out"),
) -> None:
    """Sparse fine-tune with distillation (CE / KD / SquareHead), mask fixed, optionally in pruning stages."""
    from sparselm.train import NonFiniteLossError
    from sparselm.train import finetune as run_finetune

    try:
        typer.echo(run_finetune(recipe, list(overrides or []), out=out, resume=resume))
    except (*_USER_ERRORS, NonFiniteLossError) as err:
        fail(str(err).strip("'\""))


@app.command("eval", epilog="""\b
Examples:
  CPU:       sparselm eval out/sgpt50 --task perplexity                  (held-out Shakespeare tragedies)
  CPU:       sparselm eval out/sgpt50 --task reasoning --split test --limit 200
  one GPU:   sparselm eval runs/gsm-sparse --task gsm --split test-unseen --device cuda
  exported:  sparselm eval runs/tr/teacher --task translation --task-arg data_dir=out/data/translation-both
""")
def eval_cmd(
    model: str = typer.Argument(..., help="local HF model directory or bundled name"),
    task: str = typer.Option(..., help="reasoning | gsm | translation | asr | perplexity | a .jsonl / dataset path"),
    split: str = typer.Option("test", help="split to evaluate (asr: test | real)"),
    limit: Optional[int] = typer.Option(None, help="evaluate only the first N items"),
    batch_size: int = typer.Option(16, help="sequences per generation batch"),
    text_file: Optional[Path] = typer.Option(None, help="perplexity: text file (default: held-out Shakespeare)"),
    out: Optional[Path] = typer.Option(None, help="results JSON (default: <model>/eval_<task>_<split>.json)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    task_arg: Optional[list[str]] = typer.Option(None, help="KEY=VALUE for the task (repeatable; YAML values), "
                                                 "e.g. corpus=both, data_dir=out/data/gsm, n_test=500"),
) -> None:
    """Evaluate MODEL on a task split; prints a table and writes JSON."""
    from sparselm.eval import print_results_table, run_eval

    try:
        task_kwargs = _task_args(task_arg or [])
        kwargs = {"task_kwargs": task_kwargs} if task_kwargs else {}
        if task == "perplexity":
            if text_file is None:
                from sparselm.data.corpora import write_texts
                from sparselm.models.loaders import cache_dir

                text_file = write_texts(cache_dir() / "corpora" / "texts")[1]
            kwargs.update(context_length=512, stride=256)
        if out is None and Path(model).is_dir():
            out = Path(model) / f"eval_{Path(task).stem}_{split}.json"
        res = run_eval(model, task, split=split, out_json=out, limit=limit, batch_size=batch_size,
                       text_file=text_file, device=device, **kwargs)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))
    print_results_table(res)
    if out is not None:
        print(f"results -> {out}")


def _task_args(pairs: list[str]) -> dict:
    """--task-arg KEY=VALUE pairs, parsed as recipe overrides are (YAML values)."""
    from sparselm.recipes.schema import RecipeError, apply_overrides

    try:
        return apply_overrides({}, pairs)
    except RecipeError as e:
        raise ValueError(f"--task-arg: expected KEY=VALUE ({e})") from None


@app.command("run", epilog="""\b
Examples:
  CPU, quick:  sparselm run src/sparselm/recipes/demo-cpu.yaml --out out/quick teacher.steps=5 sparse.steps=5
  CPU demo:    sparselm run src/sparselm/recipes/demo-cpu.yaml --out out/demo-run      (<= 15 min, 2 cores)
  one GPU:     sparselm run src/sparselm/recipes/reasoning-smollm2.yaml --out runs/study task.data_dir=data/rsn
  check only:  sparselm run src/sparselm/recipes/asr-whisper.yaml --dry-run
  resume:      run the same command again: finished runs are skipped, the teacher is reused
""")
def run_cmd(
    recipe: Path = typer.Argument(..., help="pipeline recipe YAML (src/sparselm/recipes/demo-cpu.yaml, ...)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted key=value overrides, e.g. sparsities=[0.5]"),
    out: Optional[str] = typer.Option(None, help="output directory (default: the recipe's output.dir)"),
    dry_run: bool = typer.Option(False, help="validate the recipe and print the planned runs; train nothing"),
) -> None:
    """Dense teacher -> prune -> sparse fine-tune (per sparsity x loss) -> evaluate -> results.json + report.md."""
    from sparselm.pipeline.run import (NotRunnableError, TeacherCheckError, check_runnable, plan_runs, resolve,
                                       run_name, run_pipeline)
    from sparselm.train import NonFiniteLossError

    try:
        resolved = resolve(recipe, list(overrides or []), out)
        if dry_run:
            sp = resolved.sparse
            length = (lambda x: f"{sp.steps} steps") if sp.steps else (lambda x: f"{sp.epochs_at(x):g} epochs")
            if sp.staged:  # one chain per loss, each stage grown from the last
                runs = "; ".join(f"{loss}: " + " -> ".join(f"{100 * x:.0f}% ({length(x)})" for x in resolved.sparsities)
                                 for loss in resolved.losses)
            else:
                runs = ", ".join(run_name(x, loss) + (" (pruned only)" if loss == "none" else f" ({length(x)})")
                                 for x, loss in plan_runs(resolved))
            typer.echo(f"{recipe}: valid; output {resolved.output.dir}; teacher "
                       f"{resolved.teacher.path or 'fine-tuned here'}; {'chains' if sp.staged else 'runs'}: {runs}")
            check_runnable(resolved)
            return
        out_dir = run_pipeline(resolved, command=" ".join(["sparselm run", *sys.argv[2:]]))
    except (*_USER_ERRORS, NonFiniteLossError, NotRunnableError, TeacherCheckError) as err:
        fail(str(err).strip("'\""))
    res = json.loads((out_dir / "results.json").read_text())
    typer.echo(f"report -> {out_dir / 'report.md'}")
    first = next(iter(res.get("dense_all") or {"": None}))
    typer.echo(f"{first} {res['metric']}: dense {res['dense']:.3f}" if res["dense"] is not None else "dense: n/a")
    for r in res["runs"]:
        if r["split"] == first and r["value"] is not None:
            typer.echo(f"  {100 * r['sparsity']:.0f}% {r['loss']:<10} {r['value']:.3f}")


@app.command(epilog="""\b
Examples:
  sparselm compress out/smol-50 --out out/smol-50-fp16
  sparselm compress runs/demo/runs/s50-squarehead_token --values int4 --group-size 64 --out out/demo-int4
Load it back: sparselm.compress.load_compressed(DIR) (SparseLinear layers; no dense weights are materialized).
""")
def compress(
    model: str = typer.Argument(..., help="a pruned model: local HF directory or bundled name"),
    values: str = typer.Option("float16", help="stored values: float16 | bfloat16 | float32 | int8 | int4"),
    group_size: Optional[int] = typer.Option(None, help="int8 / int4: columns per scale (int8: a row, int4: 128)"),
    min_sparsity: float = typer.Option(0.3, help="compress only block linears at least this sparse"),
    dense_dtype: str = typer.Option("float16", help="dtype of the tensors left dense (embeddings, norms)"),
    out: Path = typer.Option(..., help="output directory (written atomically)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Store MODEL's sparse linear layers as bitmask + packed values (sparselm-bitmask) in --out."""
    from sparselm.compress.command import run_compress

    try:
        s = run_compress(model, values, group_size, min_sparsity, dense_dtype, out, overwrite)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))
    typer.echo(f"{s['layers']} layers compressed (mean sparsity {s['mean_layer_sparsity']:.1%}, values {values}); "
               f"{s['file_bytes'] / 1e6:.1f} MB on disk against {s['dense_fp16_matrix_bytes'] / 1e6:.1f} MB of "
               f"fp16 matrices -> {out}")


@app.command(epilog="""\b
Examples:
  sparselm generate out/smol-50 --prompt "Question: 3 cows and 5 hens. How many legs?" --compare-dense
  sparselm generate out/smol-50-int8 --device cuda --max-new-tokens 128 --out out/gen.json   (a compressed dir)
On a GPU each shape's kernel is measured first (autotune, ~10-60 s); the step then runs as one CUDA graph.
""")
def generate(
    model: str = typer.Argument(..., help="a pruned model (local HF directory or bundled name) or a "
                                "`sparselm compress` directory"),
    prompt: str = typer.Option(..., help="the text to continue (greedy)"),
    max_new_tokens: int = typer.Option(64, help="tokens to generate (the decode loop does not stop at EOS; the "
                                       "printed text does)"),
    values: Optional[str] = typer.Option(None, help="values to store: float16 | bfloat16 | float32 | int8 | int4 "
                                         "(default: the weights' dtype; not for a compressed directory)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    compare_dense: bool = typer.Option(False, help="also decode the same weights densified, in the same loop: "
                                       "same-run tokens/s ratio and token agreement"),
    min_sparsity: float = typer.Option(0.3, help="make sparse only block linears at least this sparse"),
    out: Optional[Path] = typer.Option(None, help="also write the summary here (JSON)"),
) -> None:
    """Greedy decoding through the sparse kernels (static KV cache; CUDA graph on a GPU), tokens/s printed."""
    from sparselm.runtime.generate import run_generate

    try:
        res = run_generate(model, prompt, max_new_tokens, values, device, compare_dense, min_sparsity)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))
    typer.echo(res["text"])
    line = (f"[{res['sparse_layers']} sparse layers, values {res['values']}, {res['device']}] "
            f"{res['tokens_per_s']:.1f} tokens/s")
    if "decode_tokens_per_s" in res:  # GPU: the single-token steps alone, and the prompt's forward
        line += f" ({res['decode_tokens_per_s']:.1f} per decode step, prefill {res['prefill_ms']:.2f} ms)"
    if compare_dense:
        line += (f"; dense, same loop: {res['dense_tokens_per_s']:.1f} tokens/s -> {res['speedup']:.2f}x; "
                 f"{res['same_tokens_as_dense']}/{res['new_tokens']} tokens as dense")
    paths = list(res["dispatch"].values())
    if paths:  # the measured choice per shape: where dense won, that shape ran dense
        line += f"; kernel chosen on {sum(p_ != 'dense' for p_ in paths)} of {len(paths)} shapes (measured)"
    typer.echo(line, err=True)
    if out is not None:
        res["command"] = " ".join(["sparselm"] + [shlex.quote(a) for a in sys.argv[1:]])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")


@app.command(epilog="""\b
Examples:
  sparselm compare runs/gsm/runs/s75-ce runs/gsm/runs/s75-squarehead_token --split test
  sparselm compare out/a/eval_gsm_test.json out/b/eval_gsm_test.json      (what `sparselm eval` wrote)
  sparselm compare seed0/runs/s75-ce seed0/runs/s75-squarehead_token seed1/runs/s75-ce seed1/runs/s75-squarehead_token
                                          (several pairs, e.g. seeds: each pair, then all pairs pooled)
""")
def compare(
    models: list[Path] = typer.Argument(..., help="BASELINE SYSTEM: run dirs, `sparselm eval` results JSONs or "
                                        "predictions JSONL; more pairs (BASELINE2 SYSTEM2 ...) add a pooled test"),
    split: str = typer.Option("test", help="split of the predictions_<split>.jsonl read from a run dir"),
    metric: Optional[str] = typer.Option(None, help="exact_match | gsm_exact_match | bleu | chrf | wer (default: "
                                         "from the results; exact_match for bare files with `correct`)"),
    out: Optional[Path] = typer.Option(None, help="also write the test as JSON here"),
) -> None:
    """Paired significance test of SYSTEM against BASELINE on the same items (exact McNemar for exact match,
    approximate randomization for BLEU / chrF / WER): is the difference more than item noise? With several pairs
    (the same comparison on several seeds), each pair is tested and, for exact match and WER, all pairs together."""
    from sparselm.eval.paired import describe_pooled, load_pair, paired_result, pooled_test

    if len(models) % 2:
        fail(f"compare takes pairs of models (BASELINE SYSTEM ...), got {len(models)} paths")
    try:
        loaded = [load_pair(b, s, split, metric) for b, s in zip(models[::2], models[1::2])]
        if len({x[0] for x in loaded}) > 1:
            raise ValueError(f"the pairs were scored with different metrics: {sorted({x[0] for x in loaded})}")
        tests = [paired_result(*x) for x in loaded]
        pooled = pooled_test(loaded[0][0], [(x[1], x[2]) for x in loaded]) if len(loaded) > 1 else None
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))
    for r in tests:
        exact = r["test"] == "mcnemar_exact"
        scale, unit = (100, " pts") if exact else (1, "")
        d = 4 if r["metric"] == "wer" else 2  # error rates: a fraction, not points
        if len(tests) > 1:
            typer.echo(f"{r['baseline_file']} vs {r['system_file']}:")
        typer.echo(f"{r['metric']} on {r['n']} items: baseline {scale * r['baseline_value']:.{d}f}, "
                   f"system {scale * r['system_value']:.{d}f}, diff {scale * r['diff']:+.{d}f}{unit}, "
                   f"p = {r['p_value']:.3g} ({r['test']})")
        if exact:
            typer.echo(f"items only the system gets right: {r['a_only']}; only the baseline: {r['b_only']}")
    if pooled is not None:
        typer.echo(describe_pooled(pooled))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = tests[0] if pooled is None else {"pairs": tests, "pooled": pooled}
        out.write_text(json.dumps(doc, indent=2) + "\n")
        typer.echo(f"-> {out}")


@app.command(epilog="""\b
Examples:
  sparselm seeds runs/gsm-seed0 runs/gsm-seed1 --out runs/gsm-seeds
  sparselm seeds benchmarks/results/replication_gsm.json benchmarks/results/replication_gsm_seed1.json --out out/s
""")
def seeds(
    sources: list[Path] = typer.Argument(..., help="`sparselm run` output dirs or replication_<name>.json records "
                                         "of the same study, one per seed"),
    out: Path = typer.Option(..., help="writes seeds.json, seeds.md and seeds.png here"),
    split: str = typer.Option("test", help="the split summarized and tested"),
) -> None:
    """One study run with several seeds: every seed's value per sparsity and loss, mean and spread, and each loss
    against CE per seed and pooled over the seeds (exact match: McNemar on all seeds' discordant items; WER: one
    sign-flip test of all seeds' per-utterance differences)."""
    from sparselm.pipeline.seeds import write_seeds

    try:
        s = write_seeds(sources, out, split)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))
    for t in s["tests"]:
        if t["pooled"] is not None:
            p = t["pooled"]
            diff = (f"{100 * p['diff']:+.1f} pts, items {p['a_only']} / {p['b_only']}" if "a_only" in p else
                    f"{p['diff']:+.4f}")
            typer.echo(f"{100 * t['sparsity']:.0f}% {t['loss']} vs ce over {p['pairs']} seeds: mean diff {diff}, "
                       f"p = {p['p_value']:.3g}")
    if s["setting_differences"]:
        typer.echo(f"warning: settings differ beyond the seed: {sorted(s['setting_differences'])}")
    typer.echo(f"-> {out / 'seeds.md'}")


@app.command()
def demo(out: Path = typer.Option(Path("out/demo"), help="where the demo writes its outputs")) -> None:
    """Pruning showcase: SmolLM2-135M at 50% (magnitude vs SparseGPT), held-out perplexity and the layer table.

    (`make demo` runs the whole pipeline instead: `sparselm run src/sparselm/recipes/demo-cpu.yaml`.)
    """
    from sparselm.demo import run_demo

    try:
        run_demo(out)
    except _USER_ERRORS as err:
        fail(str(err).strip("'\""))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
