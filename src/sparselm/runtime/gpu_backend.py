"""The CUDA backend of SparseLinear: per (shape, batch, dtypes) dispatch between the bitmask Triton kernels and
cuBLAS on a dense copy, from a measured table (autotune / load_dispatch_table) or default heuristics.

Dispatch key: (N, K, batch bucket, values dtype, activation dtype); buckets 1, 2, 4, ..., 64 (next power of two).
Batches above MAX_SPARSE_BATCH always go dense: tensor-core GEMMs are compute-bound there and the bitmask decode
is pure overhead (the prefill path decompresses W tile by tile, then calls cuBLAS).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch.nn import functional as F

from sparselm.kernels.gpu.ops import PackedBitmask, SpmmConfig, decompress_gpu, spmm

MAX_SPARSE_BATCH = 64  # rows of x; above this, dense cuBLAS (decode-sized batches only go sparse)
# Path for keys autotune has not measured. "dense": on the H200 (2026-11-29, benchmarks/results/gpu_kernels.json)
# the bitmask kernel lost to cuBLAS at every measured shape and batch, so unmeasured keys take cuBLAS on a cached
# dense copy (speed first, at the cost of memory); set_default_path("sparse") puts memory first.
_DEFAULT = {"path": "dense"}
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
Key = tuple[int, int, int, str, str]
_TABLE: dict[Key, dict[str, Any]] = {}  # measured choices: {"path": "sparse"|"dense", "cfg": SpmmConfig}


def bucket(batch: int) -> int:
    for b in BUCKETS:
        if batch <= b:
            return b
    return batch


def default_config(batch: int) -> SpmmConfig:
    """Heuristic choice when nothing was measured: wide-K CUDA-core tiles for batch <= 8, tensor cores above.

    Wide K (few, long chunk iterations) matters because each iteration is a chain of two dependent global
    loads (mask word, then the value it indexes): 16 iterations of 256 columns cost 16 load latencies.
    """
    if batch == 1:
        return SpmmConfig(block_n=2, block_k=2048, block_b=1, num_warps=4)
    if batch <= 8:
        return SpmmConfig(block_n=2, block_k=1024, block_b=bucket(batch), num_warps=4)
    return SpmmConfig(block_n=16, block_k=512, block_b=max(16, bucket(batch)), use_dot=True, num_warps=4)


def _dtype_name(t: torch.dtype) -> str:
    return str(t).removeprefix("torch.")


def key_of(n: int, k: int, batch: int, values: torch.dtype | str, act: torch.dtype) -> Key:
    """values: the torch dtype, or the format's name ("int4" layers hold int8 codes: a dtype cannot tell them)."""
    return (n, k, bucket(batch), values if isinstance(values, str) else _dtype_name(values), _dtype_name(act))


def values_name(layer) -> str:
    return "int4" if getattr(layer, "bits", 8) == 4 else _dtype_name(layer.values.dtype)


def record(key: Key, path: str, cfg: SpmmConfig | None) -> None:
    _TABLE[key] = {"path": path, "cfg": cfg}


def set_default_path(path: str) -> None:
    """"dense" (default) or "sparse": what dispatch does for a (shape, batch) that autotune has not measured."""
    if path not in ("dense", "sparse"):
        raise ValueError(f"path: 'dense' or 'sparse', got {path!r}")
    _DEFAULT["path"] = path


def choice(key: Key) -> dict[str, Any]:
    if key in _TABLE:
        return _TABLE[key]
    if key[2] > MAX_SPARSE_BATCH or _DEFAULT["path"] == "dense":
        return {"path": "dense", "cfg": None}
    return {"path": "sparse", "cfg": default_config(key[2])}


def save_dispatch_table(path: str | os.PathLike) -> None:
    rows = [{"N": k[0], "K": k[1], "batch": k[2], "values": k[3], "act": k[4], "path": v["path"],
             "cfg": asdict(v["cfg"]) if v["cfg"] is not None else None} for k, v in _TABLE.items()]
    with open(path, "w") as f:
        json.dump({"rows": rows}, f, indent=1)


def load_dispatch_table(path: str | os.PathLike) -> int:
    """Merge a table written by save_dispatch_table (or benchmarks/gpu_kernels.py's "dispatch"); returns rows."""
    with open(path) as f:
        data = json.load(f)
    rows = data.get("dispatch", data.get("rows", []))
    for r in rows:
        cfg = SpmmConfig(**r["cfg"]) if r.get("cfg") else None
        record((int(r["N"]), int(r["K"]), int(r["batch"]), r["values"], r["act"]), r["path"], cfg)
    return len(rows)


