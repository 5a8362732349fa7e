"""Offline sm_90 SASS of the batch-1 vc32 and grp8i kernels: instructions in the main loop, by class, per nonzero.

    python benchmarks/sass_count.py --out benchmarks/results/sass_counts.json     # CPU only, ~1 min
    python benchmarks/sass_count.py --cuda --out ...    # also the CUDA C++ grp8cu kernels (a local nvcc, ~10 s)
    python benchmarks/sass_count.py --d4cu --out benchmarks/results/sass_counts_d4cu.json   # the delta4 kernel only
    python benchmarks/sass_count.py --nmsp [--source OLD/nm_mma.cu] --out ...   # the sparse-tensor-core kernel only
    python benchmarks/sass_count.py --nmcu [--source-dir OLD] --out ...   # the 1:4 pair-table loop, per step

Why: on an H200 the per-nonzero kernels stream their bytes at different rates (vc32 ~3 TB/s, grp8i ~2.3 TB/s on
tall shapes), and instruction counts say where the difference goes without spending device time. Triton
compiles for `GPUTarget("cuda", 90, 32)` without a GPU; the `cuobjdump` shipped with Triton disassembles the cubin.
The loop body is the span between the last backward branch and its target. Pointer arguments are specialized
16-byte aligned, as real launches are. An analysis, not a measurement: the GPU decides what these counts cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# sparselm.kernels.gpu turns the interpreter on where no GPU exists; compiling for sm_90 needs it off, set
# before anything imports triton
os.environ["TRITON_INTERPRET"] = "0"
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sparselm.kernels.gpu.grp8_spmv import grp8i_spmv_kernel  # noqa: E402
from sparselm.kernels.gpu.vc32_spmv import vc32_spmv_kernel  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
ADDR = {"IMAD", "LEA", "IADD3", "SHF", "LOP3", "SGXT", "IABS", "IMNMX", "VIADD", "IADD"}


def cuobjdump() -> str:
    found = sorted(Path(triton.__file__).parent.rglob("cuobjdump"))
    if not found:
        raise SystemExit("cuobjdump not found in the triton package")
    return str(found[0])


def _aligned(n: int) -> dict:
    return {(i,): [["tt.divisibility", 16]] for i in range(n)}


def compile_vc32(tile: int, warps: int):
    sig = {"x_ptr": "*fp16", "w_ptr": "*i32", "rp_ptr": "*i32", "y_ptr": "*fp16", "N": "i32", "B": "i32",
           "stride_xb": "i32", "stride_yb": "i32", "n_progs": "i32", "steps": "i32"}
    ce = {"BLOCK_N": 1, "TILE": tile, "BLOCK_B": 1, "VEC": 1, "BF16": 0, "PERSIST": 0, "STAGES": 2}
    sig.update({k: "constexpr" for k in ce})
    return triton.compile(ASTSource(vc32_spmv_kernel, sig, constexprs=ce, attrs=_aligned(4)), target=TARGET,
                          options={"num_warps": warps})


def compile_grp8i(tile: int, warps: int, int8: bool, col16: bool, lean: bool = False):
    sig = {"x_ptr": "*fp16", "vals_ptr": "*i8" if int8 else "*fp16", "offs_ptr": "*u8", "base_ptr": "*i16",
           "gp_ptr": "*i32", "scales_ptr": "*fp32" if int8 else "*fp16", "y_ptr": "*fp16", "N": "i32",
           "n_groups": "i32", "group_size": "i32", "stride_xb": "i32", "n_progs": "i32", "steps": "i32"}
    ce = {"BLOCK_N": 1, "TILE": tile, "SCALE_MODE": 1 if int8 else 0, "PERSIST": 0, "STAGES": 2,
          "COL16": int(col16), "LEAN": int(lean)}
    sig.update({k: "constexpr" for k in ce})
    return triton.compile(ASTSource(grp8i_spmv_kernel, sig, constexprs=ce, attrs=_aligned(7)), target=TARGET,
                          options={"num_warps": warps})


VT_NAMES, XT_NAMES = {0: "fp16", 1: "bf16", 2: "int8", 3: "int4"}, {0: "fp16", 1: "bf16"}


def cuda_sass(source: Path, flag: str) -> str:
    """One CUDA C++ kernel file built by a local nvcc for sm_90 (as cuda_build would on an H200), disassembled."""
    import shutil

    from sparselm.kernels.gpu import cuda_build

    nvcc = cuda_build.nvcc() or shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit(f"{flag}: nvcc not found")
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / "k.so"
        subprocess.run([nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90,code=sm_90",
                        "-o", str(lib), str(source)], check=True, capture_output=True, text=True)
        return subprocess.run([cuobjdump(), "-sass", str(lib)], capture_output=True, text=True, check=True).stdout


def loop_bodies(part: str) -> list[list[str]]:
    """Every backward branch's body in one function's SASS, as opcode lists (the loops, innermost among them)."""
    ins = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in INS.finditer(part)]
    loops = []
    for addr, op, args in ins:
        tgt = re.search(r"0x([0-9a-f]+)", args) if op.startswith("BRA") else None
        if tgt and int(tgt.group(1), 16) < addr:
            loops.append([o for a, o, _ in ins if int(tgt.group(1), 16) <= a <= addr])
    return loops


def count_cuda() -> list[dict]:
    """The CUDA C++ grp8 kernels (src/sparselm/kernels/gpu/grp8_gemv.cu) built by a local nvcc for sm_90: per
    instantiation (values, activations, x path or batch, per-group scales), the quad loop's instructions per
    nonzero (the batch-1 loop: U quads per step with loads issued ahead, 4U nonzeros per lane; U = 1 is unrolled
    twice by the compiler, 8 nonzeros)."""
    from sparselm.kernels.gpu import cuda_grp8

    sass = cuda_sass(cuda_grp8._SOURCE, "--cuda")
    rows = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        head = part.split("\n", 1)[0]
        gemv = re.search(r"grp8_gemv_kernelILi(\d)ELi(\d)ELb(\d)ELi(\d)ELi(\d)E", head)
        gemm = re.search(r"grp8_gemm_kernelILi(\d)ELi(\d)ELi(\d+)ELb(\d)E", head)
        if gemm:
            rows.append(_count_gemm(part, int(gemm.group(3)), (VT_NAMES[int(gemm.group(1))],
                                                             XT_NAMES[int(gemm.group(2))]), gemm.group(4) == "1"))
            continue
        if not gemv:
            continue
        vt, xt, smem = int(gemv.group(1)), int(gemv.group(2)), gemv.group(3) == "1"
        gs_mode = int(gemv.group(4))  # per-group scales: 0 none, 1 looked up in global memory, 2 staged in shared
        gs = gs_mode > 0
        unroll = int(gemv.group(5))
        step = 8 if unroll == 1 else 4 * unroll  # nonzeros per lane per loop iteration
        loops = loop_bodies(part)  # the quad loop is the shortest holding 8 x gathers
        gather = "LDS" if smem else "LDG.E.U16"
        inner = min((b for b in loops if sum(o.startswith(gather) for o in b) >= step), key=len)
        classes = collections.Counter(classify(op) for op in inner)
        rows.append({"kernel": "grp8cu" + ("" if smem else "-l1") + ("", "-gs", "-gss")[gs_mode] + f"-u{unroll}",
                     "values": VT_NAMES[vt], "act": XT_NAMES[xt], "group_scales": gs, "unroll": unroll,
                     "loop_instructions": len(inner), "nnz_per_thread_step": step,
                     "per_nnz": round(len(inner) / step, 2),
                     "per_nnz_by_class": {k: round(v / step, 2) for k, v in sorted(classes.items())}})
    return rows


def count_d4cu() -> list[dict]:
    """The CUDA C++ delta4 kernels (delta4_gemv.cu) built by a local nvcc for sm_90: per (values, activations, x
    path, chunks per load step), the chunk loop's instructions per nonzero (16 nonzeros per lane per chunk)."""
    from sparselm.kernels.gpu import cuda_delta4

    sass = cuda_sass(cuda_delta4._SOURCE, "--d4cu")
    rows = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        head = part.split("\n", 1)[0]
        m = re.search(r"d4_gemv_kernelILi(\d)ELi(\d)ELb(\d)ELi(\d)E", head)
        mb = re.search(r"d4_gemm_kernelILi(\d)ELi(\d)ELi(\d)ELi(\d)E", head)  # batches 2-8: (vt, xt, B, U)
        if mb:
            m, batch = mb, int(mb.group(3))
            vt, xt, smem, unroll = int(mb.group(1)), int(mb.group(2)), True, int(mb.group(4))
        elif m:
            batch = 1
            vt, xt, smem, unroll = int(m.group(1)), int(m.group(2)), m.group(3) == "1", int(m.group(4))
        else:
            continue
        loops = loop_bodies(part)
        gather = "LDS" if smem else "LDG.E.U16"
        step = 16 * unroll
        loads = step * max(1, batch // 4)  # x loads per step: one per nonzero (two float4 per nonzero at batch 8)
        inner = min((b for b in loops if sum(o.startswith(gather) for o in b) >= loads), key=len)
        classes = collections.Counter(classify(op) for op in inner)
        rows.append({"kernel": "d4cu" + (f"-b{batch}" if batch > 1 else "") + ("" if smem else "-l1") + f"-u{unroll}",
                     "values": VT_NAMES[vt], "act": XT_NAMES[xt], "batch": batch, "unroll": unroll,
                     "loop_instructions": len(inner),
                     "nnz_per_thread_step": step, "per_nnz": round(len(inner) / step, 2),
                     "per_nnz_by_class": {k: round(v / step, 2) for k, v in sorted(classes.items())}})
    return rows


def count_nmsp(source: Path | None = None) -> list[dict]:
    """The CUDA C++ sparse-tensor-core kernels (nm_mma.cu, or `source`: another version of it, built with the
    headers beside it) built by a local nvcc for sm_90: per (values, slots per group, padded batch, warps, chunks in
    flight), the chunk loop's instructions per 128-column chunk (the loop holding the most mma.sp, D chunks each)."""
    from sparselm.kernels.gpu import cuda_nmsp

    src = cuda_nmsp._SOURCE
    with tempfile.TemporaryDirectory() as d:
        if source is not None:  # beside the current headers, as the kernel file it replaces
            for h in src.parent.glob("*.cuh"):
                (Path(d) / h.name).write_bytes(h.read_bytes())
            src = Path(d) / "nm_mma.cu"
            src.write_bytes(source.read_bytes())
        sass = cuda_sass(src, "--nmsp")
    rows = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        m = re.search(r"nm_mma_kernelILi(\d)ELi(\d)ELi(\d+)ELi(\d)ELi(\d)E", part.split("\n", 1)[0])
        if not m:
            continue
        vt, slots, bp, warps, depth = (int(g) for g in m.groups())
        loops = [b for b in loop_bodies(part) if any(o.startswith("HMMA") for o in b)]
        most = max(sum(o.startswith("HMMA") for o in b) for b in loops)
        inner = min((b for b in loops if sum(o.startswith("HMMA") for o in b) == most), key=len)
        chunks = most // (4 * (bp // 8))  # 4 k32 steps per chunk, one mma.sp per 8 batch rows
        rows.append({"kernel": f"nmsp-s{slots}-b{bp}-w{warps}-d{depth}", "values": VT_NAMES[vt], "slots": slots,
                     "batch": bp, "warps": warps, "depth": depth, "loop_instructions": len(inner),
                     "chunks_per_loop": chunks, "per_chunk": round(len(inner) / chunks, 1)})
    return rows


def count_nmcu(source_dir: Path | None = None) -> list[dict]:
    """The batch-1 N:M kernel's pair-table builds (nm_gemv.cu; `source_dir`: another version with its own headers,
    e.g. files from git show) for sm_90: per (values, steps per load round U, 32-register build), the row loop's
    instructions per step of 8 slots. The loop is the shortest one holding value loads and HFMA2 but no STS (the x
    staging) or SHFL (the row loop around it); its steps are its value loads (U = 1 is unrolled twice by nvcc)."""
    from sparselm.kernels.gpu import cuda_nm

    sass = cuda_sass(source_dir / "nm_gemv.cu" if source_dir else cuda_nm._SOURCE, "--nmcu")
    rows = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        m = re.search(r"nm_gemv_kernelILi(\d)ELi0ELi4ELi1ELi(\d)ELi(\d)ELi2EE", part.split("\n", 1)[0])
        if not m:
            continue
        vt, unroll, minb = (int(g) for g in m.groups())
        value_load = "LDG.E.64" if vt == 2 else "LDG.E.128"
        loops = [b for b in loop_bodies(part) if any(o.startswith("HFMA2") for o in b)
                 and any(o.startswith(value_load) for o in b) and not any(o.startswith(("STS", "SHFL")) for o in b)]
        inner = min(loops, key=len)
        steps = sum(o.startswith(value_load) for o in inner)
        classes = collections.Counter(o.split(".")[0] for o in inner)
        rows.append({"kernel": f"nmcu-pairs-u{unroll}" + ("-r32" if minb == 2 else ""), "values": VT_NAMES[vt],
                     "unroll": unroll, "min_blocks": minb, "loop_instructions": len(inner), "steps_per_loop": steps,
                     "per_step": round(len(inner) / steps, 2),
                     "per_step_by_op": {k: round(v / steps, 2) for k, v in sorted(classes.items())}})
    return rows


def _count_gemm(part: str, b: int, tag: tuple[str, str], gs: bool) -> dict:
    best = None
    for body in loop_bodies(part):
        lds = sum(o.startswith("LDS") for o in body)
        if lds >= 4 and (best is None or len(body) < len(best[0])):
            best = (body, lds)
    body, lds = best
    nnz = lds // max(1, b // 8)  # B = 16: two 16-byte loads per nonzero
    classes = collections.Counter(classify(op) for op in body)
    return {"kernel": f"grp8cu-b{b}" + ("-gs" if gs else ""), "values": tag[0], "act": tag[1], "batch": b,
            "group_scales": gs, "loop_instructions": len(body), "nnz_per_thread_step": nnz,
            "per_nnz": round(len(body) / nnz, 2), "per_nnz_per_batch_row": round(len(body) / nnz / b, 2),
            "per_nnz_by_class": {k: round(v / nnz, 2) for k, v in sorted(classes.items())}}


def loop_body(sass: str) -> list[tuple[int, str]]:
    """(address, opcode) of the longest span closed by a backward branch."""
    ins = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in INS.finditer(sass)]
    best: list = []
    for addr, op, args in ins:
        tgt = re.search(r"0x([0-9a-f]+)", args) if op.startswith("BRA") else None
        if tgt and int(tgt.group(1), 16) < addr:
            body = [(a, o) for a, o, _ in ins if int(tgt.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    return best


def classify(op: str) -> str:
    base = op.split(".")[0]
    if base in ("LDG", "LD"):
        w = re.search(r"\.(U8|S8|U16|S16|64|128)", op)
        return f"LDG.{w.group(1) if w else '32'}"
    if base in ADDR:
        return "MOV" if base == "IMAD" and ".MOV" in op else "int/addr"
    if base in ("I2F", "F2F", "PRMT", "HADD2", "F2I", "I2FP"):
        return f"cvt {base}"
    if base in ("FFMA", "FADD", "FMUL"):
        return base
    if base in ("ISETP", "FSETP", "PLOP3", "SEL", "FSEL"):
        return "pred/select"
    return "other"


def count(kernel, nnz_per_thread_step: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    body = loop_body(sass)
    classes = collections.Counter(classify(op) for _, op in body)
    return {"loop_instructions": len(body), "nnz_per_thread_step": nnz_per_thread_step,
            "per_nnz": round(len(body) / nnz_per_thread_step, 2),
            "per_nnz_by_class": {k: round(v / nnz_per_thread_step, 2) for k, v in sorted(classes.items())}}


def plot(rows: list[dict], path: Path) -> None:
    """Instructions per nonzero of each batch-1 form (best tile per kernel and values dtype), as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.get("batch", 1) != 1 or r.get("act", r["values"] if r["values"] != "int8" else "fp16") == "bf16":
            continue
        key = (r["kernel"], r["values"])
        best[key] = min(best.get(key, float("inf")), r["per_nnz"])
    keys = sorted(best, key=lambda kv: -best[kv])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(keys) + 1.2))
    ax.barh([f"{k} {v}" for k, v in keys], [best[kv] for kv in keys],
            color=["tab:orange" if k.startswith("grp8cu") else "tab:blue" for k, _ in keys])
    ax.set_xlabel("SASS instructions per nonzero (static loop, sm_90, best tile)")
    ax.set_title("batch-1 decode loops: Triton (blue) vs CUDA C++ (orange)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cuda", action="store_true", help="also the CUDA C++ grp8 kernel (needs a local nvcc)")
    ap.add_argument("--d4cu", action="store_true", help="only the CUDA C++ delta4 kernel (needs a local nvcc)")
    ap.add_argument("--nmsp", action="store_true", help="only the CUDA C++ sparse-tensor-core kernel (local nvcc)")
    ap.add_argument("--source", type=Path, help="--nmsp: another version of nm_mma.cu (e.g. from git show)")
    ap.add_argument("--nmcu", action="store_true", help="only the batch-1 N:M kernel's pair-table loop (local nvcc)")
    ap.add_argument("--source-dir", type=Path, help="--nmcu: another version's nm_gemv.cu and headers")
    args = ap.parse_args()
    # one CUDA C++ kernel file only, each its own record: the Triton counts below need a minute and do not change
    single = ((args.nmcu, lambda: count_nmcu(args.source_dir), lambda r: f"{r['per_step']:6.2f} per step of 8 slots"),
              (args.nmsp, lambda: count_nmsp(args.source), lambda r: f"{r['per_chunk']:6.1f} per chunk"),
              (args.d4cu, count_d4cu, lambda r: f"{r['act']:4s} {r['per_nnz']:5.2f} per nonzero"))
    for chosen, counter, line in single:
        if not chosen:
            continue
        rows = counter()
        for r in rows:
            print(f"{r['kernel']:22s} {r['values']:5s} {line(r)}")
        if args.out is not None:
            args.out.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "target": "sm_90 (offline)",
                                            "rows": rows}, indent=1) + "\n")
        return
    rows = count_cuda() if args.cuda else []
    for tile, warps in ((512, 2), (1024, 4)):
        rows.append({"kernel": "vc32", "values": "fp16", "tile": tile, "warps": warps,
                     **count(compile_vc32(tile, warps), tile / (32 * warps))})
    for int8 in (False, True):
        for col16 in (False, True):
            for tile, warps in ((512, 2), (1024, 4), (256, 1)):
                rows.append({"kernel": "grp8i" + ("-c16" if col16 else ""), "values": "int8" if int8 else "fp16",
                             "tile": tile, "warps": warps,
                             **count(compile_grp8i(tile, warps, int8, col16), tile / (32 * warps))})
        for tile, warps in ((512, 2), (1024, 4), (256, 1), (1024, 2)):  # the lean kernel's unmasked main loop
            rows.append({"kernel": "grp8i-lean", "values": "int8" if int8 else "fp16", "tile": tile, "warps": warps,
                         **count(compile_grp8i(tile, warps, int8, False, lean=True), tile / (32 * warps))})
    for r in rows:
        print(f"{r['kernel']:13s} {r['values']:5s} {r.get('act', ''):4s} tile {r.get('tile', '-'):>5} "
              f"w{r.get('warps', '-')}  "
              f"{r['per_nnz']:5.2f} per nonzero  "
              f"(addr {r['per_nnz_by_class'].get('int/addr', 0)})")
    if args.out is not None:
        args.out.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "target": "sm_90 (offline)",
                                        "triton": triton.__version__, "rows": rows}, indent=1) + "\n")
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
