"""Pydantic schema of a pipeline recipe (`sparselm run RECIPE`): one dense teacher, then a grid of
sparsity x loss runs, each evaluated on the same splits.

    recipe = load_pipeline_recipe("src/sparselm/recipes/demo-cpu.yaml", ["sparsities=[0.5,0.7]"])

The pipeline builds one `sparselm.recipes.schema.FinetuneRecipe` per run from these settings (see
`sparselm.pipeline.run.teacher_recipe` / `sparse_recipe`); every model here forbids unknown keys, so a typo is a
`RecipeError` naming the field (e.g. `teacher.epocs: Extra inputs are not permitted`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparselm.recipes.schema import ModelSpec, RecipeError, _format, read_recipe_yaml

Loss = Literal["ce", "kd", "squarehead", "squarehead_token", "kd_squarehead_token", "none"]

#: loss name -> weights (w_ce, w_kd, w_squarehead) of DESIGN.md's `loss = w_ce·CE + w_kd·KD + w_sh·Σ_l SH_l`.
#: The paper's comparison: CE alone, CE+KD, CE+SquareHead; "none" = the SparseGPT-pruned teacher, not fine-tuned.
LOSS_WEIGHTS: dict[str, dict[str, float]] = {"ce": {"ce": 1.0, "kd": 0.0, "squarehead": 0.0},
                                             "kd": {"ce": 1.0, "kd": 1.0, "squarehead": 0.0},
                                             "squarehead": {"ce": 1.0, "kd": 0.0, "squarehead": 1.0},
                                             "squarehead_token": {"ce": 1.0, "kd": 0.0, "squarehead": 1.0},
                                             # all three terms (DESIGN.md's a·CE + b·KD + c·SquareHead)
                                             "kd_squarehead_token": {"ce": 1.0, "kd": 1.0, "squarehead": 1.0}}
#: loss name -> the SquareHead variant it forces ("squarehead" uses `sparse.squarehead_variant`)
LOSS_VARIANTS: dict[str, str] = {"squarehead_token": "token_ratio", "kd_squarehead_token": "token_ratio"}


def run_name(sparsity: float, loss: str) -> str:
    """The directory name of one sparse run under `<out>/runs/` (e.g. s75-squarehead_token)."""
    return f"s{round(sparsity * 100)}-{loss}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSpec(_Strict):
    """`name`: a registered `sparselm.data` task (reasoning, gsm, translation, asr) or a directory of
    `<split>.jsonl` files. `data_dir`: read a registered task's splits from exported JSONL (GPU machines)."""

    name: str
    data_dir: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)   # keyword arguments of the task factory (n_train, seed)
    train_split: str = "train"
    num_examples: int | None = Field(None, gt=0)          # training items used; None = the whole split

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class EvalSpec(_Strict):
    splits: list[str] = Field(default_factory=lambda: ["test"], min_length=1)  # the first one is the headline
    limit: int | None = Field(300, gt=0)       # items per split: 300 gives a ±2.7-point standard error at 50%
    batch_size: int = Field(16, gt=0)          # prompts per greedy-generation batch
    max_new_tokens: int | None = Field(None, gt=0)  # None = the task's own budget
    loglik: bool = True                        # also the teacher-forced answer log-likelihood (continuous)
    # the share of the teacher's generations (headline split) that must end at EOS, or the pipeline stops before
    # any sparse run: a fine-tuned teacher that does not stop where training ended each example has a tokenizer /
    # generation end-token mismatch, and every exact match after it would score text written past the answer
    min_eos_share: float | None = Field(None, ge=0, le=1)


class TrainSettings(_Strict):
    """Settings of one fine-tune (teacher or sparse run); length in `epochs` or `steps`."""

    epochs: float | None = Field(None, gt=0)   # passes over the training items
    steps: int | None = Field(None, gt=0)      # optimizer steps (wins over epochs)
    lr: float = Field(1e-4, gt=0)              # peak learning rate after warm-up

    @model_validator(mode="after")
    def _length(self) -> "TrainSettings":
        if self.epochs is None and self.steps is None:
            raise ValueError("set epochs or steps")
        return self


class TeacherSettings(_Strict):
    """The dense teacher: fine-tuned here (epochs/steps/lr), or an existing fine-tuned model at `path`."""

    path: str | None = None
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    lr: float = Field(1e-4, gt=0)
    # validation CE on the task's `validation` split every `eval_every` steps; the teacher is the best checkpoint
    # (with early_stop_patience: training stops after that many evaluations without a new best)
    eval_every: int | None = Field(None, gt=0)
    early_stop_patience: int | None = Field(None, gt=0)
    # a checkpoint of the teacher's training every ckpt_every optimizer steps: a pipeline stopped mid-teacher (a
    # time limit, a crash) resumes from the last one instead of starting the teacher again (None: none mid-way)
    ckpt_every: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _source(self) -> "TeacherSettings":
        if self.path is None and self.epochs is None and self.steps is None:
            raise ValueError("set path (an existing dense fine-tuned model) or epochs/steps to train one")
        return self