def packed(layer) -> PackedBitmask:
    """The layer's kernel view, built once per device (SparseLinear._apply clears it on moves)."""
    p = layer.kernel_state.get("packed")
    if p is None:
        p = layer.kernel_state["packed"] = PackedBitmask.from_compressed(layer.compressed)
    return p


def dense_from_kernel(layer, dtype: torch.dtype) -> torch.Tensor | None:
    return decompress_gpu(packed(layer), dtype)


def deterministic(cfg: SpmmConfig) -> bool:
    """Whether two launches of cfg on the same inputs give the same bits. Not where split-K partial sums meet through
    fp32 atomics, whose order the GPU does not fix: the Triton bitmask kernel and bmma / tmma with split_k > 1 (the
    workspace of mma_common.cuh store_rows), nmsp beyond 8 splits (2-8 add theirs in a thread-block cluster, in a
    fixed order). The per-row kernels (grp8cu, d4cu, nmcu, vc32, ...) reduce each row in one warp."""
    return cfg.split_k <= 8 if cfg.kernel == "nmsp" else cfg.split_k == 1


def tuning_candidates(batch: int) -> list[SpmmConfig]:
    """candidate_configs(batch), less the configs that are not `deterministic` while
    torch.use_deterministic_algorithms(True) is in force: who asked PyTorch for reproducible results gets a sparse
    decode that repeats itself bit for bit (a 2:4 model's batch-1 products had chosen nmsp with 16 atomic splits)."""
    cfgs = candidate_configs(batch)
    if torch.are_deterministic_algorithms_enabled():
        cfgs = [c for c in cfgs if deterministic(c)]
    return cfgs


def cuda_backend(x2d: torch.Tensor, layer) -> torch.Tensor | None:
    """y2d = x2d @ W.T by the table's choice; None = dense fallback (SparseLinear handles it). A choice that is not
    `deterministic` runs dense (cuBLAS) while torch.use_deterministic_algorithms(True) is in force, with a warning:
    it was tuned without that mode (or loaded from a table that was)."""
    if x2d.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    ch = choice(key_of(layer.out_features, layer.in_features, x2d.shape[0], values_name(layer), x2d.dtype))
    if ch["path"] == "sparse" and torch.are_deterministic_algorithms_enabled() and not deterministic(ch["cfg"]):
        warnings.warn(f"sparselm: {ch['cfg'].key()} sums with atomics, so {layer.out_features}x{layer.in_features} "
                      f"runs dense under torch.use_deterministic_algorithms(True); autotune again in that mode to "
                      f"choose among deterministic kernels", RuntimeWarning, stacklevel=2)
        ch = {"path": "dense", "cfg": None}
    if ch["path"] == "dense":
        # measured faster dense at a decode-sized batch: keep the dense copy (memory for speed); prefill-sized
        # batches decompress transiently, their GEMM dwarfs the decode of W
        if x2d.shape[0] <= MAX_SPARSE_BATCH and layer.cache_dense is None:
            layer.cache_dense = True
        return F.linear(x2d, layer.dense_weight(x2d.dtype))
    return spmm(x2d, packed(layer), ch["cfg"])


GLU = "+glu"  # the values-name suffix of a fused gate / up layer's glu row in the dispatch table


def glu_key(layer, act: torch.dtype) -> Key:
    """The table key of a fused gate / up layer's batch-1 glu choice (autotune_glu)."""
    return key_of(layer.out_features, layer.in_features, 1, values_name(layer) + GLU, act)


def silu_mul_product(x2d: torch.Tensor, layer, auto: bool = False) -> torch.Tensor | None:
    """silu(x G^T) * (x U^T) for a fused gate / up SparseLinear (rows [G; U], no bias) in one launch, where the
    table's choice for its shape at batch 1 is the nmcu kernel (its glu epilogue: the decode step's silu * up launch
    goes away); None elsewhere (the caller runs the product, then fused.silu_mul). auto: only for 16-bit values,
    with autotune_glu's measured config where it has a row (a "dense" row: no glu). int8 values never take it under
    auto: 7B int8 1:4 decode ran 2-3.5% slower with the glu launch in three same-run A/Bs with the product's config
    and 2.4% slower with the tuned config (decode steps 687.4 vs 704.6 tok/s, 5 rounds within 0.1%,
    gpu_decode_steps_ab.json), which autotune_glu's isolated timing had chosen; fp16 ran 2.2% faster."""
    if x2d.shape[0] != 1 or layer.bias is not None or layer.out_features % 2 or x2d.dtype not in (torch.float16,
                                                                                                   torch.bfloat16):
        return None
    from sparselm.kernels.gpu import cuda_nm

    if auto:
        if layer.values.dtype not in (torch.float16, torch.bfloat16):
            return None
        tuned = _TABLE.get(glu_key(layer, x2d.dtype))
        if tuned is not None:
            return cuda_nm.gemv(x2d, packed(layer), tuned["cfg"], glu=True) if tuned["path"] == "sparse" else None
    ch = choice(key_of(layer.out_features, layer.in_features, 1, values_name(layer), x2d.dtype))
    cfg = ch["cfg"]
    if ch["path"] != "sparse" or cfg is None or cfg.kernel != "nmcu" or cfg.block_b != 1:
        return None
    return cuda_nm.gemv(x2d, packed(layer), cfg, glu=True)


