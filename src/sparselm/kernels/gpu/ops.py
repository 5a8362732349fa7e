"""Host side of the bitmask kernels: a load-time packed view of a CompressedTensor and the launchers.

The packed view adds only `chunk_ptr` (int32 (N, ceil(K/BLOCK_K)), FORMAT.md "Auxiliary arrays") to the canonical
tensors; `PackedBitmask.nbytes(block_k)` counts it with them for honest bandwidth numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import triton

from sparselm.compress.format import CompressedTensor, chunk_ptr
from sparselm.kernels.gpu.bitmask_spmm import (SCALE_GROUP, SCALE_NONE, SCALE_ROW, bitmask_decompress_kernel,
                                               bitmask_spmm_kernel)


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

    def key(self) -> str:
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
    _cptr: dict[int, torch.Tensor] = field(default_factory=dict)
    _ct: CompressedTensor | None = None

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
        cl = lambda t: None if t is None else t.clone()  # noqa: E731
        return PackedBitmask(self.shape, cl(self.words), cl(self.values), cl(self.row_ptr), cl(self.scales),
                             self.group_size, self.scale_mode, {k: v.clone() for k, v in self._cptr.items()},
                             self._ct)

    def chunk_ptr(self, block_k: int) -> torch.Tensor:
        if block_k not in self._cptr:
            ct = self._ct or CompressedTensor(self.shape, self.words.view(torch.uint8), self.values, self.row_ptr)
            self._cptr[block_k] = chunk_ptr(ct, block_k)
        return self._cptr[block_k]

    def nbytes(self, block_k: int | None = None) -> int:
        """Bytes a kernel reads for W: mask words + values (+ scales) + chunk_ptr for block_k."""
        ts = [self.words, self.values] + ([self.scales] if self.scales is not None else [])
        total = sum(t.numel() * t.element_size() for t in ts)
        if block_k is not None:
            n, k = self.shape
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
