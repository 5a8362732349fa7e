"""`finetune`: dense fine-tune, one-shot prune, sparse fine-tune with distillation — driven by one recipe.

    # CPU, tiny Llama, < 60 s:
    sparselm finetune src/sparselm/recipes/tiny-cpu.yaml --out runs/tiny
    # one GPU (bf16 autocast, fp32 master weights, fused AdamW):
    sparselm finetune my-recipe.yaml --out runs/gsm-sparse train.batch_size=32
    # several GPUs (DDP; add train.fsdp=true for FSDP2, single pruning stage):
    torchrun --nproc-per-node 2 -m sparselm.train my-recipe.yaml --out runs/gsm-sparse

Phases: [dense-teacher] (teacher.source: dense-finetune) -> stage-0 .. stage-k (each: re-prune the current student
with keep_zeros, fix the mask, fine-tune), or one `dense` phase when the recipe has no `pruning`. Each phase has
its own AdamW state and warm-up/decay schedule. A checkpoint is written right after each pruning (so a resume never
re-prunes), every `train.ckpt_every` steps, and at each phase end; `resume=True` continues from `latest`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import DistributedType
from torch import nn

from sparselm.distill import DistillationLoss, check_vocab
from sparselm.recipes.schema import FinetuneRecipe, dump_recipe, load_finetune_recipe, validate_finetune_recipe
from sparselm.train import checkpoint as ckpt_io
from sparselm.train.data import BatchPlan, Collate, calibration_batches, example_collator
from sparselm.train.loop import BestSelection, LoopParts, MetricsLog, Phase, train_phase
from sparselm.train.mask import FixedMask
from sparselm.train.optim import LinearWarmupDecay, build_adamw, warmup_steps
from sparselm.train.select import BestWeights, validation_loss
from sparselm.train.setup import (git_sha, load_eval_examples, load_examples, load_student, load_teacher_from_path,
                                  make_accelerator, plan_phases, reload_teacher, resolve_precision,
                                  save_teacher_atomic, snapshot)
from sparselm.train.step import ObjectiveStep, compile_blocks, model_inputs


def resolve_recipe(recipe: FinetuneRecipe | str | Path, overrides: list[str] | None = None,
                   out: str | None = None) -> FinetuneRecipe:
    """A validated recipe with overrides applied (and `output.dir` replaced by `out` when given)."""
    overrides = list(overrides or []) + ([f"output.dir={out}"] if out else [])
    if isinstance(recipe, FinetuneRecipe):
        from sparselm.recipes.schema import apply_overrides

        return validate_finetune_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides))
    return load_finetune_recipe(recipe, overrides)


def finetune(recipe: FinetuneRecipe | str | Path, overrides: list[str] | None = None, out: str | None = None,
             resume: bool = False, *, items: Sequence[Any] | None = None, collate: Collate | None = None) -> Path:
    """Run a fine-tuning recipe; returns the output directory (model + tokenizer, sparsity.json, metrics.jsonl,
    recipe.yaml, run.json, checkpoints/).

    `items` + `collate` replace the recipe's `data` source with any training items and the function that batches
    them into model inputs with `labels` (e.g. Whisper audio items with `sparselm.data.asr.WhisperASRCollator`);
    calibration for pruning then uses single collated items too. Resume needs the same items in the same order.
    """
    return FinetuneRun(resolve_recipe(recipe, overrides, out), items=items, collate=collate).run(resume)


class FinetuneRun:
    def __init__(self, recipe: FinetuneRecipe, items: Sequence[Any] | None = None,
                 collate: Collate | None = None) -> None:
        from sparselm.models import get_adapter

        self.recipe, self.out = recipe, Path(recipe.output.dir)
        self.ckpt_root = self.out / "checkpoints"
        self.recipe_yaml = dump_recipe(recipe)
        if recipe.train.threads is not None:
            torch.set_num_threads(recipe.train.threads)
        torch.manual_seed(recipe.train.seed)
        self.student, self.tokenizer = load_student(recipe)
        self.adapter = get_adapter(self.student)
        self.acc = make_accelerator(recipe, type(self.adapter.blocks(self.student)[0][1]).__name__)
        # FSDP only when accelerate really shards (on CPU it falls back to plain multi-process data parallel)
        self.fsdp = self.acc.distributed_type == DistributedType.FSDP
        self.model_cls = type(self.student)  # FSDP2 swaps the class of a sharded module; keep the HF class
        self.causal = not getattr(self.student.config, "is_encoder_decoder", False)
        if items is not None:
            if collate is None:
                raise ValueError("finetune(items=...) needs collate=: the function that batches the items")
            self.examples, self.collate = list(items), collate
        else:
            self.examples = load_examples(recipe, self.tokenizer, self.causal)
            self.collate = example_collator(self.tokenizer.pad_token_id, self.causal)
        self.eval_examples = None
        if recipe.train.eval_every:
            if items is not None:
                raise ValueError("train.eval_every reads held-out data from the recipe's data section; with "
                                 "finetune(items=...) leave it unset")
            self.eval_examples = load_eval_examples(recipe, self.tokenizer, self.causal)
        global_batch = recipe.train.batch_size * self.acc.num_processes
        self.phases = plan_phases(recipe, max(1, len(self.examples) // global_batch))
        if self.fsdp and recipe.train.eval_every:
            raise ValueError("train.eval_every: model selection needs the full weights on one rank; use DDP "
                             "(train.fsdp=false)")
        if self.fsdp and len(self.phases) > 1:
            raise ValueError("train.fsdp: FSDP2 runs support one phase (one pruning stage, no in-run dense "
                             "teacher); use DDP (train.fsdp=false) for staged pruning")
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.acc.is_main_process)
        self.student.to(self.acc.device)
        self.teacher: nn.Module | None = None
        self.model_fwd: nn.Module | None = None

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> Path:
        ckpt = self._find_checkpoint(resume)
        start_phase, start_step, masks = 0, 0, None
        state: dict = {}
        # seconds of work behind the weights: this invocation's plus, resumed, what the checkpoint records (time
        # between that checkpoint and an interruption produced nothing kept, so it is not counted)
        self._t0, self._prior_s = time.perf_counter(), 0.0
        if ckpt is not None:
            self._check_same_recipe(ckpt)
            state = ckpt_io.read_state(ckpt)
            self._prior_s = float(state.get("train_s", 0.0))
            ckpt_io.load_weights(ckpt, self.student)
            start_phase, start_step, masks = state["phase"], state["step"], ckpt_io.load_masks(ckpt)
            self.metrics.truncate_after(state["global_step"])
            self.acc.print(f"resuming from {ckpt} (phase {start_phase}, step {start_step})")
        else:
            if self.acc.is_main_process and self.metrics.path.exists():
                self.metrics.path.unlink()
            if self.acc.is_main_process:
                shutil.rmtree(self.out / "best", ignore_errors=True)  # a killed run's best is not this run's
            self.acc.wait_for_everyone()  # no rank may read best/ before it is gone
        self._init_teacher()
        for phase in self.phases[start_phase:]:
            here = ckpt is not None and phase.index == start_phase
            step0 = start_step if here else 0
            if step0 < phase.steps:
                self._run_phase(phase, step0, ckpt if here else None, masks if here else None, state)
            if phase.name == "dense-teacher" and self.teacher is None:
                self._make_teacher(lambda: snapshot(self.student))
        return self._finalize()

    def _find_checkpoint(self, resume: bool) -> Path | None:
        latest = ckpt_io.latest_checkpoint(self.ckpt_root)
        if latest is not None and not resume:
            raise FileExistsError(f"{self.out} already holds a run (checkpoint {latest.name}); pass --resume to "
                                  "continue it, or choose another --out")
        if resume and latest is None:
            self.acc.print(f"--resume: no checkpoint under {self.ckpt_root}; starting from the beginning")
        return latest

    def _check_same_recipe(self, ckpt: Path) -> None:
        """Resuming under a different recipe would silently mix two runs: refuse, naming the changed fields."""
        import yaml

        saved = yaml.safe_load((ckpt / "recipe.yaml").read_text(encoding="utf-8"))
        now = yaml.safe_load(self.recipe_yaml)

        def flat(d: object, prefix: str = "") -> dict[str, object]:
            if isinstance(d, dict):
                return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}
            return {prefix[:-1]: d}

        a, b = flat(saved), flat(now)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUME_MAY_CHANGE)
        if changed:
            raise ValueError(f"--resume: the recipe differs from the one of checkpoint {ckpt} in {changed[:5]}; "
                             "resume with the same recipe, or start a new --out")

    # -- teacher ---------------------------------------------------------------------------------------------------
    def _init_teacher(self) -> None:
        spec = self.recipe.teacher
        if spec is None:
            return
        if spec.source == "path":
            model, tok = load_teacher_from_path(self.recipe)
            check_vocab(self.student, model, self.tokenizer, tok)
            self.teacher = model.to(self.acc.device)
        elif (self.out / "teacher").is_dir():
            self.teacher = reload_teacher(self.student, self.out / "teacher").to(self.acc.device)
        elif spec.source == "initial":
            self._make_teacher(lambda: snapshot(self.student))

    def _make_teacher(self, build) -> None:
        teacher = build()
        if self.acc.is_main_process:
            save_teacher_atomic(teacher, self.out / "teacher")
        self.acc.wait_for_everyone()
        self.teacher = teacher.to(self.acc.device)

    # -- one phase -------------------------------------------------------------------------------------------------
    def _run_phase(self, phase: Phase, step0: int, ckpt: Path | None, masks: dict | None, state: dict) -> None:
        r, module = self.recipe, self.student
        self._sel: BestSelection | None = None
        mask: FixedMask | None = None
        if phase.stage is not None and not self.fsdp:
            if ckpt is not None and masks is not None:
                mask = FixedMask.from_state(module, masks)
            else:
                self._prune(phase)
                mask = FixedMask.from_zeros(module, self.adapter.prunable_linears(module))
                self._save(phase, 0, None, mask, None)
        elif phase.stage is not None and ckpt is None:
            self._prune(phase)
        module.train()
        lr = phase.lr or r.optim.lr
        optimizer = build_adamw([p for p in module.parameters() if p.requires_grad], lr, r.optim.betas,
                                r.optim.eps, r.optim.weight_decay, r.optim.fused, self.acc.device.type)
        model_fwd, optimizer = self._prepare(module, optimizer)
        if self.fsdp and phase.stage is not None:  # masks of the local shards, after sharding
            mask = FixedMask.from_zeros(module, self.adapter.prunable_linears(module))
        schedule = LinearWarmupDecay(optimizer, lr, phase.steps,
                                     warmup_steps(phase.steps, r.schedule.warmup_steps, r.schedule.warmup_ratio),
                                     r.schedule.decay, r.schedule.final_lr_ratio)
        if ckpt is not None:
            if step0 > 0:
                ckpt_io.load_optimizer_state(ckpt, optimizer, module)
                schedule.load_state_dict(state["schedule"])
            ckpt_io.load_rng(ckpt)
        loss = DistillationLoss(phase.loss_weights, self._loss_options())
        teacher = self.teacher if loss.needs_teacher else None
        if teacher is not None and r.train.compile:
            from sparselm.models import get_adapter

            compile_blocks(teacher, get_adapter(teacher))
        if loss.needs_teacher and teacher is None:
            raise ValueError(f"phase {phase.name}: losses {loss.names} need a teacher but none was built")
        objective = ObjectiveStep(model_fwd, module, self.adapter, loss, teacher, r.loss.layers,
                                  teacher_bf16=self._teacher_bf16())
        plan = BatchPlan(self.examples, r.train.batch_size, self.collate, r.train.seed, phase.index,
                         self.acc.process_index, self.acc.num_processes)
        parts = LoopParts(
            accelerator=self.acc, model=model_fwd, module=module, objective=objective, optimizer=optimizer,
            schedule=schedule, plan=plan, post_step=[mask.apply_] if mask is not None else [],
            save=lambda step: self._save(phase, step, optimizer, mask, schedule),
            verify=mask.verify if mask is not None else (lambda: None), metrics=self.metrics,
            grad_accum=r.train.grad_accum, grad_clip=r.optim.grad_clip, log_every=r.train.log_every,
            ckpt_every=r.train.ckpt_every, global_offset=self._offset(phase),
            selection=self._selection(phase, module, state if ckpt is not None else None)
            if phase.stage is None else None)
        self._sel = parts.selection  # _save records its state in each checkpoint
        try:
            train_phase(parts, phase, step0, last_ckpt=ckpt.name if ckpt is not None else "none")
        finally:
            objective.close()
        rows = [json.loads(ln) for ln in self.metrics.path.read_text().splitlines()] if self.metrics.path.is_file() \
            else []
        last = next((row for row in reversed(rows) if "loss/ce" in row), {})
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("loss/") and v is not None)
        sparsity = f", sparsity {mask.overall():.1%}" if mask is not None else ""
        self.acc.print(f"[{phase.name}] {last.get('step', phase.steps)} steps done{sparsity}; {summary}")

    def _selection(self, phase: Phase, module: nn.Module, resumed: dict | None) -> BestSelection | None:
        """Validation-CE model selection for a dense phase (train.eval_every); `resumed`: the state.json of the
        checkpoint this phase resumes from (its best / patience are restored; a best saved after it, by the run
        that crashed, is not this run's and is dropped)."""
        r = self.recipe
        if self.eval_examples is None:
            return None
        best = BestWeights(self.out / "best", phase.index, self.recipe_yaml)

        def keep(step: int, loss: float) -> None:
            if self.acc.is_main_process:
                best.save(module, step, loss)
            self.acc.wait_for_everyone()

        def restore() -> None:
            best.load_into(module)
            self.acc.print(f"[{phase.name}] best validation CE {sel.best:.4g} at step {sel.best_step}: "
                           "those weights end the phase")

        def evaluate() -> float:
            loss = validation_loss(module, self.eval_examples, self.collate, r.train.batch_size, self.acc.device,
                                   self.acc.autocast)
            if self.acc.num_processes > 1:  # one decision for all ranks: rank 0's number
                t = torch.tensor([loss], device=self.acc.device)
                torch.distributed.broadcast(t, src=0)
                loss = float(t.item())
            return loss

        sel = BestSelection(every=r.train.eval_every, patience=r.train.early_stop_patience, keep=keep,
                            restore=restore, evaluate=evaluate)
        record = (resumed or {}).get("selection") if (resumed or {}).get("phase") == phase.index else None
        saved = best.saved()
        if record is not None and saved is not None and int(saved["step"]) == int(record["best_step"]):
            sel.load_state(record)
        elif saved is not None and self.acc.is_main_process:
            shutil.rmtree(best.root, ignore_errors=True)
        self.acc.wait_for_everyone()
        return sel

    def _prepare(self, module: nn.Module, optimizer):
        """DDP-wrap once (later stages prune the same parameters in place); FSDP2 needs model+optimizer together."""
        if self.fsdp:
            self.model_fwd, optimizer = self.acc.prepare(module, optimizer)
        elif self.model_fwd is None:
            self.model_fwd = self.acc.prepare_model(module) if self.acc.num_processes > 1 else module
            if self.recipe.train.compile:
                compile_blocks(module, self.adapter)
        return self.model_fwd, optimizer

    def _teacher_bf16(self) -> bool:
        spec = self.recipe.teacher
        if spec is None or spec.bf16 is None:
            return resolve_precision(self.recipe.train.precision) == "bf16"
        return spec.bf16

    def _loss_options(self) -> dict[str, dict[str, object]]:
        lo = self.recipe.loss
        return {"kd": {"temperature": lo.temperature},
                "squarehead": {"variant": lo.squarehead_variant, "eps": lo.squarehead_eps,
                               "scale_by_layers": lo.squarehead_scale_by_layers}}

    def _offset(self, phase: Phase) -> int:
        return sum(p.steps for p in self.phases[:phase.index])

    # -- pruning ---------------------------------------------------------------------------------------------------
    def _prune(self, phase: Phase) -> None:
        """Re-prune the current student (already-zero weights stay zero); every rank prunes, rank 0's result wins."""
        from sparselm.pruning import prune_model

        assert self.recipe.pruning is not None
        d = self.recipe.data
        calib = [model_inputs(b, self.student) for b in
                 calibration_batches(self.examples, d.calib_samples, self.collate, d.seed)]
        report = prune_model(self.student, method=self.recipe.pruning.method, sparsity=phase.sparsity,
                             pattern=phase.pattern, calib=calib, nsamples=len(calib), keep_zeros=True,
                             seed=self.recipe.train.seed, progress=self.acc.is_main_process)
        if self.acc.num_processes > 1 and torch.distributed.is_initialized():
            for p in self.student.parameters():
                torch.distributed.broadcast(p.data, src=0)
        self.acc.print(f"[{phase.name}] pruned with {self.recipe.pruning.method} to "
                       f"{phase.pattern or phase.sparsity}: overall {report['overall']:.1%}")

    # -- checkpoints and final output ------------------------------------------------------------------------------
    def _save(self, phase: Phase, step: int, optimizer, mask: FixedMask | None,
              schedule: LinearWarmupDecay | None) -> Path:
        name = f"p{phase.index}-s{step:07d}"
        state = {"phase": phase.index, "phase_name": phase.name, "step": step,
                 "global_step": self._offset(phase) + step,
                 "schedule": schedule.state_dict() if schedule is not None else {"step": 0},
                 "sparsity": mask.overall() if mask is not None else None, "train_s": round(self._train_s(), 1)}
        sel = getattr(self, "_sel", None)  # this phase's model selection, if any
        if sel is not None:
            state["selection"] = sel.state()
        if self.fsdp:  # full weights gathered to rank 0; optimizer moments are not checkpointed under FSDP
            sd = self.acc.get_state_dict(self.model_fwd)
            if self.acc.is_main_process:
                holder = snapshot_cpu_like(self.model_cls, self.student.config, sd)
                ckpt_io.save_checkpoint(self.ckpt_root, name, model=holder, optimizer=None, masks=None,
                                        state=state, recipe_yaml=self.recipe_yaml,
                                        keep=self.recipe.train.keep_checkpoints)
        elif self.acc.is_main_process:
            ckpt_io.save_checkpoint(self.ckpt_root, name, model=self.student, optimizer=optimizer,
                                    masks=mask.state_tensors() if mask is not None else None, state=state,
                                    recipe_yaml=self.recipe_yaml, keep=self.recipe.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return self.ckpt_root / name

    def _train_s(self) -> float:
        return self._prior_s + time.perf_counter() - self._t0

    def _finalize(self) -> Path:
        from sparselm.sparsity.report import sparsity_report

        r = self.recipe
        sd = self.acc.get_state_dict(self.model_fwd) if self.fsdp else None
        if self.acc.is_main_process:
            stage = r.pruning.stages[-1] if r.pruning else None
            target = (stage.pattern or stage.sparsity) if stage else None
            tmp = self.out / f".final-tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model = snapshot_cpu_like(self.model_cls, self.student.config, sd) if sd is not None else self.student
            model.save_pretrained(tmp, state_dict=sd)
            self.tokenizer.save_pretrained(tmp)
            report = sparsity_report(model, r.pruning.method if r.pruning else None, target)
            (tmp / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")
            (tmp / "recipe.yaml").write_text(self.recipe_yaml)
            run = {**_provenance(), "train_s": round(self._train_s(), 1)}
            (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
            chosen = BestWeights.chosen(self.out / "best")
            if chosen:  # train.eval_every: which step each dense phase kept (its weights are in the model now)
                (tmp / "selection.json").write_text(json.dumps(chosen, indent=2) + "\n")
            for f in tmp.iterdir():
                os.replace(f, self.out / f.name)
            tmp.rmdir()
            shutil.rmtree(self.out / "best", ignore_errors=True)  # a full weight copy, no longer needed
            self.acc.print(f"wrote {self.out} (overall sparsity {report['overall']:.1%})")
        self.acc.wait_for_everyone()
        return self.out


# Operational settings that do not change what is computed: a resumed run may alter them.
_RESUME_MAY_CHANGE = {"output.dir", "train.threads", "train.keep_checkpoints", "train.log_every", "train.ckpt_every"}


def snapshot_cpu_like(model_cls: type, config, state_dict: dict) -> nn.Module:
    """A plain (unsharded) CPU model of class `model_cls` holding `state_dict` (an FSDP full state dict)."""
    with torch.random.fork_rng(devices=[]):
        clone = model_cls(config)
    clone.load_state_dict({k: v.cpu() for k, v in state_dict.items()}, strict=False)
    return clone


def _provenance() -> dict[str, object]:
    import datetime

    import transformers

    import sparselm

    return {"sparselm": sparselm.__version__, "git_sha": git_sha(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