def autotune_glu(layers, act_dtype: torch.dtype = torch.float16, copies: int = 4, margin: float = 0.03,
                 rounds: int = 3) -> dict[Key, dict[str, Any]]:
    """For fused gate / up SparseLinears (rows [G; U], no bias, on CUDA; e.g. StaticDecoder.gate_up): time nmcu's
    glu launch (every nmcu config) against the table's batch-1 product followed by fused.silu_mul, and record the
    faster under glu_key: ("sparse", cfg) = the glu launch with cfg, ("dense", None) = product + silu_mul. Run
    after autotune (the product's row is the baseline). Why a tuning of its own: a glu warp computes a gate row and
    an up row, so the plain product's best launch shape may leave its busiest warps a row pair heavier. The glu
    launch must win by `margin` (and again in `rounds` alternating timings): timed alone, the silu * up launch it
    saves costs more than it does in a decode step, where programmatic dependent launch overlaps its start. Even
    so, its int8 row did not predict the decode: the tuned glu launch ran 7B int8 1:4 decode steps 2.4% slower
    than product + silu_mul (gpu_decode_steps_ab.json), so silu_mul_product's auto mode takes it for 16-bit
    values only, and only 16-bit layers are tuned here (an int8 row would never be read)."""
    from sparselm.kernels.gpu import cuda_nm
    from sparselm.kernels.gpu.fused import silu_mul
    from sparselm.kernels.gpu.timing import time_graph
    from sparselm.runtime.sparse_linear import SparseLinear

    new: dict[Key, dict[str, Any]] = {}
    for layer in layers:
        if not (isinstance(layer, SparseLinear) and layer.values.is_cuda and layer.bias is None
                and layer.out_features % 2 == 0 and layer.values.dtype in (torch.float16, torch.bfloat16)
                ) or glu_key(layer, act_dtype) in new:
            continue
        plain = choice(key_of(layer.out_features, layer.in_features, 1, values_name(layer), act_dtype))
        p = packed(layer)
        sparse = [p] + [p.clone() for _ in range(copies - 1)]  # rotated, as autotune times the product
        x = torch.randn(1, layer.in_features, device=p.values.device, dtype=act_dtype)
        if plain["path"] == "sparse":
            base = [lambda q=q, c=plain["cfg"]: silu_mul(spmm(x, q, c)) for q in sparse]
        else:
            base = [lambda w=w: silu_mul(F.linear(x, w))
                    for w in [layer.dense_weight(act_dtype).clone() for _ in range(copies)]]
        ref = silu_mul(F.linear(x, layer.dense_weight(act_dtype)))
        glu = lambda c: [lambda q=q: cuda_nm.gemv(x, q, c, glu=True) for q in sparse]  # noqa: E731
        timed = []
        for cfg in tuning_candidates(1) if cuda_nm.available() else []:
            if cfg.kernel != "nmcu" or cfg.block_b != 1 or not p.supports(cfg):
                continue
            try:
                if agrees(cuda_nm.gemv(x, p, cfg, glu=True), ref):
                    timed.append((cfg, time_graph(glu(cfg))))
            except Exception:  # a config this GPU cannot launch is skipped, as in autotune
                continue
        best = choose(time_graph(base), timed, margin)
        best = confirm(best, lambda: time_graph(base), lambda c=best[1]: time_graph(glu(c)), margin, rounds)
        key = glu_key(layer, act_dtype)
        record(key, "sparse" if best[0] == "sparse" else "dense", best[1])
        new[key] = _TABLE[key]
    return new


def add_rmsnorm_product(x2d: torch.Tensor, layer, res: torch.Tensor, weight: torch.Tensor, eps: float):
    """(res + x W^T, RMSNorm(res + x W^T) * weight) in one launch, where the table's choice for the layer's shape at
    batch 1 is the nmcu kernel (its norm epilogue: the decode step's add_rmsnorm launch after o_proj and down_proj
    goes away); None elsewhere (the caller runs the product, then fused.add_rmsnorm)."""
    if (x2d.shape[0] != 1 or layer.bias is not None or x2d.dtype not in (torch.float16, torch.bfloat16)
            or weight.dtype != x2d.dtype or res.dtype != x2d.dtype or res.numel() != layer.out_features):
        return None
    ch = choice(key_of(layer.out_features, layer.in_features, 1, values_name(layer), x2d.dtype))
    cfg = ch["cfg"]
    if ch["path"] != "sparse" or cfg is None or cfg.kernel != "nmcu" or cfg.block_b != 1:
        return None
    from sparselm.kernels.gpu import cuda_nm

    return cuda_nm.gemv(x2d, packed(layer), cfg, norm=(res, weight, float(eps)))


