"""Host side of the GPU kernels: a load-time packed view of a CompressedTensor and the launchers.

The packed view derives, lazily and only for the kernels used, `chunk_ptr` (int32 (N, ceil(K/BLOCK_K))) for the
bitmask kernel, and `cols8` (uint8 (nnz,)) + `cp256` (int32 (N, ceil(K/256)+1)) for the per-nonzero csr8 kernel
(FORMAT.md "Auxiliary arrays"), `vc32` (int32 (nnz,): value bits | column << 16) + its row starts for the
vc32 / vc32t kernels, and the 32-slot groups of the grp8 kernels (`PackedBitmask.grp8`);
`PackedBitmask.nbytes(cfg)` counts what each kernel reads, for honest bandwidth.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field

import torch
import triton

from sparselm.compress.format import CompressedTensor, chunk_ptr, unpack_mask
from sparselm.kernels.gpu.bitmask_spmm import (SCALE_GROUP, SCALE_NONE, SCALE_ROW, bitmask_decompress_kernel,
                                               bitmask_spmm_kernel)
from sparselm.kernels.gpu.csr8_spmv import CSR8_CHUNK, csr8_spmv_kernel
from sparselm.kernels.gpu.grp8_spmv import GROUP, SPAN, grp8_spmv_kernel, grp8i_spmv_kernel
from sparselm.kernels.gpu.vc32_spmv import vc32_spmv_kernel, vc32t_spmm_kernel


# CUDA C++ kernels whose config rules live beside them (check_config)
_MODULES = {"grp8cu": "cuda_grp8", "d4cu": "cuda_delta4", "tmma": "cuda_tile", "nmcu": "cuda_nm", "nmsp": "cuda_nmsp"}


def _module(kernel: str):
    return importlib.import_module(f"sparselm.kernels.gpu.{_MODULES[kernel]}")


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _persist_launch(x: torch.Tensor, cfg: "SpmmConfig", longest: int) -> tuple[int, int]:
    """(n_progs, steps) of a persistent launch: cfg.persist programs per SM (per 4 "SMs" on the CPU / under the
    interpreter, so tests see both more and fewer programs than row blocks), and TILE steps per row block =
    the longest row's, at least 1 so that every row (also an empty one) is stored."""
    sms = _sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.is_cuda else 4
    return cfg.persist * sms, max(1, triton.cdiv(longest, cfg.block_k))


def _native(t: torch.Tensor) -> bool:
    """A real CUDA launch (inline PTX popc, fp16/bf16 tensor-core dots); False under the CPU interpreter."""
    return t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


