"""The sparselm-bitmask v1 format of one sparse matrix (spec: FORMAT.md beside this file).

W (N, K) is stored as a bitmask (N, 4*ceil(K/32)) uint8, the nonzeros row-major in `values`, and `row_ptr`
(N+1) int64 prefix sums of per-row nonzero counts; int8 values add `scales` (N, ceil(K/group_size)) with
W[n, c] = values[i] * scales[n, c // group_size]  (symmetric, round-to-nearest, qmax 127).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

FORMAT_NAME = "sparselm-bitmask"
FORMAT_VERSION = 1
QMAX_INT8 = 127  # symmetric int8: [-127, 127], so that -x and x quantize alike
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int8": torch.int8,
}
_DTYPE_NAMES = {v: k for k, v in VALUE_DTYPES.items()}
_BYTE_BITS = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8)  # LSB first


class CompressedFormatError(ValueError):
    """A compressed tensor or file breaks the sparselm-bitmask spec; the message names the tensor."""


@dataclass
class CompressedTensor:
    """One (N, K) matrix in sparselm-bitmask v1. All tensors live on one device."""

    shape: tuple[int, int]
    bitmask: torch.Tensor  # (N, 4*ceil(K/32)) uint8
    values: torch.Tensor  # (nnz,) float16 | bfloat16 | float32 | int8
    row_ptr: torch.Tensor  # (N+1,) int64
    scales: torch.Tensor | None = None  # (N, ceil(K/group_size)) float32, int8 values only
    group_size: int | None = None  # columns per scale; K = per row

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        n, k = self.shape
        return 1.0 - self.nnz / max(1, n * k)

    @property
    def values_dtype(self) -> str:
        return _DTYPE_NAMES[self.values.dtype]

    def nbytes(self) -> int:
        """Bytes of the canonical format (what a kernel must read at least once)."""
        ts = [self.bitmask, self.values, self.row_ptr] + ([self.scales] if self.scales is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "shape": list(self.shape),
            "values_dtype": self.values_dtype,
            "group_size": self.group_size,
            "nnz": self.nnz,
            "sparsity": round(self.sparsity, 6),
        }

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}bitmask": self.bitmask, f"{prefix}values": self.values, f"{prefix}row_ptr": self.row_ptr}
        if self.scales is not None:
            out[f"{prefix}scales"] = self.scales
        return out

    def to(self, device: torch.device | str) -> "CompressedTensor":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CompressedTensor(self.shape, mv(self.bitmask), mv(self.values), mv(self.row_ptr),
                                mv(self.scales), self.group_size)


def words_per_row(k: int) -> int:
    """32-bit mask words per row: each row is padded to a multiple of 32 columns."""
    return (k + 31) // 32


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """(N, K) bool -> (N, 4*ceil(K/32)) uint8, bit b of byte j <-> column 8*j+b (LSB first), padding 0."""
    n, k = mask.shape
    kp = 32 * words_per_row(k)
    padded = torch.zeros(n, kp, dtype=torch.uint8, device=mask.device)
    padded[:, :k] = mask.to(torch.uint8)
    bits = padded.view(n, kp // 8, 8) * _BYTE_BITS.to(mask.device)  # (N, bytes, 8)
    return bits.sum(dim=2, dtype=torch.int32).to(torch.uint8)


def unpack_mask(bitmask: torch.Tensor, k: int) -> torch.Tensor:
    """(N, 4*ceil(K/32)) uint8 -> (N, K) bool; inverse of pack_mask."""
    n = bitmask.shape[0]
    bits = (bitmask.unsqueeze(2) & _BYTE_BITS.to(bitmask.device)) != 0  # (N, bytes, 8)
    return bits.reshape(n, -1)[:, :k]


def quantize_int8(w: torch.Tensor, mask: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-(row, group) int8: s = max|w|/127, q = clamp(round(w/s), -127, 127). Returns (q, scales)."""
    n, k = w.shape
    g = math.ceil(k / group_size)
    wf = torch.zeros(n, g * group_size, dtype=torch.float32, device=w.device)
    wf[:, :k] = torch.where(mask, w.float(), 0.0)
    amax = wf.view(n, g, group_size).abs().amax(dim=2)  # (N, G)
    scales = amax / QMAX_INT8
    safe = torch.where(scales > 0, scales, 1.0).repeat_interleave(group_size, dim=1)[:, :k]
    q = torch.clamp(torch.round(wf[:, :k] / safe), -QMAX_INT8, QMAX_INT8).to(torch.int8)
    return q, scales.contiguous()