def pipelined_configs() -> list[SpmmConfig]:
    """Persistent, software-pipelined batch-1 variants of the two best tiles of grp8i and vc32 (`persist` programs
    per SM, `num_stages` of the flat row-block loop; 2 x 3 and 4 x 2 bracket the iterations in flight per SM).
    Measured on an H200 (gpu_kernels_decode_vc32t.json, 30 batch-1 cases): never the fastest config, so they are
    not default candidates; `candidate_configs(1, pipelined=True)` adds them back for a sweep."""
    pipe = ((2, 3), (4, 2))
    return ([SpmmConfig(kernel="grp8", block_n=1, block_k=t, vec=4, num_warps=w, persist=ps, num_stages=st)
             for t, w in ((512, 2), (1024, 4)) for ps, st in pipe] +
            [SpmmConfig(kernel="vc32", block_n=1, block_k=t, num_warps=w, persist=ps, num_stages=st)
             for t, w in ((1024, 4), (512, 2)) for ps, st in pipe])


# grp8cu at batch 1: the launch shapes that won on the H200 (benchmarks/results/gpu_kernels_decode.json: 16 x 2 and
# 32 x 1 warps x blocks per SM, x in shared memory; through L1 close behind for int4), plus 48 and 64 warps per SM
# (the kernel is latency-bound: more rows in flight), each with 1-8 quads per load step
GRP8CU_B1 = ((16, 2, True), (32, 1, True), (16, 3, True), (32, 2, True), (16, 2, False))
GRP8CU_UNROLL = (1, 2, 4, 8)
# registers per thread by unroll (nvcc 13 -Xptxas -v, sm_90, the largest over value types, group-scale staging
# included): a block whose threads need more than the 64K registers of an SM fails to launch, so those pairs are
# never offered
_GRP8CU_REGS = {1: 40, 2: 48, 4: 48, 8: 80}


def grp8cu_configs(shapes=GRP8CU_B1, unrolls=GRP8CU_UNROLL) -> list[SpmmConfig]:
    """The batch-1 grp8cu candidates ([] where nvcc cannot build the kernel for this GPU)."""
    from sparselm.kernels.gpu import cuda_grp8

    if not cuda_grp8.available():
        return []
    return [SpmmConfig(kernel="grp8cu", vec=4, num_warps=w, persist=pb, smem=sm, unroll=u)
            for w, pb, sm in shapes for u in unrolls if 32 * w * _GRP8CU_REGS[u] <= 65536]


# d4cu (delta4_gemv.cu: 4-bit column steps, 2.68 bytes per fp16 nonzero at 75% against grp8cu's 3.26): after x was
# staged with 16-byte loads (session 22) it ties or beats grp8cu on the wide shapes and at 50% (1.03-1.07x on
# 4096 x 11008 / 14336, 14 of 35 batch-1 cases; gpu_kernels_decode_d4cu_stage.json), so batch 1 is a default
# candidate; batches 2-8 stay opt-in (SPARSELM_D4CU=1: 0.40-0.83x grp8cu). grp8cu's batch-1 launch shapes, and with x
# staged also 16 or 8 lanes per row (slots); batches 2-8 stage 4 K B bytes of x per block, so fewer, larger blocks;
# 1 or 2 chunks per load step
D4CU_BATCHED = ((16, 1, True), (32, 1, True), (16, 2, True))
# registers per thread by (padded batch, unroll) (nvcc 13 -Xptxas -v, sm_90, the largest over value types): a
# 32-warp block needs <= 64 (batch 8 with 2 chunks per step, 72, failed to launch on the H200: "too many resources")
D4CU_REGS = {(1, 1): 40, (1, 2): 63, (2, 1): 40, (2, 2): 55, (4, 1): 40, (4, 2): 64, (8, 1): 57, (8, 2): 72}


