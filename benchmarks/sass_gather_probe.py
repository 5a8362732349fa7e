"""Does `tl.gather` from a loop-invariant tensor keep its source in shared memory across loop iterations?
Compiles a vc32-style batch-1 loop that gathers x from a register tensor for sm_90 (offline, no GPU) and reports
where the shared-memory stores (STS) and loads (LDS) sit relative to the loop.

    python benchmarks/sass_gather_probe.py          # CPU only, a few seconds

Result with Triton 3.9 (session 12): the STS of x sit inside the loop — x is re-stored every iteration — so
tl.gather cannot stage x once for a whole row block; explicit shared memory (Gluon) or CUDA would be needed.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for sm_90, do not interpret
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@triton.jit
def gather_loop(x_ptr, w_ptr, rp_ptr, y_ptr, K, KP: tl.constexpr, TILE: tl.constexpr):
    pid = tl.program_id(0)
    xs = tl.load(x_ptr + tl.arange(0, KP), mask=tl.arange(0, KP) < K, other=0.0)  # loop-invariant
    start = tl.load(rp_ptr + pid)
    cnt = tl.load(rp_ptr + pid + 1) - start
    lane = tl.arange(0, TILE)
    part = tl.zeros((TILE,), dtype=tl.float32)
    for t in range(0, cnt, TILE):
        ok = t + lane < cnt
        w = tl.load(w_ptr + start + t + lane, mask=ok, other=0)
        v = (w & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        part += tl.where(ok, v * tl.gather(xs, (w >> 16) & 0xFFFF, 0).to(tl.float32), 0.0)
    tl.store(y_ptr + pid, tl.sum(part, 0).to(tl.float16))


def main() -> None:
    sig = {"x_ptr": "*fp16", "w_ptr": "*i32", "rp_ptr": "*i32", "y_ptr": "*fp16", "K": "i32",
           "KP": "constexpr", "TILE": "constexpr"}
    c = triton.compile(ASTSource(gather_loop, sig, constexprs={"KP": 4096, "TILE": 512}),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    dump = sorted(Path(triton.__file__).parent.rglob("cuobjdump"))[0]
    with tempfile.TemporaryDirectory() as d:
        cub = Path(d) / "k.cubin"
        cub.write_bytes(c.asm["cubin"])
        sass = subprocess.run([str(dump), "-sass", str(cub)], capture_output=True, text=True, check=True).stdout
    ins = [(int(m.group(1), 16), m.group(3)) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)]
    loops = [(int(t.group(1), 16), a) for a, op in ins if op.startswith("BRA")
             for t in [re.search(r"0x([0-9a-f]+)", sass.split(f"/*{a:04x}*/")[1].split(";")[0])]
             if t and int(t.group(1), 16) < a]
    lo, hi = loops[0] if loops else (0, -1)
    where = {op: (sum(lo <= a <= hi for a, o in ins if o.startswith(op)), sum(o.startswith(op) for _, o in ins))
             for op in ("STS", "LDS", "BAR")}
    print(f"shared memory {c.metadata.shared} B; loop {lo:#x}-{hi:#x}; (in loop, total): {where}")


if __name__ == "__main__":
    main()
