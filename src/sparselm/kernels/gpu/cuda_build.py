"""Build, cache and load the project's CUDA C++ kernels (`*.cu` beside this file) as shared libraries.

    lib = library(source, "device")   # nvcc for the current GPU's architecture
    lib = library(source, "host")     # g++ -x c++ of the same file: its host emulation entry points (CPU tests)

Each build is cached by a hash of the source, the command and the compiler version under
$SPARSELM_CACHE/cuda-kernels (as the CPU kernels are), loaded with ctypes; kernels launch on torch's current stream,
so CUDA-graph capture records them like any other kernel. A missing compiler or a failed build raises RuntimeError
with the reason; callers (cuda_grp8.py, cuda_mma.py) turn that into "not available" and autotune never offers them.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch

from sparselm.kernels.gpu import pdl


def cache_dir() -> Path:
    root = os.environ.get("SPARSELM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparselm")
    return Path(root) / "cuda-kernels"


def nvcc() -> str | None:
    """$CUDA_HOME / $CUDA_PATH, PATH, /usr/local/cuda, then the toolkit torch's extension builder would use."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cands = ([os.path.join(home, "bin", "nvcc")] if home else []) + [shutil.which("nvcc") or "",
                                                                     "/usr/local/cuda/bin/nvcc"]
    found = next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)
    if found is None:
        try:
            from torch.utils.cpp_extension import CUDA_HOME
        except Exception:  # an install without the extension builder: nothing more to try
            return None
        c = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else ""
        found = c if c and os.path.isfile(c) and os.access(c, os.X_OK) else None
    return found


def _compile(cmd: list[str], source: Path, out: Path) -> None:
    """Build into a temporary file beside `out`, then rename: concurrent processes never load half a library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run(cmd + ["-o", tmp, str(source)], check=True, capture_output=True, text=True, timeout=900)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def command(kind: str) -> list[str]:
    """The compiler command (without output and source) for "device" (the current GPU) or "host"."""
    if kind == "device":
        exe = nvcc()
        if exe is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
        major, minor = torch.cuda.get_device_capability()
        return [exe, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]
    if kind == "host":
        cxx = next((shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)),
                   None)
        if cxx is None:
            raise RuntimeError("no C++ compiler found (set CXX or install g++)")
        return [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-x", "c++"]
    raise ValueError(f"kind: 'device' or 'host', got {kind!r}")


def library(source: Path, kind: str) -> ctypes.CDLL:
    """The shared library of `source` for `kind`, built once per content hash (RuntimeError when it cannot be)."""
    if kind == "device" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    cmd = command(kind)
    version = subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    # the source and the headers it may include (every *.cuh beside it): a header change rebuilds too
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.cuh")))
    key = hashlib.sha256(source.read_bytes() + headers + repr((cmd[1:], version)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{kind}-{key}.so"
    if not out.exists():
        try:
            _compile(cmd, source, out)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {(e.stderr or '').strip()[-600:]}") from None
    return ctypes.CDLL(str(out))


class Library:
    """One kernel file's built libraries, built and loaded at most once per kind per process.

        lib = Library(source, declare)    # declare(cdll, kind): set the entry points' argtypes / restype
        lib.load("device" | "host")       # the CDLL, or None when it cannot be built (the reason: build_error)
    """

    def __init__(self, source: Path, declare: Callable[[ctypes.CDLL, str], None]):
        self.source, self._declare = source, declare
        self._lock = threading.Lock()
        self._libs: dict[str, ctypes.CDLL | None] = {}
        self._errors: dict[str, str] = {}

    def load(self, kind: str = "device") -> ctypes.CDLL | None:
        if kind not in ("device", "host"):
            raise ValueError(f"kind: 'device' or 'host', got {kind!r}")
        with self._lock:
            if kind not in self._libs:
                try:
                    lib = library(self.source, kind)
                    self._declare(lib, kind)
                    self._libs[kind] = lib
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                    self._libs[kind], self._errors[kind] = None, str(e)
        return self._libs[kind]

    def available(self) -> bool:
        return self.load("device") is not None

    def build_error(self, kind: str = "device") -> str | None:
        return self._errors.get(kind)

    def prepare(self, kernel: str, x: torch.Tensor, p, out: torch.Tensor | None,
                rows: int | None = None) -> tuple[ctypes.CDLL, torch.Tensor]:
        """(the device library, y) for one launch of `kernel` on x (B, K) and matrix p (N, K): y is `out` when
        given (it must be a contiguous (B, N) tensor of x's dtype; N = `rows` when the launch writes another
        count), else a new one. Clear errors when the library cannot be built or x and the matrix are not on one
        CUDA device: the checks every CUDA kernel makes."""
        n, bsz = rows or p.shape[0], x.shape[0]
        if out is not None and (out.shape != (bsz, n) or out.dtype != x.dtype or not out.is_contiguous()):
            raise ValueError(f"{kernel}: out must be a contiguous ({bsz}, {n}) {x.dtype} tensor, got "
                             f"{tuple(out.shape)} {out.dtype}")
        lib = self.load("device")
        if lib is None:
            raise RuntimeError(f"{kernel}: the CUDA kernel is unavailable ({self.build_error()})")
        if not (x.is_cuda and p.values.device == x.device):
            raise ValueError(f"{kernel}: x and the matrix must be on the same CUDA device, got {x.device} and "
                             f"{p.values.device}")
        pdl.sync(lib)  # this thread's launch mode: programmatic dependent launch inside a decode step's capture
        return lib, out if out is not None else torch.empty(bsz, n, device=x.device, dtype=x.dtype)