def d4cu_configs(batch: int = 1, unrolls=(1, 2)) -> list[SpmmConfig]:
    """The d4cu candidates for padded batch 1, 2, 4 or 8 ([] where nvcc cannot build the kernel for this GPU).
    Batches 2-8 only with SPARSELM_D4CU=1: no timing has them ahead of grp8cu, and each candidate costs autotune
    time."""
    from sparselm.kernels.gpu import cuda_delta4

    if batch > 1 and os.environ.get("SPARSELM_D4CU") != "1":
        return []
    if batch not in cuda_delta4.BATCHES or not cuda_delta4.available():
        return []
    shapes = GRP8CU_B1 if batch == 1 else D4CU_BATCHED
    out = [SpmmConfig(kernel="d4cu", num_warps=w, persist=pb, smem=sm, unroll=u, block_b=batch)
           for w, pb, sm in shapes for u in unrolls if 32 * w * D4CU_REGS[batch, u] <= 65536]
    if batch == 1:
        out += [SpmmConfig(kernel="d4cu", num_warps=w, persist=pb, unroll=u, slots=lanes)
                for lanes in cuda_delta4.LANES[1:] for w, pb, sm in shapes if sm for u in unrolls
                if 32 * w * D4CU_REGS[1, u] <= 65536]
    return out


# nmcu (nm_gemv.cu): N:M masks only (autotune's supports() check skips it on any other matrix), so it costs an
# unstructured model nothing. (warps per block, blocks per SM) x steps per load round; 2048 threads per SM or more get
# the 32-register build (cuda_nm.min_blocks). Batch 1 stages x as its 16-bit activations (x16): it won all 26 timed
# cases against float32 staging (gpu_kernels_nm_x16.json, session 23), so float32 staging is no longer offered.
# Batches 2 and 4 only with SPARSELM_UNTIMED=1 (the device scripts set it): their first timing won 1 of 4 cases, and
# batch 4 with 2 steps per round had not launched (a shared opt-in record, fixed since).
NMCU_B1 = ((16, 2), (32, 1), (32, 2), (16, 3), (8, 4), (16, 4))
# The pair table (1:4 masks, fp16 x; cuda_nm.supports skips it elsewhere). Timed with 1-2 steps per round first
# (gpu_kernels_nm_pairs.json): 1:4 int8 1.09-1.16x the 16-bit staging at K = 4096, 1.0x at K = 11008-14336, where a
# warp's row is 11-14 steps; 4 and 8 steps per round shorten those rows' chains of load rounds.
NMCU_PAIRS_UNROLLS = (1, 2, 4, 8)
NMCU_BATCHED = ((16, 1), (32, 1), (16, 2))


def nmcu_configs(batch: int = 1) -> list[SpmmConfig]:
    """The nmcu candidates for padded batch 1, 2 or 4 ([] where nvcc cannot build the kernel for this GPU)."""
    from sparselm.kernels.gpu import cuda_nm

    untimed = os.environ.get("SPARSELM_UNTIMED") == "1"
    if batch not in cuda_nm.BATCHES or (batch > 1 and not untimed) or not cuda_nm.available():
        return []
    if batch > 1:
        return [SpmmConfig(kernel="nmcu", num_warps=w, persist=pb, unroll=u, block_b=batch) for w, pb in NMCU_BATCHED
                for u in (1, 2)]
    return ([SpmmConfig(kernel="nmcu", num_warps=w, persist=pb, unroll=u, x16=True) for w, pb in NMCU_B1
             for u in cuda_nm.UNROLLS]
            + [SpmmConfig(kernel="nmcu", num_warps=w, persist=pb, unroll=u, pairs=True) for w, pb in NMCU_B1
               for u in NMCU_PAIRS_UNROLLS])


