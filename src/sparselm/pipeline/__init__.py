"""The `sparselm run` pipeline: dense teacher -> prune -> sparse fine-tune (CE / KD / SquareHead) -> evaluate ->
results.json + report.md + plots, from one recipe, resumable.

    from sparselm.pipeline import run_pipeline
    out_dir = run_pipeline("src/sparselm/recipes/demo-cpu.yaml", ["eval.limit=20"], out="out/demo-run")
"""
from sparselm.pipeline.schema import (LOSS_WEIGHTS, PipelineRecipe, load_pipeline_recipe,
                                      validate_pipeline_recipe)

__all__ = ["LOSS_WEIGHTS", "PipelineRecipe", "load_pipeline_recipe", "run_pipeline", "validate_pipeline_recipe",
           "write_report"]


def __getattr__(name: str):  # torch / matplotlib only when running, not when validating a recipe
    if name == "run_pipeline":
        from sparselm.pipeline.run import run_pipeline

        return run_pipeline
    if name == "write_report":
        from sparselm.pipeline.report import write_report

        return write_report
    raise AttributeError(f"module 'sparselm.pipeline' has no attribute {name!r}")