def compress_tensor(w: torch.Tensor, values_dtype: str | torch.dtype | None = None,
                    group_size: int | None = None) -> CompressedTensor:
    """Compress a 2-D weight W (N, K); the mask is W != 0 on the source tensor.

    values_dtype: "float16" | "bfloat16" | "float32" | "int8" (or the torch dtype); None keeps W's dtype.
    group_size: int8 only, columns per scale (None = K, one scale per row).
    """
    if w.dim() != 2:
        raise CompressedFormatError(f"weight: expected a 2-D tensor, got shape {tuple(w.shape)}")
    n, k = w.shape
    name = values_dtype if isinstance(values_dtype, str) or values_dtype is None else _DTYPE_NAMES.get(values_dtype)
    name = name or _DTYPE_NAMES.get(w.dtype, "float32")
    if name not in VALUE_DTYPES:
        raise CompressedFormatError(f"values_dtype: {values_dtype!r} is not one of {sorted(VALUE_DTYPES)}")
    mask = w != 0
    counts = mask.sum(dim=1, dtype=torch.int64)
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=w.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    scales = None
    if name == "int8":
        group_size = k if group_size is None else int(group_size)
        if group_size <= 0:
            raise CompressedFormatError(f"group_size: must be > 0, got {group_size}")
        q, scales = quantize_int8(w, mask, group_size)
        values = q[mask]  # boolean indexing walks row-major: row order, increasing column
    else:
        if group_size is not None:
            raise CompressedFormatError("group_size: only meaningful for int8 values")
        values = w[mask].to(VALUE_DTYPES[name])
    return CompressedTensor((n, k), pack_mask(mask), values.contiguous(), row_ptr, scales, group_size)