def candidate_configs(batch: int, pipelined: bool = False) -> list[SpmmConfig]:
    """The small grid the autotuner (and benchmarks/gpu_kernels.py) tries for one batch bucket: the bitmask
    kernel's measured-best tiles, plus the per-nonzero csr8, vc32 and grp8 kernels for batch <= 8 and vc32t
    (transposed x) for batch 2-16. A config whose
    kernel cannot run a given matrix (`PackedBitmask.supports`) is skipped by the callers."""
    if batch == 1:
        out = [SpmmConfig(block_n=bn, block_k=bk, block_b=1, num_warps=w, split_k=s)
               for bn, bk, w, s in ((2, 2048, 4, 1), (4, 1024, 4, 1), (2, 4096, 8, 1), (8, 512, 4, 1))]
        out += [SpmmConfig(kernel="csr8", block_n=bn, block_k=bk, slots=sl, vec=v, num_warps=w)
                for bn, bk, sl, v, w in ((1, 4096, 64, 8, 4), (2, 4096, 32, 8, 4), (1, 4096, 32, 8, 4),
                                         (1, 4096, 64, 8, 8), (1, 4096, 32, 1, 4), (2, 2048, 32, 1, 4))]
        # vc32 / grp8: one nonzero per lane (vec 1) won every measured shape; wider lanes spread a warp's x gather
        out += [SpmmConfig(kernel="vc32", block_n=bn, block_k=t, num_warps=w)
                for bn, t, w in ((1, 512, 2), (1, 1024, 4), (1, 2048, 8), (2, 512, 4))]
        # grp8 vec 4 = the interleaved layout (vector loads, one nonzero per lane per gather)
        out += [SpmmConfig(kernel="grp8", block_n=bn, block_k=t, vec=v, num_warps=w)
                for bn, t, v, w in ((1, 512, 1, 2), (1, 1024, 1, 4), (1, 256, 1, 1), (1, 512, 4, 2),
                                    (1, 1024, 4, 4), (2, 512, 4, 4), (1, 256, 4, 1), (1, 2048, 4, 8))]
        # grp8 vec 4 with the 32-bit column sum (col16): 15-16 SASS instructions per nonzero instead of 17-19
        # (offline sm_90 count, docs/notes/gpu.md; not yet timed); 1024 / 2 warps = 16 nonzeros per thread-step
        out += [SpmmConfig(kernel="grp8", block_n=1, block_k=t, vec=4, num_warps=w, col16=True)
                for t, w in ((512, 2), (1024, 4), (256, 1), (1024, 2))]
        # the lean form (unmasked whole steps + a masked tail, 32-bit column sum; K <= 32768, larger K is skipped
        # by autotune's error handling): 12.4-14 instructions per nonzero offline against col16's 15-16.5, after
        # the H200 profile found them under high issue pressure (benchmarks/results/gpu_profile_h200.json); timed
        # since (gpu_kernels_decode_grp8cu_first.json): the fastest Triton form on most batch-1 shapes
        out += [SpmmConfig(kernel="grp8", block_n=1, block_k=t, vec=4, num_warps=w, lean=True)
                for t, w in ((256, 1), (512, 1), (512, 2), (1024, 2), (1024, 4))]
        # the CUDA C++ kernel over the same layout (x in shared memory or through L1, one warp per row), where
        # nvcc can build it for this GPU: (warps per block, blocks per SM, smem, quads per load step)
        out += grp8cu_configs() + d4cu_configs() + nmcu_configs() + nmsp_configs(1)
        return out + (pipelined_configs() if pipelined else [])
    bb = bucket(batch)
    out = []
    if batch <= 8:
        out += [SpmmConfig(block_n=bn, block_k=bk, block_b=bb, num_warps=w)
                for bn, bk, w in ((2, 1024, 4), (4, 512, 4))]
        out += [SpmmConfig(kernel="csr8", block_n=bn, block_k=bk, block_b=bb, slots=sl, vec=v, num_warps=4)
                for bn, bk, sl, v in ((1, 2048, 16, 8), (1, 1024, 32, 8), (1, 2048, 16, 1))]
        out += [SpmmConfig(kernel=kn, block_n=bn, block_k=t, block_b=bb, num_warps=w)
                for kn in ("vc32", "grp8") for bn, t, w in ((1, 512, 4), (2, 256, 4), (1, 1024, 8))]
    out += d4cu_configs(bb) + nmcu_configs(bb)  # batches 2-8 (x transposed as float32 in shared memory)
    if batch <= 16:  # the CUDA kernel's batched form: x transposed in shared memory, one vector load per nonzero
        from sparselm.kernels.gpu import cuda_grp8

        if bb in cuda_grp8.BATCHES and cuda_grp8.available():
            out += [SpmmConfig(kernel="grp8cu", vec=4, block_b=bb, num_warps=w, persist=pb)
                    for w, pb in ((16, 1), (32, 1), (16, 2), (32, 2))]
    if batch <= 16:  # x transposed: one vector gather per nonzero for all batch rows (not measured yet)
        out += [SpmmConfig(kernel="vc32t", block_n=bn, block_k=t, block_b=bb, num_warps=w)
                for bn, t, w in ((1, 128, 4), (1, 256, 4), (2, 128, 4), (1, 256, 8), (1, 64, 2))]
    out += [SpmmConfig(block_n=bn, block_k=bk, block_b=max(16, bb), use_dot=True, num_warps=w)
            for bn, bk, w in ((16, 512, 4), (32, 256, 4), (16, 512, 8))]
    # tmma with x staged per block chunk beat bmma on 44 of the 46 batch 4-64 cases timed
    # (gpu_kernels_batched.json); both stay candidates, and dispatch keeps cuBLAS wherever neither beats it
    # nmsp (sparse tensor cores) serves only masks with <= 2 nonzeros per 4 columns; supports() skips the rest
    return out + bmma_configs(bb) + tmma_configs(bb) + nmsp_configs(bb)


# bmma (tensor cores over the mask + values): (warps per block, rows per block, splits along K). Timed on the H200
# (gpu_kernels_batched_bmma_*.json, one 16-row band per warp): 4-8 splits won, latency-bound at ~3.7 warps per
# scheduler (benchmarks/results/profile_bmma); 2 or 4 warps per band (rows per block < 16 x warps) add warps.
# Configs whose shared memory exceeds the GPU's for a matrix are skipped (PackedBitmask.supports).
BMMA_SHAPES = ((4, 64, 4), (4, 64, 8), (8, 128, 4), (8, 128, 8), (4, 32, 4), (4, 32, 8), (8, 64, 4), (8, 64, 8),
               (4, 16, 4), (8, 32, 4), (8, 32, 2))