@dataclass(frozen=True)
class SpmmConfig:
    """One launch configuration. block_k is also the chunk of `chunk_ptr` (multiple of 32 columns)."""

    block_n: int = 16  # rows per program: small, so that batch-1 GEMVs still launch >= 2 programs per SM
    block_k: int = 256  # columns per decoded tile = 8 mask words; 256 keeps chunk_ptr at 0.016 B/position
    block_b: int = 1  # batch rows per program (>= 16 and a power of two when use_dot)
    use_dot: bool = False  # tensor cores (tl.dot) instead of CUDA-core FMAs
    split_k: int = 1  # programs along K; > 1 accumulates with fp32 atomics
    num_warps: int = 4
    num_stages: int = 2
    # "bitmask" (per position, reads the mask) | "csr8" (per nonzero, batch <= 8) | "vc32" (per nonzero, one
    # 32-bit word per nonzero, fp16/bf16 values, K <= 65536, batch <= 8; block_k = words per row per step) |
    # "grp8" (per nonzero, 32-slot groups with a base column and 8-bit offsets, any values dtype, K <= 65536) |
    # "vc32t" (vc32's words for batch 2-16 with x transposed: one vector gather per nonzero for all batch rows) |
    # "grp8cu" (CUDA C++, grp8's interleaved layout, x in shared memory, K <= 32768: cuda_grp8.py; vec 4,
    # num_warps = warps per block, persist = blocks per SM, block_b = padded batch 1-16) | "d4cu" (CUDA C++, 4-bit
    # column steps, block_b 1-8, K <= 65536: cuda_delta4.py; grp8cu's fields, unroll 1-2, slots = lanes per row) |
    # "nmcu" (CUDA C++, N:M masks only, batch 1: cuda_nm.py; grp8cu's fields, unroll 1-4) |
    # "bmma" (CUDA C++, tensor cores over the canonical mask + values, batch 2-64: cuda_mma.py; block_b = padded
    # batch 8 / 16 / 32 / 64, num_warps = 4 or 8, block_n = rows per block (16 per band; the band's warps split
    # each chunk), split_k = blocks along K, block_k 128, num_stages 4) |
    # "tmma" (CUDA C++, tensor cores over the per-nonzero "tile16" layout, batch 2-64: cuda_tile.py; block_b as
    # bmma, num_warps = 4 or 8 bands of 16 rows per block, split_k, block_k 128) | "nmsp" (CUDA C++, sparse tensor
    # cores (mma.sp) for masks with <= 2 nonzeros per 4 columns, batch 1-64: cuda_nmsp.py; tmma's fields plus
    # num_stages = chunks in flight, 1-3)
    kernel: str = "bitmask"
    slots: int = 32  # csr8: nonzeros per (row, chunk) segment per step; block_k = chunks per program * 256
    # csr8 / vc32: segments (rows) padded to multiples of vec entries for vector loads; grp8: 4 = the interleaved
    # layout (quads of 4 groups stored lane-major; batch 1), 1 = plain groups
    vec: int = 1
    # batch-1 vc32 and grp8 vec 4 only: > 0 launches persist programs per SM (4 per "SM" under the interpreter),
    # each looping over row blocks in one flat loop that Triton software-pipelines with num_stages stages
    # (grp8_spmv.py grp8i_spmv_kernel says why); 0 = one program per row block, num_stages unused there
    persist: int = 0
    # grp8 vec 4 only: the x column as (base + offset) & 0xFFFF, a 32-bit sum (fewer SASS instructions per
    # nonzero offline, same results; grp8_spmv.py _grp8i_step); False = the original (base & 0xFFFF) + offset
    col16: bool = False
    # grp8 vec 4, block_n 1, persist 0, K <= 32768: whole steps without load masks plus one masked tail step,
    # column = sign-extended base + offset (grp8_spmv.py grp8i_spmv_kernel LEAN; fewer instructions per nonzero)
    lean: bool = False
    # grp8cu only: x staged in shared memory per block (False: gathered through L1, no staging)
    smem: bool = True
    # grp8cu batch 1 only: quads whose loads a lane issues before using any (1, 2, 4, 8): bytes in flight per warp
    unroll: int = 1
    # nmcu only: x staged as its 16-bit activations (half the shared-memory banks per gather) instead of float32
    x16: bool = False
    # nmcu only, 1:4 masks with fp16 x: x staged as a table of index pairs, half2 products (nm_pairs.cuh)
    pairs: bool = False

    def __post_init__(self):
        if not isinstance(self.smem, bool) or (not self.smem and self.kernel not in ("grp8cu", "d4cu")):
            raise ValueError(f"SpmmConfig.smem: a bool, False only for kernels 'grp8cu' / 'd4cu', got {self.smem!r}")
        for name in ("x16", "pairs"):  # nmcu's staging modes
            v = getattr(self, name)
            if v is not False and (v is not True or self.kernel != "nmcu"):
                raise ValueError(f"SpmmConfig.{name}: a bool, True only for kernel 'nmcu', got {v!r} for {self.kernel}")
        if self.kernel in _MODULES:  # kernels whose rules live beside them
            return _module(self.kernel).check_config(self)
        if self.kernel == "bmma":  # the tensor-core CUDA kernel (cuda_mma.py)
            from sparselm.kernels.gpu.cuda_mma import BANDS, BATCHES, CHUNK, STAGES, WARPS

            bands_ok = self.block_n % 16 == 0 and self.block_n // 16 in BANDS and (
                self.num_warps in WARPS and self.num_warps % (self.block_n // 16) == 0
                and self.num_warps * 16 // self.block_n in (1, 2, 4))
            if (self.block_b not in BATCHES or self.num_warps not in WARPS or self.block_k != CHUNK
                    or self.num_stages not in STAGES or not bands_ok
                    or not isinstance(self.split_k, int) or isinstance(self.split_k, bool) or self.split_k < 1
                    or self.unroll != 1 or not self.smem or self.persist):
                raise ValueError(f"SpmmConfig bmma: block_b (padded batch) in {BATCHES}, num_warps in {WARPS}, "
                                 f"block_n = 16 x bands with 1, 2 or 4 warps per band, "
                                 f"num_stages in {STAGES}, block_k {CHUNK}, split_k an int >= 1, no persist / "
                                 f"unroll / smem=False; got {self}")
            return
        if self.unroll != 1:
            raise ValueError(f"SpmmConfig.unroll: only for kernel 'grp8cu', got {self.unroll!r}")
        if not isinstance(self.lean, bool):
            raise ValueError(f"SpmmConfig.lean: a bool, got {self.lean!r}")
        if self.lean and not (self.kernel == "grp8" and self.vec == 4 and self.block_n == 1 and not self.persist
                              and self.block_k % 128 == 0):
            raise ValueError(f"SpmmConfig.lean: only for kernel 'grp8' with vec 4, block_n 1, persist 0 and "
                             f"block_k a multiple of 128, got {self}")
        if not isinstance(self.col16, bool):
            raise ValueError(f"SpmmConfig.col16: a bool, got {self.col16!r}")
        if self.col16 and not (self.kernel == "grp8" and self.vec == 4):
            raise ValueError(f"SpmmConfig.col16: only for kernel 'grp8' with vec 4, got kernel {self.kernel!r} "
                             f"vec {self.vec}")
        if not isinstance(self.persist, int) or isinstance(self.persist, bool) or self.persist < 0:
            raise ValueError(f"SpmmConfig.persist: programs per SM, an int >= 0 (0 = off), got {self.persist!r}")
        if self.persist:
            if not (self.kernel == "vc32" or (self.kernel == "grp8" and self.vec == 4)):
                raise ValueError(f"SpmmConfig.persist: only for kernel 'vc32' or 'grp8' with vec 4, got "
                                 f"kernel {self.kernel!r} vec {self.vec}")
            if self.block_b != 1:
                raise ValueError(f"SpmmConfig.persist: batch-1 kernels only (block_b 1), got {self.block_b}")
            if not isinstance(self.num_stages, int) or isinstance(self.num_stages, bool) or self.num_stages < 1:
                raise ValueError(f"SpmmConfig.num_stages: pipeline stages of the persistent loop, an int >= 1, "
                                 f"got {self.num_stages!r}")

    def key(self) -> str:
        if self.kernel in ("tmma", "nmsp"):
            return (f"{self.kernel}-w{self.num_warps}b{self.block_b}s{self.split_k}"
                    + (f"d{self.num_stages}" if self.kernel == "nmsp" else ""))
        if self.kernel == "bmma":
            return f"bmma-w{self.num_warps}n{self.block_n}b{self.block_b}s{self.split_k}"
        if self.kernel in ("grp8cu", "d4cu", "nmcu"):
            return (f"{self.kernel}-w{self.num_warps}p{self.persist}" + (f"b{self.block_b}" if self.block_b > 1 else "")
                    + ("" if self.smem else "-l1") + (f"-u{self.unroll}" if self.unroll > 1 else "")
                    + (f"-r{32 // self.slots}" if self.kernel == "d4cu" and self.slots != 32 else "")  # rows/warp
                    + ("-x16" if self.x16 else "") + ("-pairs" if self.pairs else ""))
        if self.kernel in ("vc32", "vc32t", "grp8"):
            # persistent configs only add a suffix, so existing keys (results files, dispatch tables) still match
            pers = f"-p{self.persist}s{self.num_stages}" if self.persist else ""
            pers += "-c16" if self.col16 else ""
            pers += "-lean" if self.lean else ""
            return f"{self.kernel}v{self.vec}-n{self.block_n}t{self.block_k}b{self.block_b}w{self.num_warps}{pers}"
        if self.kernel == "csr8":
            return f"csr8v{self.vec}-n{self.block_n}k{self.block_k}b{self.block_b}s{self.slots}w{self.num_warps}"
        return (f"n{self.block_n}k{self.block_k}b{self.block_b}{'d' if self.use_dot else 'f'}"
                f"s{self.split_k}w{self.num_warps}p{self.num_stages}")


@dataclass
class PackedBitmask:
    """Kernel-side tensors of one compressed matrix (all on one device)."""

    shape: tuple[int, int]
    words: torch.Tensor  # (N, ceil(K/32)) int32: the bitmask bytes read as little-endian words
    values: torch.Tensor
    row_ptr: torch.Tensor
    scales: torch.Tensor | None
    group_size: int
    scale_mode: int
    _cptr: dict = field(default_factory=dict)  # derived aux arrays: {block_k: chunk_ptr, "csr8": (cols8, cp256)}
    _ct: CompressedTensor | None = None
    _rowmax: dict = field(default_factory=dict)  # {aux key: most slots/words in a row} for persistent launches

    @classmethod
    def from_compressed(cls, ct: CompressedTensor) -> "PackedBitmask":
        n, k = ct.shape
        words = ct.bitmask.contiguous().view(torch.int32)
        if ct.scales is None:
            mode, gs = SCALE_NONE, k
        else:
            gs = ct.group_size or k
            mode = SCALE_ROW if gs >= k else SCALE_GROUP
        return cls(ct.shape, words, ct.values, ct.row_ptr, ct.scales, max(1, gs), mode, {}, ct)

    def clone(self) -> "PackedBitmask":
        """An independent copy in fresh memory (benchmarks rotate copies to stay out of the L2)."""
        cl = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
        # grp8cu's arrays hold None where a matrix has no per-group scales
        aux = {k: tuple(cl(t) for t in v) if isinstance(v, tuple) else cl(v) for k, v in self._cptr.items()}
        return PackedBitmask(self.shape, cl(self.words), cl(self.values), cl(self.row_ptr), cl(self.scales),
                             self.group_size, self.scale_mode, aux, self._ct, dict(self._rowmax))

    def chunk_ptr(self, block_k: int) -> torch.Tensor:
        if block_k not in self._cptr:
            ct = self._ct or CompressedTensor(self.shape, self.words.view(torch.uint8), self.values, self.row_ptr)
            self._cptr[block_k] = chunk_ptr(ct, block_k)
        return self._cptr[block_k]

    def csr8(self, vec: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, cols8, cp256) for the csr8 kernel (FORMAT.md "Auxiliary arrays"). vec = 1: the canonical
        values, cols8 = column % 256 per nonzero, cp256 segment starts; vec > 1: every (row, chunk) segment
        padded with zeros to a multiple of vec entries (values and cols8 copied), for vector loads."""
        key = ("csr8", vec)
        if key not in self._cptr:
            if vec == 1:
                n, k = self.shape
                ct = self._ct or CompressedTensor(self.shape, self.words.view(torch.uint8), self.values,
                                                  self.row_ptr)
                cols = unpack_mask(ct.bitmask, k).nonzero()[:, 1]  # row-major: the order of `values`
                cp = torch.cat([chunk_ptr(ct, CSR8_CHUNK), self.row_ptr[1:, None].to(torch.int32)], dim=1)
                self._cptr[key] = (self.values, cols.remainder(CSR8_CHUNK).to(torch.uint8), cp.contiguous())
            else:
                vals, cols8, cp = self.csr8(1)
                self._cptr[key] = _pad_segments((vals, cols8), cp, vec)
        return self._cptr[key]

    def row_max(self, key, ptr: torch.Tensor) -> int:
        """The longest row of an aux array with row starts `ptr` (entries), cached: a persistent launch needs it
        on the host, and reading it back at every call would sync the GPU and break CUDA-graph capture."""
        if key not in self._rowmax:
            self._rowmax[key] = int((ptr[1:] - ptr[:-1]).max()) if ptr.numel() > 1 else 0
        return self._rowmax[key]

    def aux_keys(self, cfg: "SpmmConfig") -> set:
        """The `_cptr` entries cfg's kernel reads."""
        if cfg.kernel == "csr8":
            return {("csr8", cfg.vec)}
        if cfg.kernel in ("vc32", "vc32t"):
            return {("vc32", cfg.vec)}
        if cfg.kernel == "grp8":
            return {("grp8", 4)} if cfg.vec == 4 else {"grp8"}
        if cfg.kernel in ("grp8cu", "d4cu"):  # their arrays hold all they read (the layouts they came from may go)
            return {(cfg.kernel,)}
        if cfg.kernel == "nmcu":  # its slots and index words, and the pattern they were built for
            return {("nmcu",), ("nmcu-pattern",)}
        if cfg.kernel == "bmma":  # the mask and values themselves, its chunk starts, its split-K workspace
            return {("bmma",), ("bmma-ws", cfg.block_b)}
        if cfg.kernel == "tmma":  # its tiled entries (values included) and the split-K workspace
            return {("tile16",), ("bmma-ws", cfg.block_b)}
        if cfg.kernel == "nmsp":  # its records (values included), their slot count (and beyond 8 splits, atomics)
            return {("nmsp",), ("nmsp-slots",)} | ({("bmma-ws", cfg.block_b)} if cfg.split_k > 8 else set())
        return {cfg.block_k}

    def drop_aux(self, keep: "list[SpmmConfig | None]") -> None:
        """Free the derived arrays no config in `keep` reads (None entries: cuBLAS, nothing needed)."""
        needed = set().union(*(self.aux_keys(c) for c in keep if c is not None)) if keep else set()
        for key in list(self._cptr):
            if key not in needed:
                del self._cptr[key]
                self._rowmax.pop(key, None)

    def supports(self, cfg: "SpmmConfig") -> bool:
        """Whether cfg's kernel can run on this matrix (vc32: fp16/bf16 values, K <= 65536)."""
        if cfg.kernel in ("vc32", "vc32t"):
            return self.values.dtype in (torch.float16, torch.bfloat16) and self.shape[1] <= 65536
        if cfg.kernel == "grp8":
            return self.shape[1] <= 65536
        if cfg.kernel == "grp8cu":
            from sparselm.kernels.gpu import cuda_grp8

            return cuda_grp8.supports(self, batch=cfg.block_b)
        if cfg.kernel == "d4cu":
            from sparselm.kernels.gpu import cuda_delta4
            return cuda_delta4.supports(self, batch=cfg.block_b, smem=cfg.smem)
        if cfg.kernel == "nmcu":  # N:M masks only
            return _module(cfg.kernel).supports(self, batch=cfg.block_b, x16=cfg.x16, pairs=cfg.pairs,
                                                unroll=cfg.unroll)
        if cfg.kernel == "bmma":
            from sparselm.kernels.gpu import cuda_mma

            return cuda_mma.supports(self, batch=cfg.block_b) and cuda_mma.fits(self, cfg)
        if cfg.kernel in ("tmma", "nmsp"):
            return _module(cfg.kernel).supports(self, batch=cfg.block_b)
        return True

    def grp8(self, interleave: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gvals, goffs, gbase, gptr) for the grp8 kernels (grp8_spmv.py; FORMAT.md "Auxiliary arrays").
        interleave 4: rows padded with empty groups to whole quads of 4 groups, and inside each quad the slot
        32j + l (group j, lane l) stored at 4l + j, so one lane's 4 nonzeros load as vectors (grp8i kernel).

        Groups are cut greedily per row: a group takes the next nonzeros while there are fewer than 32 and
        their column is < base + 256. All rows advance together, one group per round (rounds = the most
        groups in a row), so the cost is a few vectorized passes, not a Python loop over rows."""
        if interleave == 4:
            if ("grp8", 4) not in self._cptr:
                self._cptr[("grp8", 4)] = _interleave_quads(*self.grp8(1))
            return self._cptr[("grp8", 4)]
        if interleave != 1:
            raise ValueError(f"grp8: interleave must be 1 or 4, got {interleave}")
        if "grp8" not in self._cptr:
            n, k = self.shape
            if k > 65536:
                raise ValueError(f"grp8: 16-bit group bases need K <= 65536, got K={k}")
            dev = self.values.device
            ct = self._ct or CompressedTensor(self.shape, self.words.view(torch.uint8), self.values, self.row_ptr)
            cols = unpack_mask(ct.bitmask, k).nonzero()[:, 1].to(torch.int32)  # row-major: `values` order
            rp = self.row_ptr.to(torch.int64)
            cnt = rp[1:] - rp[:-1]
            width = int(cnt.max()) if n else 0
            big = torch.iinfo(torch.int32).max // 2  # past every real column: ends a group
            table = torch.full((n, width + GROUP), big, dtype=torch.int32, device=dev)
            row = torch.repeat_interleave(torch.arange(n, device=dev), cnt)
            table[row, torch.arange(cols.numel(), device=dev) - rp[:-1][row]] = cols
            lanes = torch.arange(GROUP, device=dev)
            pos = torch.zeros(n, dtype=torch.int64, device=dev)
            g_row, g_pos, g_len, g_base, g_round = [], [], [], [], []
            r = 0
            while True:
                live = (pos < cnt).nonzero()[:, 0]
                if live.numel() == 0:
                    break
                at = pos[live]
                win = table[live[:, None], at[:, None] + lanes]  # (live, 32) the next 32 columns
                ok = (win - win[:, :1] < SPAN) & (at[:, None] + lanes < cnt[live, None])
                length = ok.to(torch.int32).cumprod(1).sum(1).to(torch.int64)  # >= 1: the first always fits
                g_row.append(live), g_pos.append(at), g_len.append(length), g_base.append(win[:, 0])
                g_round.append(torch.full_like(live, r))
                pos[live] = at + length
                r += 1
            if g_row:
                grow, gpos, glen = torch.cat(g_row), torch.cat(g_pos), torch.cat(g_len)
                gbase, ground = torch.cat(g_base), torch.cat(g_round)
                order = torch.argsort(grow * (r + 1) + ground)  # row-major, then in column order
                grow, gpos, glen, gbase = grow[order], gpos[order], glen[order], gbase[order]
            else:
                grow = gpos = glen = torch.zeros(0, dtype=torch.int64, device=dev)
                gbase = torch.zeros(0, dtype=torch.int32, device=dev)
            n_grp = grow.numel()
            if n_grp * GROUP >= 2**31:
                raise ValueError(f"grp8: {n_grp} groups overflow the int32 slot index")
            gi = torch.repeat_interleave(torch.arange(n_grp, device=dev), glen)
            within = torch.arange(gi.numel(), device=dev) - (torch.cumsum(glen, 0) - glen)[gi]
            src = rp[:-1][grow[gi]] + gpos[gi] + within
            dst = gi * GROUP + within
            gvals = torch.zeros(n_grp * GROUP, dtype=self.values.dtype, device=dev)
            goffs = torch.zeros(n_grp * GROUP, dtype=torch.uint8, device=dev)
            gvals[dst] = self.values[src]
            goffs[dst] = (cols[src] - gbase[gi].to(torch.int32)).to(torch.uint8)
            gptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
            gptr[1:] = torch.cumsum(torch.bincount(grow, minlength=n), 0)
            base16 = torch.where(gbase >= 2**15, gbase - 2**16, gbase).to(torch.int16)  # the low 16 bits
            self._cptr["grp8"] = (gvals, goffs, base16.contiguous(), gptr.to(torch.int32))
        return self._cptr["grp8"]

    def vc32(self, vec: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(words, row starts) for the vc32 kernel (FORMAT.md "Auxiliary arrays"): words[i] = column << 16 |
        the 16 value bits, row-major like `values`; vec > 1: each row zero-padded to a multiple of vec words."""
        key = ("vc32", vec)
        if key not in self._cptr:
            n, k = self.shape
            if not self.supports(SpmmConfig(kernel="vc32")):
                raise ValueError(f"vc32: needs fp16/bf16 values and K <= 65536, got {self.values.dtype}, K={k}")
            ct = self._ct or CompressedTensor(self.shape, self.words.view(torch.uint8), self.values, self.row_ptr)
            cols = unpack_mask(ct.bitmask, k).nonzero()[:, 1]  # row-major: the order of `values`
            w = (cols << 16) | (self.values.view(torch.int16).to(torch.int64) & 0xFFFF)
            w = torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)  # the same 32 bits, as int32
            rp = self.row_ptr.to(torch.int64)
            if int(rp[-1]) >= 2**31:
                raise ValueError(f"vc32: {int(rp[-1])} words overflow the int32 row starts")
            if vec > 1:  # one segment per row
                w, seg = _pad_segments((w,), torch.stack([rp[:-1], rp[1:]], 1), vec)
                rp = torch.cat([seg[:, 0], seg[-1:, 1]])
            self._cptr[key] = (w.contiguous(), rp.to(torch.int32).contiguous())
        return self._cptr[key]

    def nbytes(self, block_k: int | None = None, kernel: str = "bitmask", vec: int = 1) -> int:
        """Bytes a kernel reads for W. bitmask: mask words + values (+ scales) + chunk_ptr for block_k;
        csr8: its (padded when vec > 1) values + cols8 + cp256 (+ scales); vc32: its words + row starts; grp8
        (vec 4: the interleaved layout): values + offsets + bases + group starts (+ scales); no mask read."""
        n, k = self.shape
        scale_bytes = self.scales.numel() * 4 if self.scales is not None else 0
        if kernel == "csr8":
            return scale_bytes + sum(t.numel() * t.element_size() for t in self.csr8(vec))
        if kernel in ("vc32", "vc32t"):
            return sum(t.numel() * t.element_size() for t in self.vc32(vec))
        if kernel == "grp8":
            return scale_bytes + sum(t.numel() * t.element_size() for t in self.grp8(4 if vec == 4 else 1))
        if kernel == "grp8cu":  # its own arrays (packed int4 values, per-group scales) + per-row scales
            from sparselm.kernels.gpu import cuda_grp8

            row_scales = scale_bytes if self.scale_mode == SCALE_ROW else 0
            return row_scales + sum(t.numel() * t.element_size() for t in cuda_grp8.aux(self) if t is not None)
        if kernel == "d4cu":  # its chunks (values, steps, bases), chunk starts and per-row scales
            from sparselm.kernels.gpu import cuda_delta4
            return cuda_delta4.nbytes(self)
        if kernel in ("nmcu", "nmsp"):  # their own arrays: slots' values and index words (+ per-row scales)
            return _module(kernel).nbytes(self)
        total = self.values.numel() * self.values.element_size() + scale_bytes
        total += self.words.numel() * 4
        if kernel == "tmma":  # its entries (values + positions, padded groups) and tile starts; no mask
            from sparselm.kernels.gpu import cuda_tile

            return sum(t.numel() * t.element_size() for t in cuda_tile.aux(self))
        if kernel == "bmma":  # chunk starts at 128 columns plus each row's end, and staging offsets
            return total + 4 * n * (2 * triton.cdiv(k, 128) + 1)
        if block_k is not None:
            total += 4 * n * triton.cdiv(k, block_k)
        return total


