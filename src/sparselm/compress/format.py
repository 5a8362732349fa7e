"""The sparselm-bitmask v1 format of one sparse matrix (spec: FORMAT.md beside this file).

W (N, K) is stored as a bitmask (N, 4*ceil(K/32)) uint8, the nonzeros row-major in `values`, and `row_ptr`
(N+1) int64 prefix sums of per-row nonzero counts; int8 values add `scales` (N, ceil(K/group_size)) with
W[n, c] = values[i] * scales[n, c // group_size]  (symmetric, round-to-nearest, qmax 127).
int4 values (bits = 4) are the same with qmax 7: in memory one int8 code in [-7, 7] per nonzero (so every int8
kernel runs them unchanged), on disk two codes per byte (`pack_int4`: low nibble first), half the value bytes.
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
QMAX = {8: QMAX_INT8, 4: 7}  # symmetric int4: [-7, 7] (the code -8 is never written, and rejected on load)
VALUE_NAMES = (*VALUE_DTYPES, "int4")  # what `values_dtype` may say
INT4_GROUP_SIZE = 128  # int4's default columns per scale: one scale per row loses too much at 4 bits
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
    bits: int = 8  # int8 values only: 4 = int4 codes in [-7, 7] (packed two per byte on disk)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        n, k = self.shape
        return 1.0 - self.nnz / max(1, n * k)

    @property
    def values_dtype(self) -> str:
        name = _DTYPE_NAMES[self.values.dtype]
        return "int4" if name == "int8" and self.bits == 4 else name

    def nbytes(self) -> int:
        """Bytes of the canonical format (what a kernel must read at least once; int4: packed values)."""
        ts = [self.bitmask, self.row_ptr] + ([self.scales] if self.scales is not None else [])
        vbytes = (self.nnz + 1) // 2 if self.bits == 4 else self.nnz * self.values.element_size()
        return vbytes + sum(t.numel() * t.element_size() for t in ts)

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
                                mv(self.scales), self.group_size, self.bits)


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


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-7, 7] (1-D) -> uint8 bytes, two codes per byte, the first in the low nibble (zero pad)."""
    c = codes.to(torch.int16) & 0xF
    if c.numel() % 2:
        c = torch.cat([c, c.new_zeros(1)])
    return (c[0::2] | (c[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, nnz: int, name: str = "values") -> torch.Tensor:
    """Inverse of pack_int4: the first `nnz` codes as int8; a wrong length or the code -8 is a format error."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (nnz + 1) // 2:
        raise CompressedFormatError(f"{name}: int4 values need {(nnz + 1) // 2} uint8 bytes for {nnz} nonzeros, got "
                                    f"{packed.dtype} {tuple(packed.shape)} (truncated?)")
    b = packed.to(torch.int16)
    codes = torch.stack([b & 0xF, b >> 4], dim=1).flatten()[:nnz]
    codes = torch.where(codes >= 8, codes - 16, codes)
    if bool((codes == -8).any()):
        raise CompressedFormatError(f"{name}: int4 code -8 (outside the symmetric [-7, 7])")
    return codes.to(torch.int8)


def quantize_int8(w: torch.Tensor, mask: torch.Tensor, group_size: int,
                  qmax: int = QMAX_INT8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-(row, group): s = max|w|/qmax, q = clamp(round(w/s), -qmax, qmax) (qmax 127: int8, 7:
    int4 codes). Returns (q int8, scales float32)."""
    n, k = w.shape
    g = math.ceil(k / group_size)
    wf = torch.zeros(n, g * group_size, dtype=torch.float32, device=w.device)
    wf[:, :k] = torch.where(mask, w.float(), 0.0)
    amax = wf.view(n, g, group_size).abs().amax(dim=2)  # (N, G)
    scales = amax / qmax
    safe = torch.where(scales > 0, scales, 1.0).repeat_interleave(group_size, dim=1)[:, :k]
    q = torch.clamp(torch.round(wf[:, :k] / safe), -qmax, qmax).to(torch.int8)
    return q, scales.contiguous()


def compress_tensor(w: torch.Tensor, values_dtype: str | torch.dtype | None = None,
                    group_size: int | None = None) -> CompressedTensor:
    """Compress a 2-D weight W (N, K); the mask is W != 0 on the source tensor.

    values_dtype: "float16" | "bfloat16" | "float32" | "int8" | "int4" (or the torch dtype); None keeps W's dtype.
    group_size: int8 / int4 only, columns per scale (None: int8 K, one scale per row; int4 128, capped at K).
    """
    if w.dim() != 2:
        raise CompressedFormatError(f"weight: expected a 2-D tensor, got shape {tuple(w.shape)}")
    n, k = w.shape
    name = values_dtype if isinstance(values_dtype, str) or values_dtype is None else _DTYPE_NAMES.get(values_dtype)
    name = name or _DTYPE_NAMES.get(w.dtype, "float32")
    if name not in VALUE_NAMES:
        raise CompressedFormatError(f"values_dtype: {values_dtype!r} is not one of {sorted(VALUE_NAMES)}")
    mask = w != 0
    counts = mask.sum(dim=1, dtype=torch.int64)
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=w.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    scales = None
    bits = 4 if name == "int4" else 8
    if name in ("int8", "int4"):
        if group_size is None:
            group_size = k if name == "int8" else max(1, min(INT4_GROUP_SIZE, k))
        group_size = int(group_size)
        if group_size <= 0:
            raise CompressedFormatError(f"group_size: must be > 0, got {group_size}")
        q, scales = quantize_int8(w, mask, group_size, QMAX[bits])
        values = q[mask]  # boolean indexing walks row-major: row order, increasing column
    else:
        if group_size is not None:
            raise CompressedFormatError("group_size: only meaningful for int8 / int4 values")
        values = w[mask].to(VALUE_DTYPES[name])
    return CompressedTensor((n, k), pack_mask(mask), values.contiguous(), row_ptr, scales, group_size, bits)


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
        if ct.bits == 4 and ct.nnz and int(ct.values.to(torch.int16).abs().max()) > QMAX[4]:  # int16: abs(-128)
            raise CompressedFormatError(f"{name}.values: int4 codes must lie in [-7, 7]")
    elif ct.scales is not None:
        raise CompressedFormatError(f"{name}.scales: present but values are {ct.values.dtype}, not int8")
    if ct.bits not in (8, 4) or (ct.bits == 4 and ct.values.dtype != torch.int8):
        raise CompressedFormatError(f"{name}: bits {ct.bits} (4 only with int8-held int4 codes)")


def check_metadata(meta: dict[str, Any], name: str) -> None:
    """Reject an unknown format name or version before any tensor is read."""
    if meta.get("format") != FORMAT_NAME:
        raise CompressedFormatError(f"{name}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise CompressedFormatError(f"{name}: unknown {FORMAT_NAME} version {meta.get('version')!r} "
                                    f"(this reader knows {FORMAT_VERSION})")
    if meta.get("values_dtype") not in VALUE_NAMES:
        raise CompressedFormatError(f"{name}: values_dtype {meta.get('values_dtype')!r} unknown")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CompressedFormatError(f"{name}: shape {shape!r} is not [N, K]")


def concat_rows(cts: list[CompressedTensor]) -> CompressedTensor:
    """The compressed form of cat([W_1; W_2; ...], dim=0): rows are independent in this format, so the
    bitmasks, values and scales concatenate and row_ptr is shifted (fuses q/k/v or gate/up projections)."""
    k = cts[0].shape[1]
    if any(c.shape[1] != k or c.values_dtype != cts[0].values_dtype or c.group_size != cts[0].group_size
           for c in cts):
        raise CompressedFormatError("concat_rows: tensors differ in K, values dtype or group_size")
    offsets = torch.cumsum(torch.tensor([0] + [c.nnz for c in cts[:-1]]), 0).tolist()
    row_ptr = torch.cat([cts[0].row_ptr[:1]] + [c.row_ptr[1:] + off for c, off in zip(cts, offsets)])
    scales = torch.cat([c.scales for c in cts]) if cts[0].scales is not None else None
    return CompressedTensor((sum(c.shape[0] for c in cts), k), torch.cat([c.bitmask for c in cts]),
                            torch.cat([c.values for c in cts]), row_ptr, scales, cts[0].group_size, cts[0].bits)


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