def bmma_configs(bb: int, shapes=BMMA_SHAPES) -> list[SpmmConfig]:
    """The tensor-core kernel's candidates for padded batch bb (2-64; it pads to at least 8), [] where nvcc cannot
    build it for this GPU."""
    from sparselm.kernels.gpu import cuda_mma

    bp = max(8, bb)
    if bp not in cuda_mma.BATCHES or not cuda_mma.available():
        return []
    return [SpmmConfig(kernel="bmma", block_k=cuda_mma.CHUNK, block_b=bp, num_warps=w, block_n=bn, split_k=sk,
                       num_stages=4) for w, bn, sk in shapes]


def choose(dense_ms: float, timed: list[tuple[Any, float]], margin: float = 0.03) -> tuple[str, Any, float]:
    """("dense", None, ms) or ("sparse", cfg, ms): the fastest sparse config, if it beats cuBLAS by `margin`."""
    best: tuple[str, Any, float] = ("dense", None, dense_ms)
    for cfg, ms in timed:
        if ms < best[2] * (1.0 - margin if best[0] == "dense" else 1.0):
            best = ("sparse", cfg, ms)
    return best


def agrees(y: torch.Tensor, ref: torch.Tensor, tol: float = 2e-2) -> bool:
    """Whether a candidate's output matches the dense product of the same weights: relative Frobenius error below
    `tol` (fp16 / bf16 rounding of the two outputs stays near 1e-3; a wrong kernel is off by O(1)); NaN or inf
    fails, as does a shape mismatch."""
    if y.shape != ref.shape:
        return False
    diff = (y.float() - ref.float()).norm()
    err = (diff / ref.float().norm().clamp_min(1e-30)).item()
    return err < tol  # False for NaN