def decompress(ct: CompressedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense W (N, K) from its compressed form; int8 is dequantized (float32 unless dtype is given)."""
    n, k = ct.shape
    mask = unpack_mask(ct.bitmask, k)
    out_dtype = dtype or (torch.float32 if ct.values.dtype == torch.int8 else ct.values.dtype)
    w = torch.zeros(n, k, dtype=torch.float32 if ct.scales is not None else out_dtype, device=ct.values.device)
    if ct.scales is not None:
        gs = ct.group_size or k
        col_scale = ct.scales.repeat_interleave(gs, dim=1)[:, :k]  # (N, K)
        w[mask] = ct.values.float() * col_scale[mask]
    else:
        w[mask] = ct.values.to(out_dtype)
    return w.to(out_dtype)


def _popcount_rows(bitmask: torch.Tensor) -> torch.Tensor:
    bits = (bitmask.unsqueeze(2) & _BYTE_BITS.to(bitmask.device)) != 0
    return bits.sum(dim=(1, 2), dtype=torch.int64)


def validate(ct: CompressedTensor, name: str = "tensor") -> None:
    """Check every invariant of FORMAT.md; raise CompressedFormatError naming the bad tensor."""
    if len(ct.shape) != 2 or min(ct.shape) < 0:
        raise CompressedFormatError(f"{name}: bad shape {ct.shape}")
    n, k = ct.shape
    nbytes = 4 * words_per_row(k)
    if ct.bitmask.dtype != torch.uint8 or tuple(ct.bitmask.shape) != (n, nbytes):
        raise CompressedFormatError(
            f"{name}.bitmask: expected uint8 ({n}, {nbytes}), got {ct.bitmask.dtype} {tuple(ct.bitmask.shape)}")
    if ct.row_ptr.dtype != torch.int64 or tuple(ct.row_ptr.shape) != (n + 1,):
        raise CompressedFormatError(
            f"{name}.row_ptr: expected int64 ({n + 1},), got {ct.row_ptr.dtype} {tuple(ct.row_ptr.shape)}")
    if ct.values.dim() != 1 or ct.values.dtype not in _DTYPE_NAMES:
        raise CompressedFormatError(f"{name}.values: expected 1-D of {sorted(VALUE_DTYPES)}, got "
                                    f"{ct.values.dtype} {tuple(ct.values.shape)}")
    if k % 32 and n:
        pad = unpack_mask(ct.bitmask, 32 * words_per_row(k))[:, k:]
        if bool(pad.any()):
            raise CompressedFormatError(f"{name}.bitmask: padding bits beyond column {k} are set")
    counts = _popcount_rows(ct.bitmask)
    if int(ct.row_ptr[0]) != 0 or not torch.equal(ct.row_ptr[1:] - ct.row_ptr[:-1], counts):
        raise CompressedFormatError(f"{name}.row_ptr: disagrees with the bitmask popcounts")
    if int(ct.row_ptr[-1]) != ct.values.numel():
        raise CompressedFormatError(f"{name}.values: has {ct.values.numel()} entries, the bitmask has "
                                    f"{int(ct.row_ptr[-1])} nonzeros (truncated?)")
    if ct.values.dtype == torch.int8:
        gs = ct.group_size
        if gs is None or gs <= 0 or ct.scales is None:
            raise CompressedFormatError(f"{name}.scales: int8 values need scales and a positive group_size")
        g = math.ceil(k / gs)
        if ct.scales.dtype != torch.float32 or tuple(ct.scales.shape) != (n, g):
            raise CompressedFormatError(f"{name}.scales: expected float32 ({n}, {g}), got "
                                        f"{ct.scales.dtype} {tuple(ct.scales.shape)}")
        if not bool(torch.isfinite(ct.scales).all()):
            raise CompressedFormatError(f"{name}.scales: holds non-finite values")
    elif ct.scales is not None:
        raise CompressedFormatError(f"{name}.scales: present but values are {ct.values.dtype}, not int8")


def check_metadata(meta: dict[str, Any], name: str) -> None:
    """Reject an unknown format name or version before any tensor is read."""
    if meta.get("format") != FORMAT_NAME:
        raise CompressedFormatError(f"{name}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise CompressedFormatError(f"{name}: unknown {FORMAT_NAME} version {meta.get('version')!r} "
                                    f"(this reader knows {FORMAT_VERSION})")
    if meta.get("values_dtype") not in VALUE_DTYPES:
        raise CompressedFormatError(f"{name}: values_dtype {meta.get('values_dtype')!r} unknown")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CompressedFormatError(f"{name}: shape {shape!r} is not [N, K]")


def concat_rows(cts: list[CompressedTensor]) -> CompressedTensor:
    """The compressed form of cat([W_1; W_2; ...], dim=0): rows are independent in this format, so the
    bitmasks, values and scales concatenate and row_ptr is shifted (fuses q/k/v or gate/up projections)."""
    k = cts[0].shape[1]
    if any(c.shape[1] != k or c.values.dtype != cts[0].values.dtype or c.group_size != cts[0].group_size
           for c in cts):
        raise CompressedFormatError("concat_rows: tensors differ in K, values dtype or group_size")
    offsets = torch.cumsum(torch.tensor([0] + [c.nnz for c in cts[:-1]]), 0).tolist()
    row_ptr = torch.cat([cts[0].row_ptr[:1]] + [c.row_ptr[1:] + off for c, off in zip(cts, offsets)])
    scales = torch.cat([c.scales for c in cts]) if cts[0].scales is not None else None
    return CompressedTensor((sum(c.shape[0] for c in cts), k), torch.cat([c.bitmask for c in cts]),
                            torch.cat([c.values for c in cts]), row_ptr, scales, cts[0].group_size)


def chunk_ptr(ct: CompressedTensor, chunk: int) -> torch.Tensor:
    """Aux array (FORMAT.md): int32 (N, ceil(K/chunk)) index in values of each (row, column-chunk)'s first nonzero."""
    if chunk % 32:
        raise ValueError(f"chunk: must be a multiple of 32 columns, got {chunk}")
    n, k = ct.shape
    if ct.nnz >= 2**31:
        raise CompressedFormatError(f"values: {ct.nnz} nonzeros do not fit the int32 chunk offsets")
    words = ct.bitmask.view(n, -1, 4)  # (N, W, 4) bytes
    bits = (words.unsqueeze(3) & _BYTE_BITS.to(words.device)) != 0
    per_word = bits.sum(dim=(2, 3), dtype=torch.int64)  # (N, W)
    wpc = chunk // 32
    nchunks = (k + chunk - 1) // chunk
    padw = nchunks * wpc - per_word.shape[1]
    per_word = torch.nn.functional.pad(per_word, (0, padw))
    per_chunk = per_word.view(n, nchunks, wpc).sum(dim=2)
    starts = torch.cumsum(per_chunk, dim=1) - per_chunk + ct.row_ptr[:-1, None]
    return starts.to(torch.int32).contiguous()