def spmm(x: torch.Tensor, p: PackedBitmask, cfg: SpmmConfig = SpmmConfig(),
         out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W.T for x (B, K) fp16/bf16/fp32 (contiguous rows), W in bitmask format; y (B, N) in x.dtype."""
    n, k = p.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x: expected (B, {k}), got {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    bsz = x.shape[0]
    if cfg.kernel == "csr8":
        return _spmm_csr8(x, p, cfg, out)
    if cfg.kernel in ("vc32", "vc32t"):
        return _spmm_vc32(x, p, cfg, out)
    if cfg.kernel == "grp8":
        return _spmm_grp8(x, p, cfg, out)
    if cfg.kernel in ("grp8cu", "d4cu", "nmcu"):
        return _module(cfg.kernel).gemv(x, p, cfg, out)
    if cfg.kernel == "bmma":
        from sparselm.kernels.gpu import cuda_mma

        return cuda_mma.spmm(x, p, cfg, out)
    if cfg.kernel in ("tmma", "nmsp"):
        return _module(cfg.kernel).spmm(x, p, cfg, out)
    cptr = p.chunk_ptr(cfg.block_k)
    n_chunks = cptr.shape[1]
    split = max(1, min(cfg.split_k, n_chunks))
    per_split = triton.cdiv(n_chunks, split)
    split = triton.cdiv(n_chunks, per_split)
    atomic = split > 1
    y = torch.zeros(bsz, n, device=x.device, dtype=torch.float32) if atomic else (
        out if out is not None else torch.empty(bsz, n, device=x.device, dtype=x.dtype))
    scales = p.scales if p.scales is not None else p.values
    n_groups = p.scales.shape[1] if p.scales is not None else 1
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(bsz, cfg.block_b), split)
    bitmask_spmm_kernel[grid](
        x, p.words, p.values, cptr, scales, y, n, k, bsz, p.words.shape[1], n_chunks, n_groups, p.group_size,
        x.stride(0), y.stride(0), per_split,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_B=cfg.block_b, SCALE_MODE=p.scale_mode,
        USE_DOT=cfg.use_dot, ATOMIC=atomic, NATIVE=_native(x), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if atomic:
        y = y.to(x.dtype) if out is None else out.copy_(y)
    return y


def _pad_segments(arrays: tuple[torch.Tensor, ...], cp: torch.Tensor, vec: int) -> tuple[torch.Tensor, ...]:
    """Copy each segment of `arrays` (segment (n, c) = entries cp[n, c] : cp[n, c+1], row-major) to a start that
    is a multiple of vec, zero-padded to a multiple of vec. Returns the padded arrays and their (N, C+1) starts."""
    n, c = cp.shape[0], cp.shape[1] - 1
    cnt = (cp[:, 1:] - cp[:, :-1]).long().flatten()  # (N*C,) segments in row-major order = the arrays' order
    padded = (cnt + vec - 1) // vec * vec
    pstart = torch.cumsum(padded, 0) - padded
    total = int(padded.sum())
    if total >= 2**31:
        raise ValueError(f"values: {total} padded entries overflow the int32 segment offsets")
    seg = torch.repeat_interleave(torch.arange(n * c, device=cp.device), cnt)
    dest = pstart[seg] + torch.arange(arrays[0].numel(), device=cp.device) - cp[:, :-1].flatten().long()[seg]
    out = []
    for a in arrays:
        pa = torch.zeros(total, dtype=a.dtype, device=a.device)
        pa[dest] = a
        out.append(pa)
    ends = (pstart + padded).view(n, c)[:, -1:] if c else torch.zeros(n, 1, dtype=torch.long, device=cp.device)
    pcp = torch.cat([pstart.view(n, c), ends], dim=1).to(torch.int32).contiguous()
    return (*out, pcp)


def _spmm_csr8(x: torch.Tensor, p: PackedBitmask, cfg: SpmmConfig, out: torch.Tensor | None) -> torch.Tensor:
    n, k = p.shape
    bsz = x.shape[0]
    vals, cols8, cp = p.csr8(cfg.vec)
    y = out if out is not None else torch.empty(bsz, n, device=x.device, dtype=x.dtype)
    scales = p.scales if p.scales is not None else p.values
    n_groups = p.scales.shape[1] if p.scales is not None else 1
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(bsz, cfg.block_b))
    csr8_spmv_kernel[grid](x, vals, cols8, cp, scales, y, n, k, bsz, cp.shape[1], n_groups, p.group_size,
                           x.stride(0), y.stride(0), BLOCK_N=cfg.block_n, CHUNKS=max(1, cfg.block_k // CSR8_CHUNK),
                           SLOTS=cfg.slots, BLOCK_B=cfg.block_b, SCALE_MODE=p.scale_mode, VEC=cfg.vec,
                           num_warps=cfg.num_warps)
    return y


def _spmm_vc32(x: torch.Tensor, p: PackedBitmask, cfg: SpmmConfig, out: torch.Tensor | None) -> torch.Tensor:
    n, _ = p.shape
    bsz = x.shape[0]
    words, rp = p.vc32(cfg.vec)
    y = out if out is not None else torch.empty(bsz, n, device=x.device, dtype=x.dtype)
    if cfg.kernel == "vc32t":  # x transposed once per call (B x K is at most 16 x 64k: tiny next to W)
        if bsz > cfg.block_b:
            raise ValueError(f"vc32t: batch {bsz} > block_b {cfg.block_b}")
        vc32t_spmm_kernel[(triton.cdiv(n, cfg.block_n),)](
            x.t().contiguous(), words, rp, y, n, bsz, y.stride(0), BLOCK_N=cfg.block_n, TILE=cfg.block_k,
            BLOCK_B=cfg.block_b, BF16=p.values.dtype == torch.bfloat16, num_warps=cfg.num_warps)
        return y
    if cfg.persist:
        if bsz != 1:
            raise ValueError(f"vc32 persist: batch 1 only, got batch {bsz}")
        n_progs, steps = _persist_launch(x, cfg, p.row_max(("vc32", cfg.vec), rp))
        vc32_spmv_kernel[(n_progs,)](x, words, rp, y, n, 1, x.stride(0), y.stride(0), n_progs, steps,
                                     BLOCK_N=cfg.block_n, TILE=cfg.block_k, BLOCK_B=1, VEC=cfg.vec,
                                     BF16=p.values.dtype == torch.bfloat16, PERSIST=1, STAGES=cfg.num_stages,
                                     num_warps=cfg.num_warps)
        return y
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(bsz, cfg.block_b))
    vc32_spmv_kernel[grid](x, words, rp, y, n, bsz, x.stride(0), y.stride(0), 1, 1, BLOCK_N=cfg.block_n,
                           TILE=cfg.block_k, BLOCK_B=cfg.block_b, VEC=cfg.vec,
                           BF16=p.values.dtype == torch.bfloat16, num_warps=cfg.num_warps)
    return y


def _interleave_quads(gvals: torch.Tensor, goffs: torch.Tensor, gbase: torch.Tensor, gptr: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grp8 arrays with every row padded to a multiple of 4 groups and each quad's slots lane-major."""
    dev = gvals.device
    ng = (gptr[1:] - gptr[:-1]).long()
    nq4 = (ng + 3) // 4 * 4
    p4 = torch.zeros(ng.numel() + 1, dtype=torch.long, device=dev)
    p4[1:] = torch.cumsum(nq4, 0)
    row = torch.repeat_interleave(torch.arange(ng.numel(), device=dev), ng)
    new_g = p4[:-1][row] + torch.arange(row.numel(), device=dev) - gptr[:-1].long()[row]  # old group -> new
    total = int(p4[-1])
    base4 = torch.zeros(total, dtype=gbase.dtype, device=dev)
    base4[new_g] = gbase
    slots = (new_g[:, None] * GROUP + torch.arange(GROUP, device=dev)).flatten()
    out = []
    for a in (gvals, goffs):
        logical = torch.zeros(total * GROUP, dtype=a.dtype, device=dev)
        logical[slots] = a
        out.append(logical.view(-1, 4, GROUP).transpose(1, 2).contiguous().view(-1))  # [quad, lane, group]
    return out[0], out[1], base4, p4.to(torch.int32)


def _spmm_grp8(x: torch.Tensor, p: PackedBitmask, cfg: SpmmConfig, out: torch.Tensor | None) -> torch.Tensor:
    n, _ = p.shape
    bsz = x.shape[0]
    if cfg.vec == 4:  # the interleaved layout: batch 1 only
        if bsz != 1 or cfg.block_k % 128:
            raise ValueError("grp8 vec 4: batch 1 and block_k a multiple of 128 only")
        gvals, goffs, gbase, gptr = p.grp8(4)
        y = out if out is not None else torch.empty(1, n, device=x.device, dtype=x.dtype)
        scales = p.scales if p.scales is not None else gvals
        n_groups = p.scales.shape[1] if p.scales is not None else 1
        if cfg.lean and p.shape[1] > 32768:
            raise ValueError(f"grp8 lean: K <= 32768 only (the int16 base is used sign-extended), got K {p.shape[1]}")
        if cfg.persist:  # gptr counts groups: 32 slots each
            n_progs, steps = _persist_launch(x, cfg, GROUP * p.row_max(("grp8", 4), gptr))
            grid = n_progs
        else:  # one program per row block; n_progs and steps unused (1s: no extra specializations)
            grid, n_progs, steps = triton.cdiv(n, cfg.block_n), 1, 1
        grp8i_spmv_kernel[(grid,)](
            x, gvals, goffs, gbase, gptr, scales, y, n, n_groups, p.group_size, x.stride(0), n_progs, steps,
            BLOCK_N=cfg.block_n, TILE=cfg.block_k, SCALE_MODE=p.scale_mode, PERSIST=1 if cfg.persist else 0,
            STAGES=cfg.num_stages if cfg.persist else 2, COL16=1 if cfg.col16 else 0, LEAN=int(cfg.lean),
            num_warps=cfg.num_warps)
        return y
    gvals, goffs, gbase, gptr = p.grp8()
    if cfg.block_k % GROUP:
        raise ValueError(f"grp8: block_k (slots per step) must be a multiple of {GROUP}, got {cfg.block_k}")
    y = out if out is not None else torch.empty(bsz, n, device=x.device, dtype=x.dtype)
    scales = p.scales if p.scales is not None else gvals
    n_groups = p.scales.shape[1] if p.scales is not None else 1
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(bsz, cfg.block_b))
    grp8_spmv_kernel[grid](x, gvals, goffs, gbase, gptr, scales, y, n, bsz, n_groups, p.group_size,
                           x.stride(0), y.stride(0), BLOCK_N=cfg.block_n, TILE=cfg.block_k, BLOCK_B=cfg.block_b,
                           VEC=cfg.vec, SCALE_MODE=p.scale_mode, num_warps=cfg.num_warps)
    return y


def decompress_gpu(p: PackedBitmask, dtype: torch.dtype, block_n: int = 32, block_k: int = 256) -> torch.Tensor:
    """Dense W (N, K) in `dtype`, decoded tile by tile on the tensors' device (the prefill path)."""
    n, k = p.shape
    w = torch.empty(n, k, device=p.values.device, dtype=dtype)
    cptr = p.chunk_ptr(block_k)
    scales = p.scales if p.scales is not None else p.values
    n_groups = p.scales.shape[1] if p.scales is not None else 1
    grid = (triton.cdiv(n, block_n), cptr.shape[1])
    bitmask_decompress_kernel[grid](p.words, p.values, cptr, scales, w, n, k, p.words.shape[1], cptr.shape[1],
                                    n_groups, p.group_size, BLOCK_N=block_n, BLOCK_K=block_k,
                                    SCALE_MODE=p.scale_mode, NATIVE=_native(w))
    return w
