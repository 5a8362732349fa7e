"""Reader (and a writer, for tests) of CTranslate2's ``model.bin``: a flat file of named tensors.

Layout (little-endian; binary versions 2..6, the current one is 6):

    u32 binary_version
    str spec_name            # e.g. "WhisperSpec"           (str = u16 length incl. NUL, bytes, NUL)
    u32 spec_revision
    u32 n_variables
    n_variables x { str name; u8 rank; u32 dims[rank]; u8 dtype_id; u32 n_bytes; bytes data }
    u32 n_aliases            # binary_version >= 3
    n_aliases x { str alias; str target_name }

dtype ids follow CTranslate2's ``DataType`` enum: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16. Before binary version 4 the byte after the dims is the item size and the u32 counts items.
Scalars (rank 0) carry model flags such as ``decoder/num_heads``. An int8/int16 weight ``W`` comes with
``W_scale`` and dequantizes as ``W / scale`` (per output row for int8, one scale for int16).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["CT2Model", "read_ct2", "write_ct2", "dequantized"]

# Oldest layout this reader understands (v1 has no spec name) and newest it was written against.
_MIN_VERSION, _MAX_VERSION = 2, 6

_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)
# Pre-v4 files store the item size instead of a dtype id (CTranslate2's legacy rule).
_LEGACY_ITEM_SIZE = {4: torch.float32, 2: torch.int16, 1: torch.int8}


@dataclass
class CT2Model:
    """The parsed content of one ``model.bin``: named tensors plus aliases (name -> target name)."""

    spec_name: str
    spec_revision: int
    binary_version: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """The tensor named ``name``, following an alias; KeyError naming the variable if absent."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise KeyError(f"CTranslate2 model has no variable {name!r}")
        return self.variables[target]

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        """A rank-0 flag (e.g. ``encoder/num_heads``) as a Python int."""
        value = self.get(name)
        if value.dim() != 0:
            raise ValueError(f"CTranslate2 variable {name!r} is not a scalar (shape {tuple(value.shape)})")
        return int(value.item())


class _Cursor:
    """Sequential little-endian reads over one bytes buffer, with one-line errors naming the offset."""

    def __init__(self, buf: memoryview, source: str) -> None:
        self.buf, self.pos, self.source = buf, 0, source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.source}: truncated CTranslate2 file (needed {n} bytes at offset {self.pos})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")  # length counts the trailing NUL
        raw = bytes(self.take(length))
        return raw.rstrip(b"\0").decode("utf-8")


def _read_bytes(paths: Sequence[Path]) -> bytes:
    """Concatenate the file parts (a model.bin may ship split in several packages)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"CTranslate2 model file not found: {missing[0]}")
    if len(paths) == 1:
        return Path(paths[0]).read_bytes()
    return b"".join(Path(p).read_bytes() for p in paths)


def read_ct2(path: str | Path | Sequence[str | Path]) -> CT2Model:
    """Parse ``model.bin`` (or the ordered parts of one) into named CPU tensors, dtypes as stored."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    cur = _Cursor(memoryview(_read_bytes(paths)), str(paths[0]))
    (version,) = cur.unpack("I")
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        raise ValueError(f"{paths[0]}: unsupported CTranslate2 binary version {version} "
                         f"(this reader handles {_MIN_VERSION}..{_MAX_VERSION})")
    model = CT2Model(spec_name=cur.string(), spec_revision=cur.unpack("I")[0], binary_version=version)
    (n_vars,) = cur.unpack("I")
    for _ in range(n_vars):
        name = cur.string()
        (rank,) = cur.unpack("B")
        shape = cur.unpack(f"{rank}I") if rank else ()
        (code,) = cur.unpack("B")
        (count,) = cur.unpack("I")
        if version >= 4:
            if code >= len(_DTYPES):
                raise ValueError(f"{paths[0]}: variable {name!r} has unknown dtype id {code}")
            dtype, n_bytes = _DTYPES[code], count
        else:
            dtype, n_bytes = _LEGACY_ITEM_SIZE[code], count * code
        data = cur.take(n_bytes)
        # bytearray copy: each tensor owns its memory, so the (large) file buffer is freed after parsing.
        tensor = torch.frombuffer(bytearray(data), dtype=dtype) if n_bytes else torch.empty(0, dtype=dtype)
        model.variables[name] = tensor.reshape(shape)
    if version >= 3:
        (n_alias,) = cur.unpack("I")
        for _ in range(n_alias):
            alias = cur.string()
            model.aliases[alias] = cur.string()
    if cur.pos != len(cur.buf):
        raise ValueError(f"{paths[0]}: {len(cur.buf) - cur.pos} trailing bytes after the CTranslate2 payload")
    return model


def dequantized(model: CT2Model, name: str) -> torch.Tensor:
    """Float32 value of a variable; int8/int16 weights are divided by their saved ``<name>_scale``."""
    value = model.get(name)
    if value.is_floating_point():
        return value.float()
    scale_name = name + "_scale"
    if not model.has(scale_name):
        raise ValueError(f"CTranslate2 variable {name!r} is {value.dtype} but {scale_name!r} is missing")
    scale = model.get(scale_name).float()
    # int8: one scale per output row (model_spec.py: scale = 127 / amax(|W|, axis=1)); int16: one scale.
    scale = scale.reshape(-1, *([1] * (value.dim() - 1))) if scale.numel() > 1 else scale
    return value.float() / scale


def write_ct2(
    path: str | Path,
    variables: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
    spec_name: str = "WhisperSpec",
    spec_revision: int = 3,
) -> None:
    """Serialize tensors in the binary-version-6 layout (sorted by name, as CTranslate2 writes them).

    Used by tests to build synthetic CT2 files; written to a temporary name and renamed so a failure
    leaves nothing half-written.
    """

    def string(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    chunks = [struct.pack("<I", _MAX_VERSION), string(spec_name), struct.pack("<II", spec_revision, len(variables))]
    for name in sorted(variables):
        t = variables[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise ValueError(f"variable {name!r}: dtype {t.dtype} has no CTranslate2 id")
        # bfloat16 has no numpy dtype: view its bits as int16 to get the bytes.
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        chunks += [string(name), struct.pack(f"<B{t.dim()}I", t.dim(), *t.shape),
                   struct.pack("<BI", _DTYPES.index(t.dtype), len(raw)), raw]
    aliases = aliases or {}
    chunks.append(struct.pack("<I", len(aliases)))
    for alias, target in sorted(aliases.items()):
        chunks += [string(alias), string(target)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(chunks))
    tmp.replace(path)