def confirm(best: tuple[str, Any, float], time_dense: Callable[[], float], time_sparse: Callable[[], float],
            margin: float = 0.03, rounds: int = 3) -> tuple[str, Any, float]:
    """Re-time a sparse winner head to head with cuBLAS (alternating, `rounds` each; medians) and keep it only if
    it still beats cuBLAS by `margin`. Why: the winner is the minimum over ~30 noisy candidate timings against
    one dense timing, so its time is biased low (the winner's curse); a 7B decode at 50% sparsity ran 0.97x dense
    end to end with kernels chosen that way at a 3% margin."""
    if best[0] != "sparse" or rounds <= 0:
        return best
    dense, sparse = [], []
    for _ in range(rounds):
        dense.append(time_dense())
        sparse.append(time_sparse())
    d, sp = sorted(dense)[rounds // 2], sorted(sparse)[rounds // 2]
    return ("sparse", best[1], sp) if sp < d * (1.0 - margin) else ("dense", None, d)


def autotune(model: torch.nn.Module, batches: tuple[int, ...] = (1,), act_dtype: torch.dtype = torch.float16,
             copies: int = 4, margin: float = 0.03, rounds: int = 3) -> dict[Key, dict[str, Any]]:
    """Measure, for each distinct SparseLinear shape on CUDA, every candidate config and cuBLAS dense; record
    the fastest per batch bucket (so dispatch is never slower than dense, as measured). A sparse kernel must
    beat cuBLAS by `margin` (relative): a tie within timing noise goes to cuBLAS (a 7B decode at 50% sparsity
    ran 0.97x dense when near-ties went to the kernels), and the winner must hold that margin again in `rounds`
    alternating head-to-head timings (`confirm`). Under torch.use_deterministic_algorithms(True) only deterministic
    kernels compete (`tuning_candidates`). Returns the new rows."""
    from sparselm.kernels.gpu.timing import time_graph
    from sparselm.runtime.sparse_linear import SparseLinear

    seen: dict[tuple, Any] = {}
    for mod in model.modules():
        if isinstance(mod, SparseLinear) and mod.values.is_cuda:
            seen.setdefault((mod.out_features, mod.in_features, values_name(mod)), mod)
    new: dict[Key, dict[str, Any]] = {}
    for (n, k, vdt), layer in seen.items():
        p = packed(layer)
        dense = [layer.dense_weight(act_dtype).clone() for _ in range(copies)]
        sparse = [p] + [p.clone() for _ in range(copies - 1)]  # same rotation as dense: no L2 advantage
        for b in batches:
            x = torch.randn(b, k, device=p.values.device, dtype=act_dtype)
            dense_ms = time_graph([lambda w=w: F.linear(x, w) for w in dense])
            ref = F.linear(x, dense[0])
            timed = []
            for cfg in tuning_candidates(b):
                if not p.supports(cfg):
                    continue
                try:
                    # a config must compute this layer's product before its time counts: a kernel that is
                    # fast and wrong on this GPU (a miscompile, a launch it cannot hold) is never chosen
                    if not agrees(spmm(x, p, cfg), ref):
                        warnings.warn(f"autotune: {cfg.key()} disagrees with the dense product on "
                                      f"{n}x{k} batch {b}; not a candidate", RuntimeWarning, stacklevel=2)
                        continue
                    timed.append((cfg, time_graph([lambda q=q: spmm(x, q, cfg) for q in sparse])))
                except Exception:  # a config the compiler rejects on this GPU is skipped, not fatal
                    continue
            best = choose(dense_ms, timed, margin)
            best = confirm(best, lambda: time_graph([lambda w=w: F.linear(x, w) for w in dense]),
                           lambda c=best[1]: time_graph([lambda q=q: spmm(x, q, c) for q in sparse]), margin, rounds)
            key = key_of(n, k, b, vdt, act_dtype)
            record(key, best[0], best[1])
            new[key] = _TABLE[key]
        # the tuned layer built every candidate's aux arrays; keep only what its chosen kernels read
        p.drop_aux([new[key_of(n, k, b, vdt, act_dtype)]["cfg"] for b in batches])
        del dense, sparse
    return new


# tmma (per-nonzero scatter into shared-memory tiles, then ldmatrix + mma): (warps per block, splits along K).
# First timing, x read through L1 (gpu_kernels_batched_tmma_first.json): 0.34-0.57x cuBLAS at batch 16. With x
# staged per block chunk (gpu_kernels_batched.json): 0.81-0.95x at batch 16, 75%; 0.92-1.13x at batch 8.
# A ring form (each warp streaming its entries through shared memory with cp.async), the answer to the profile
# (benchmarks/results/profile_tmma: latency-bound, 39% of DRAM bandwidth), was slower on every timed case
# (gpu_kernels_batched_tmma_ring.json: 18.8 vs 15.8 us at 4096^2, batch 16, 75%) and was removed.
# (8, 12) / (8, 16): more warps per SM at 4096 rows (32 row blocks x 11 / 16 splits) against more split-K partial
# sums; the profile read the 0.65 waves as latency at 16 warps per SM (docs/notes/gpu.md, session 19).
TMMA_SHAPES = ((4, 2), (4, 4), (4, 8), (8, 2), (8, 4), (8, 8), (4, 16), (8, 12), (8, 16))


def tmma_configs(bb: int, shapes=TMMA_SHAPES) -> list[SpmmConfig]:
    """The scatter-to-tile kernel's candidates for padded batch bb (2-64, padded to >= 8), [] where nvcc cannot
    build it for this GPU."""
    from sparselm.kernels.gpu import cuda_tile

    bp = max(8, bb)
    if bp not in cuda_tile.BATCHES or not cuda_tile.available():
        return []
    return [SpmmConfig(kernel="tmma", block_k=cuda_tile.CHUNK, block_b=bp, num_warps=w, split_k=sk)
            for w, sk in shapes]


# nmsp (mma.sp over N:M masks): (warps per block, splits along K, chunks in flight). A 4096-row layer is 256 bands,
# so 4-warp blocks need 4-8 splits to give the 132 SMs two blocks each; the tall layers (11008-22016 rows) fill them
# with 1-4. 2-8 splits add their sums in a thread-block cluster, 16-32 with atomics: the long rows of 1:4 matrices
# ran fastest that way (gpu_kernels_nmb_splits.json). 3 chunks in flight never won by more than noise
# (gpu_kernels_nmb_stages.json).
NMSP_SHAPES = tuple((w, s, d) for d in (1, 2) for w in (4, 8) for s in (1, 2, 4, 8)) + (
    (4, 16, 1), (4, 32, 1), (8, 16, 1), (8, 32, 1))


def nmsp_configs(bb: int, shapes=NMSP_SHAPES) -> list[SpmmConfig]:
    """The sparse-tensor-core kernel's candidates for padded batch bb (1-64, padded to >= 8), [] where nvcc cannot
    build it for this GPU. Only N:M-conforming matrices run them (PackedBitmask.supports)."""
    from sparselm.kernels.gpu import cuda_nmsp

    bp = max(8, bb)
    if bp not in cuda_nmsp.BATCHES or not cuda_nmsp.available():
        return []
    return [SpmmConfig(kernel="nmsp", block_k=cuda_nmsp.CHUNK, block_b=bp, num_warps=w, split_k=sk, num_stages=d)
            for w, sk, d in shapes]
