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


def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this python (it ships with torch)")
    out = tmp_path / "ddp"
    cmd = [str(torchrun if torchrun.exists() else "torchrun"), "--nproc-per-node", "2", "--standalone",
           "-m", "sparselm.train", str(RECIPE), "--out", str(out), "train.batch_size=8", "teacher.dense_steps=4",
           "pruning.stages.0.steps=3", "pruning.stages=[{sparsity: 0.5, steps: 3}, {sparsity: 0.6, steps: 3}]",
           "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # own process group: on a timeout the workers die with torchrun instead of lingering as orphans
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 300 s")
    assert proc.returncode == 0, err[-3000:]
    report = json.loads((out / "sparsity.json").read_text())
    assert report["overall"] == pytest.approx(0.6, abs=0.01)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["dense-teacher"] * 4 + ["stage-0"] * 3 + ["stage-1"] * 3  # rank 0 only
