"""The same fine-tuning code runs under `torchrun` with 2 processes (DDP over gloo on CPU): staged pruning,
per-rank data shards, masks enforced on every rank, rank 0 writes the outputs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "src" / "sparselm" / "recipes" / "tiny-cpu.yaml"


def _torchrun(nproc: int, out: Path, *overrides: str) -> subprocess.Popen:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this python (it ships with torch)")
    cmd = [str(torchrun if torchrun.exists() else "torchrun"), "--nproc-per-node", str(nproc), "--standalone",
           "-m", "sparselm.train", str(RECIPE), "--out", str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # own process group: on a timeout the workers die with torchrun instead of lingering as orphans
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 300 s")
    assert proc.returncode == 0, err[-3000:]


def test_ddp_loss_curve_equals_one_process_at_the_same_global_batch(tmp_path):
    """2 ranks x 8 sequences vs 1 x 16: the same global micro-batches, and token-mean losses normalized by the
    global token count, so the logged curves agree to float rounding (answers of 1-3 digits make the per-rank
    target counts differ: per-rank means would not)."""
    # the untouched model as teacher: a dense phase first would leave last-bit differences (reduction order) that
    # flip near-tied SparseGPT mask choices, which is noise of another kind
    common = ("teacher.source=initial", "pruning.stages=[{sparsity: 0.5, steps: 8}]", "train.log_every=1",
              "loss.kd=1.0", "optim.lr=3e-4")
    _wait(_torchrun(1, tmp_path / "one", "train.batch_size=16", *common))
    _wait(_torchrun(2, tmp_path / "two", "train.batch_size=8", *common))
    curves = []
    for name in ("one", "two"):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        curves.append([(r["phase"], r["loss/total"], r["loss/ce"]) for r in rows])
    assert [c[0] for c in curves[0]] == [c[0] for c in curves[1]]
    for (_, t1, c1), (_, t2, c2) in zip(*curves):
        assert t2 == pytest.approx(t1, rel=1e-4) and c2 == pytest.approx(c1, rel=1e-4)


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(2, out, "train.batch_size=8", "teacher.dense_steps=4", "pruning.stages.0.steps=3",
                     "pruning.stages=[{sparsity: 0.5, steps: 3}, {sparsity: 0.6, steps: 3}]", "train.log_every=1")
    _wait(proc)
    report = json.loads((out / "sparsity.json").read_text())
    assert report["overall"] == pytest.approx(0.6, abs=0.01)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["dense-teacher"] * 4 + ["stage-0"] * 3 + ["stage-1"] * 3  # rank 0 only


def test_ddp_model_selection_every_rank_decides_alike(tmp_path):
    """train.eval_every under 2 processes: rank 0's validation loss is broadcast, so both ranks take the same
    keep / early-stop decisions (a split decision would hang in the next collective or barrier)."""
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
                           for a, b in [(3, 4), (12, 30), (7, 8), (21, 21), (5, 60), (44, 11)]))
    out = tmp_path / "sel"
    _wait(_torchrun(2, out, "train.batch_size=8", "teacher.dense_steps=6", "pruning.stages=[{sparsity: 0.5, steps: 2}]",
                    "train.log_every=1", "train.eval_every=2", "train.early_stop_patience=1", f"data.eval_path={val}"))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val/ce" in r]
    assert val_rows and all(r["phase"] == "dense-teacher" for r in val_rows)  # dense phases only, rank 0 only
    assert len({r["step"] for r in val_rows}) == len(val_rows)
    chosen = json.loads((out / "selection.json").read_text())["p0"]
    assert chosen["val"] == min(r["val/ce"] for r in val_rows)
    assert [r["phase"] for r in rows if "val/ce" not in r][-2:] == ["stage-0"] * 2
