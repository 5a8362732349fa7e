"""A minimal packer / unpacker of the sparselm-bitmask v1 layout, for kernel tests and benchmarks.

The on-disk format and its validation belong to ``sparselm.compress``; this module only builds the raw tensors the
kernels consume (same layout: see ``src/sparselm/compress/FORMAT.md``), so the kernels can be tested on their own.

    bitmask[n, j] bit b  <->  W[n, 8*j + b] != 0       (uint8, (N, 4*ceil(K/32)))
    values               =   W[W != 0] in row-major order
    row_ptr[n+1]         =   row_ptr[n] + popcount(bitmask[n])
    int8:  q = clamp(round(W / s), -127, 127),  s[n, g] = max|W[n, g*gs:(g+1)*gs]| / 127
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VALUE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


@dataclass
class PackedWeight:
    """Raw tensors of one packed (N, K) weight, ready for ``sparse_matmul``."""

    bitmask: torch.Tensor
    values: torch.Tensor
    row_ptr: torch.Tensor
    N: int
    K: int
    scales: torch.Tensor | None = None
    group_size: int | None = None

    def kwargs(self) -> dict:
        """Keyword arguments of ``sparse_matmul`` after ``x``."""
        return dict(bitmask=self.bitmask, values=self.values, row_ptr=self.row_ptr, N=self.N, K=self.K,
                    scales=self.scales, group_size=self.group_size)

    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (mask + values + row_ptr + scales)."""
        extra = self.scales.numel() * 4 if self.scales is not None else 0
        vals = self.values.numel() * self.values.element_size()
        return self.bitmask.numel() + vals + self.row_ptr.numel() * 8 + extra


def pack_bits(nonzero: torch.Tensor) -> torch.Tensor:
    """(N, K) bool -> (N, 4*ceil(K/32)) uint8, LSB-first bits, rows zero-padded to a multiple of 32 columns."""
    N, K = nonzero.shape
    kpad = 32 * ((K + 31) // 32)
    bits = torch.zeros(N, kpad, dtype=torch.uint8)
    bits[:, :K] = nonzero.to(torch.uint8)
    weights = (2 ** torch.arange(8, dtype=torch.int32)).to(torch.uint8)  # bit b of each byte
    return (bits.view(N, kpad // 8, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(bitmask: torch.Tensor, K: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: (N, 4*words) uint8 -> (N, K) bool."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (N, bytes, 8)
    return bits.reshape(bitmask.shape[0], -1)[:, :K].bool()


def quantize_int8(W: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-(row, group) int8: returns q (N, K) int8 and scales (N, ceil(K/group_size)) fp32."""
    N, K = W.shape
    G = (K + group_size - 1) // group_size
    Wp = torch.zeros(N, G * group_size, dtype=torch.float32)
    Wp[:, :K] = W.float()
    amax = Wp.view(N, G, group_size).abs().amax(-1)  # (N, G)
    scales = amax / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(Wp.view(N, G, group_size) / safe.unsqueeze(-1)).clamp(-127, 127).view(N, -1)[:, :K]
    return q.to(torch.int8), scales.float()


def pack_dense(W: torch.Tensor, values: str = "fp32", group_size: int | None = None) -> PackedWeight:
    """Pack a dense (N, K) weight; zeros of W become clear mask bits.  ``values``: fp32 | bf16 | fp16 | int8."""
    if values not in VALUE_DTYPES:
        raise ValueError(f"values: unknown dtype {values!r}; expected one of {sorted(VALUE_DTYPES)}")
    W = W.detach().cpu()
    N, K = W.shape
    nonzero = W != 0
    row_ptr = torch.zeros(N + 1, dtype=torch.int64)
    row_ptr[1:] = nonzero.sum(1).cumsum(0)
    scales = None
    if values == "int8":
        group_size = K if group_size is None else group_size
        q, scales = quantize_int8(W, max(group_size, 1))
        vals = q[nonzero]
    else:
        vals = W[nonzero].to(VALUE_DTYPES[values])
        group_size = None
    return PackedWeight(pack_bits(nonzero), vals.contiguous(), row_ptr, N, K, scales, group_size)


def unpack_dense(p: PackedWeight) -> torch.Tensor:
    """The fp32 (N, K) weight the packed tensors represent (int8 values dequantized)."""
    nonzero = unpack_bits(p.bitmask, p.K)
    W = torch.zeros(p.N, p.K, dtype=torch.float32)
    W[nonzero] = p.values.float()
    if p.scales is not None:
        cols = torch.arange(p.K) // p.group_size
        W = W * p.scales[:, cols]
    return W


def random_sparse(N: int, K: int, sparsity: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random normal (N, K) fp32 weight with a uniformly random mask keeping round((1-sparsity)*N*K) entries."""
    W = torch.randn(N, K, generator=generator)
    keep = round((1.0 - sparsity) * N * K)
    order = torch.randperm(N * K, generator=generator)
    mask = torch.zeros(N * K, dtype=torch.bool)
    mask[order[:keep]] = True
    return W * mask.view(N, K)
