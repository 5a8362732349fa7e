"""Pydantic schema of a fine-tuning recipe (YAML), with `key=value` dotted overrides.

    recipe = load_finetune_recipe("tiny-cpu.yaml", ["train.steps=40", "loss.squarehead=0.5"])

Every model forbids unknown keys, so a typo is an error naming the field, not a silently ignored setting.
Errors are raised as one `RecipeError` whose first line names the bad field (e.g. `loss.kd: ...`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Arch = Literal["llama", "gpt2", "t5", "whisper"]


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinySpec(_Strict):
    """A tiny model built from a config (no weights download): for CPU tests and demos."""

    arch: Arch = "llama"
    hidden_size: int = Field(64, gt=0)        # 64: smallest width at which SparseGPT 50% keeps the task learnable
    num_layers: int = Field(2, gt=0)          # 2 blocks: enough to exercise per-block SquareHead
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int | None = Field(None, gt=0)  # None = num_heads (no GQA)
    intermediate_size: int = Field(128, gt=0)
    vocab_size: int | None = Field(None, gt=0)    # None = the tokenizer's size (train-bpe: trains 8000 ids)
    max_positions: int = Field(128, gt=0)     # tokens; >= train.seqlen
    # char: synthetic-arith's digit tokenizer. train-bpe: a byte-level BPE of `vocab_size` ids trained on the
    # recipe's training items (sparselm.data.tokenizer), for text such as the translation pairs
    tokenizer: Literal["char", "train-bpe"] = "char"
    dropout: float = Field(0.0, ge=0, lt=1)      # t5 / gpt2 / whisper: residual and attention dropout

    @model_validator(mode="after")
    def _heads(self) -> "TinySpec":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.tokenizer == "train-bpe":
            if self.arch == "whisper":
                raise ValueError("tokenizer 'train-bpe' is for text models; arch 'whisper' reads audio")
            if self.vocab_size is not None and self.vocab_size < 259:
                raise ValueError(f"vocab_size {self.vocab_size} is below 259, the least a byte-level BPE needs "
                                 "(3 special tokens + 256 bytes)")
        return self


class ModelSpec(_Strict):
    """`name`: a local HF directory, a bundled name of `sparselm.models.load_model`, or `tiny-<arch>`."""

    name: str
    kind: Literal["causal-lm", "seq2seq"] | None = None  # expected kind (checked at load); None = any
    tiny: TinySpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        """`model: tiny-llama` is shorthand for `{name: tiny-llama, tiny: {arch: llama}}`."""
        if isinstance(v, str):
            v = {"name": v}
        if isinstance(v, dict):
            m = re.fullmatch(r"tiny-(llama|gpt2|t5|whisper)", str(v.get("name", "")))
            if m:
                tiny = dict(v.get("tiny") or {})
                tiny.setdefault("arch", m.group(1))
                v = {**v, "tiny": tiny}
        return v

    @model_validator(mode="after")
    def _tiny(self) -> "ModelSpec":
        m = re.fullmatch(r"tiny-(llama|gpt2|t5|whisper)", self.name)
        if self.tiny is not None and not m:
            raise ValueError(f"model.tiny is only valid with model.name 'tiny-<arch>', got {self.name!r}")
        if self.tiny is not None and m and self.tiny.arch != m.group(1):
            raise ValueError(f"model.tiny.arch {self.tiny.arch!r} contradicts model.name {self.name!r}")
        return self


class TeacherSpec(_Strict):
    """Where the teacher comes from.

    `path`: a fine-tuned dense model directory (the paper's setting). `dense-finetune`: fine-tune the dense student
    for `dense_steps` first (same run), freeze a copy as teacher, and prune the fine-tuned model as the student.
    `initial`: the untouched dense model (a teacher that never saw the task; for smoke tests).
    """

    source: Literal["path", "dense-finetune", "initial"] = "path"
    path: str | None = None
    dense_steps: int = Field(0, ge=0)         # optimizer steps of the in-run dense fine-tune
    dense_lr: float | None = Field(None, gt=0)  # its peak learning rate; None = optim.lr
    bf16: bool | None = None                  # cast the teacher to bf16 (half the memory and bandwidth);
                                              # None = yes when training runs in bf16 (GPU), no in fp32 (CPU)

    @model_validator(mode="after")
    def _consistent(self) -> "TeacherSpec":
        if self.source == "path" and not self.path:
            raise ValueError("teacher.path is required when teacher.source is 'path'")
        if self.source == "dense-finetune" and self.dense_steps == 0:
            raise ValueError("teacher.dense_steps must be > 0 when teacher.source is 'dense-finetune'")
        return self


class DataSpec(_Strict):
    """Training data. `synthetic-arith`: built-in 'a+b=' -> 'c' strings with a character tokenizer (for tiny-*
    models). `task`: a `sparselm.data` task by name. `jsonl`: a file of {prompt_field, target_field} objects."""

    source: Literal["synthetic-arith", "task", "jsonl"] = "synthetic-arith"
    task: str | None = None
    data_dir: str | None = None                  # task: read <data_dir>/<split>.jsonl (machines without generators)
    task_args: dict[str, Any] = Field(default_factory=dict)  # task: extra keyword arguments of its factory
    path: str | None = None
    split: str = "train"
    prompt_field: str = "prompt"
    target_field: str = "completion"
    num_examples: int | None = Field(512, gt=0)  # items used (synthetic: generated); None = all
    max_operand: int = Field(99, gt=0)           # synthetic-arith: operands drawn from [0, max_operand]
    calib_samples: int = Field(32, gt=0)         # calibration sequences for each pruning stage
    seed: int = 0
    eval_split: str | None = None                # task source: held-out split for train.eval_every (validation)
    eval_path: str | None = None                 # jsonl source: held-out file for train.eval_every
    eval_examples: int = Field(512, gt=0)        # held-out items used per evaluation

    @model_validator(mode="after")
    def _source(self) -> "DataSpec":
        if self.source == "task" and not self.task:
            raise ValueError("data.task is required when data.source is 'task'")
        if self.source == "jsonl" and not self.path:
            raise ValueError("data.path is required when data.source is 'jsonl'")
        return self


class StageSpec(_Strict):
    """One pruning stage: re-prune to `sparsity` (or N:M `pattern`), then fine-tune `steps` or `epochs`."""

    sparsity: float | None = Field(None, gt=0.0, lt=1.0)
    pattern: str | None = None                # "2:4" etc.
    steps: int | None = Field(None, gt=0)     # optimizer steps (overrides train.steps)
    epochs: float | None = Field(None, gt=0)  # passes over the data (overrides train.epochs)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            m = re.fullmatch(r"(\d+):(\d+)", v)
            if not m or not 0 < int(m.group(1)) < int(m.group(2)):
                raise ValueError(f"pattern must be 'N:M' with 0 < N < M, got {v!r}")
        return v

    @model_validator(mode="after")
    def _target(self) -> "StageSpec":
        if self.sparsity is None and self.pattern is None:
            raise ValueError("a stage needs a sparsity or a pattern")
        return self


class PruningSpec(_Strict):
    method: str = "sparsegpt"
    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _increasing(self) -> "PruningSpec":
        prev = 0.0
        for i, st in enumerate(self.stages):
            if st.sparsity is not None:
                if st.sparsity < prev:
                    raise ValueError(f"stages.{i}.sparsity {st.sparsity} is below the previous stage's {prev}: "
                                     "a fixed-mask re-prune cannot reduce sparsity")
                prev = st.sparsity
        return self


class LossSpec(_Strict):
    """Loss weights (w_ce·CE + w_kd·KD + w_squarehead·SquareHead) and their options."""

    ce: float = Field(1.0, ge=0)
    kd: float = Field(0.0, ge=0)
    squarehead: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)      # KD softmax temperature (KL scaled by T²)
    squarehead_variant: Literal["masked_mean", "sum_ratio", "token_ratio"] = "masked_mean"
    squarehead_eps: float = Field(1e-6, ge=0)  # squared-activation units; see distill/squarehead.py
    squarehead_scale_by_layers: bool = False   # sum_ratio only: divide the layer sum by L
    layers: list[int] | str | None = None      # SquareHead layer subset: indices or a regex; None = every block

    @model_validator(mode="after")
    def _nonzero(self) -> "LossSpec":
        if self.ce + self.kd + self.squarehead == 0:
            raise ValueError("loss: all weights are 0")
        return self


class OptimSpec(_Strict):
    lr: float = Field(1e-4, gt=0)              # peak learning rate (after warm-up)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)     # 0: decaying kept weights toward 0 fights the teacher signal
    grad_clip: float | None = Field(None, gt=0)  # None: no clipping (the paper uses none)
    fused: bool | None = None                  # None = fused AdamW on CUDA, foreach on CPU

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v


class ScheduleSpec(_Strict):
    """Per stage: linear warm-up from 0 to lr, then linear decay to final_lr_ratio·lr (or constant)."""

    warmup_steps: int | None = Field(None, ge=0)   # None: use warmup_ratio
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # fraction of the stage's steps
    decay: Literal["linear", "constant"] = "linear"
    final_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainSpec(_Strict):
    steps: int | None = Field(None, gt=0)      # optimizer steps per stage, unless the stage says otherwise
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)           # sequences per device per micro-batch
    grad_accum: int = Field(1, gt=0)           # micro-batches per optimizer step
    seqlen: int = Field(512, gt=0)             # tokens; longer sequences are truncated
    log_every: int = Field(10, gt=0)           # optimizer steps between metric lines (each one syncs the device)
    ckpt_every: int | None = Field(None, gt=0)  # optimizer steps; None = only at stage ends
    keep_checkpoints: int = Field(2, gt=0)
    # Dense phases only (sparse phases keep a fixed length, so losses compare at equal steps): validation CE every
    # `eval_every` optimizer steps on data.eval_split / eval_path; the phase ends with its best weights.
    eval_every: int | None = Field(None, gt=0)
    early_stop_patience: int | None = Field(None, gt=0)  # stop after this many evaluations without a new best
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False                      # torch.compile the student
    fsdp: bool = False                         # FSDP2 under multi-process launch (DDP otherwise)
    threads: int | None = Field(None, gt=0)    # CPU intra-op threads; None = torch's default. Tiny models run
                                               # fastest on 1 (no OpenMP spin-waits on a shared machine)


class OutputSpec(_Strict):
    dir: str = "runs/finetune"


class FinetuneRecipe(_Strict):
    model: ModelSpec
    teacher: TeacherSpec | None = None
    data: DataSpec = DataSpec()
    pruning: PruningSpec | None = None         # None: dense fine-tune (e.g. to make a teacher)
    loss: LossSpec = LossSpec()
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    train: TrainSpec = TrainSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _cross_checks(self) -> "FinetuneRecipe":
        if self.teacher is None:
            for key in ("kd", "squarehead"):
                if getattr(self.loss, key) > 0:
                    raise ValueError(f"loss.{key}: weight {getattr(self.loss, key)} > 0 needs a teacher "
                                     "(add a `teacher:` section or set the weight to 0)")
        stages = self.pruning.stages if self.pruning else [None]
        for i, st in enumerate(stages):
            if not ((st and (st.steps or st.epochs)) or self.train.steps or self.train.epochs):
                raise ValueError(f"pruning.stages.{i}: no length; set steps/epochs there or train.steps/epochs")
        if self.train.early_stop_patience and not self.train.eval_every:
            raise ValueError("train.early_stop_patience needs train.eval_every (how often to evaluate)")
        if self.data.eval_split and self.data.source != "task" and not self.data.eval_path:
            raise ValueError(f"data.eval_split names a split of a task; with source {self.data.source!r} set "
                             "data.eval_path (a held-out .jsonl) instead")
        if self.train.eval_every and not (self.data.eval_split or self.data.eval_path):
            raise ValueError("train.eval_every needs held-out data: data.eval_split (task source, e.g. "
                             "validation) or data.eval_path (jsonl source)")
        if self.model.tiny and self.train.seqlen > self.model.tiny.max_positions:
            raise ValueError(f"train.seqlen {self.train.seqlen} exceeds model.tiny.max_positions "
                             f"{self.model.tiny.max_positions}")
        return self


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise RecipeError(f"override key {key!r} is not a dotted name")
    return key.split("."), yaml.safe_load(raw) if raw != "" else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` (YAML-parsed value; list items by index, e.g. pruning.stages.0.sparsity=0.6)."""
    for text in overrides:
        path, value = _parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = node[int(part)] if isinstance(node, list) else node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if isinstance(nxt, str) and path[i + 1] != "":  # `model: tiny-llama` then model.tiny.x=...
                nxt = {"name": nxt}
                node[part] = nxt
            node = nxt
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"override {text!r}: index {last} is out of range")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def validate_finetune_recipe(data: dict[str, Any], origin: str = "recipe") -> FinetuneRecipe:
    try:
        return FinetuneRecipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{origin}: {_format(e)}") from None


def read_recipe_yaml(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A recipe file's top-level mapping with dotted overrides applied (shared by every recipe kind)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level must be a mapping")
    return apply_overrides(data, overrides or [])


def load_finetune_recipe(path: str | Path, overrides: list[str] | None = None) -> FinetuneRecipe:
    """Read a YAML recipe, apply dotted overrides, validate; raises RecipeError naming the file and field."""
    return validate_finetune_recipe(read_recipe_yaml(path, overrides), str(path))


def dump_recipe(recipe: FinetuneRecipe) -> str:
    """The resolved recipe as YAML (defaults filled in), for the output directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