class SparseSettings(TrainSettings):
    """The sparse fine-tune after pruning, identical for every loss. `staged`: each sparsity starts from the
    previous (lower) sparsity's model of the same loss, re-pruned (the paper's 50 -> 67 -> 75% schedule)."""

    staged: bool = False
    # training items of the sparse runs (the first N of the teacher's); None = the same as the teacher's. A small
    # N with several epochs is the paper's low-data regime (GSM8K: 7.5k problems), where CE overfits at high sparsity
    num_examples: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, gt=0)     # KD softmax temperature
    squarehead_variant: Literal["masked_mean", "sum_ratio", "token_ratio"] = "masked_mean"
    # the SquareHead / KD term's weight relative to CE in every loss that has that term (the named losses use 1:1,
    # the paper's setting); a sweep of these is how to tune distillation per model family
    squarehead_weight: float = Field(1.0, gt=0)
    kd_weight: float = Field(1.0, gt=0)
    # a checkpoint every ckpt_every optimizer steps of each sparse run, so a run stopped mid-way (a device call's
    # time limit) resumes from it on the next invocation instead of starting over (None: only at its end)
    ckpt_every: int | None = Field(None, gt=0)
    # epochs of the run at a given sparsity instead of `epochs`, e.g. {0.7: 16} for a longer first stage of a staged
    # chain (gsm: SquareHead's 70% stage ended with its feature term still falling, BENCHMARKS.md section 3)
    epochs_by_sparsity: dict[float, float] | None = None

    @field_validator("epochs_by_sparsity", mode="before")
    @classmethod
    def _yaml_colon(cls, v: Any) -> Any:
        if isinstance(v, dict) and any(isinstance(k, str) and ":" in k and x is None for k, x in v.items()):
            raise ValueError("write {0.7: 16}: YAML reads {0.7:16} as one key (quote the override for the space)")
        return v

    def epochs_at(self, sparsity: float) -> float | None:
        for k, v in (self.epochs_by_sparsity or {}).items():
            if abs(k - sparsity) < 1e-9:
                return v
        return self.epochs


class PruningSettings(_Strict):
    method: str = "sparsegpt"
    calib_samples: int = Field(128, gt=0)      # calibration sequences (the paper: 128)


class TrainShared(_Strict):
    """Passed to every fine-tune (`sparselm.recipes.schema.TrainSpec`)."""

    batch_size: int = Field(8, gt=0)           # sequences per micro-batch
    grad_accum: int = Field(1, gt=0)
    seqlen: int = Field(256, gt=0)             # tokens; longer items are truncated
    log_every: int = Field(10, gt=0)           # optimizer steps between metrics.jsonl rows (loss curves)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads: int | None = Field(None, gt=0)    # CPU intra-op threads; None = torch's default
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # fraction of each run's steps
    decay: Literal["linear", "constant"] = "linear"


class OutputSettings(_Strict):
    dir: str = "runs/pipeline"
    keep_models: bool = False                  # keep every sparse model's weights (else only numbers and curves)
    budget_s: float | None = Field(None, gt=0)  # seconds; no new run starts after this (finished ones are kept)


class PipelineRecipe(_Strict):
    model: ModelSpec
    task: TaskSpec
    eval: EvalSpec = EvalSpec()
    teacher: TeacherSettings
    sparsities: list[float] = Field(min_length=1)   # in run order (put the most informative first)
    losses: list[Loss] = Field(min_length=1)
    sparse: SparseSettings
    pruning: PruningSettings = PruningSettings()
    train: TrainShared = TrainShared()
    output: OutputSettings = OutputSettings()
    notes: list[str] = Field(default_factory=list)  # written into report.md (e.g. what the budget does not show)

    @field_validator("sparsities")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not 0 < s < 1]
        if bad:
            raise ValueError(f"each sparsity must lie in (0, 1), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate sparsities in {v}")
        return v

    @field_validator("losses")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate losses in {v}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "PipelineRecipe":
        if self.sparse.staged and self.sparsities != sorted(self.sparsities):
            raise ValueError(f"sparse.staged: sparsities must increase, got {self.sparsities}")
        extra = self.sparse.epochs_by_sparsity or {}
        if extra and self.sparse.steps is not None:
            raise ValueError("sparse.epochs_by_sparsity sets epochs: leave sparse.steps unset")
        if any(v <= 0 for v in extra.values()):
            raise ValueError(f"sparse.epochs_by_sparsity: epochs must be > 0, got {extra}")
        stray = [k for k in extra if not any(abs(k - x) < 1e-9 for x in self.sparsities)]
        if stray:
            raise ValueError(f"sparse.epochs_by_sparsity: {stray} not among the sparsities {self.sparsities}")
        if self.model.tiny and self.train.seqlen > self.model.tiny.max_positions:
            raise ValueError(f"train.seqlen {self.train.seqlen} exceeds model.tiny.max_positions "
                             f"{self.model.tiny.max_positions}")
        return self


def validate_pipeline_recipe(data: dict[str, Any], origin: str = "recipe") -> PipelineRecipe:
    try:
        return PipelineRecipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{origin}: {_format(e)}") from None


def load_pipeline_recipe(path: str | Path, overrides: list[str] | None = None) -> PipelineRecipe:
    """Read a YAML pipeline recipe, apply `key=value` overrides, validate; errors name the file and the field."""
    return validate_pipeline_recipe(read_recipe_yaml(path, overrides), str(path))


def dump_pipeline_recipe(recipe: PipelineRecipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
