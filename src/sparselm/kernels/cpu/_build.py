"""Just-in-time build of the CPU sparse kernels: one C++ file -> a cached shared library, loaded with ctypes.

Why ctypes + gcc rather than ``torch.utils.cpp_extension``: the kernel is plain C over raw pointers, so it needs no
torch headers; ``g++ -O3`` on the one file takes ~2 s, whereas a cpp_extension build compiles pybind11 and the
torch headers (~30-60 s per CI run).  The library is cached under ``$SPARSELM_CACHE`` (default
``~/.cache/sparselm``), keyed by a hash of the source, the flags and the compiler's version, so a CI run pays the
compile once.  Per-ISA code is selected by ``#pragma GCC target`` inside the file, not by ``-march``: one library
holds every path, and the run-time dispatcher picks the one this CPU supports.

No compiler, or a failed build -> one warning, ``load()`` returns None, and the Python fallback is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

_SOURCE = Path(__file__).with_name("sparse_matmul.cpp")
# -O3: the kernels rely on full unrolling of the small (rows x batch) register tiles.  -fno-math-errno: no libm
# calls inside loops.  No -march: ISA-specific code is enabled per function by pragmas, so the library also
# loads on a CPU without AVX-512.
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-pthread"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_build_error: str | None = None


def cache_dir() -> Path:
    """Directory of built libraries: ``$SPARSELM_CACHE/cpu-kernels`` or ``~/.cache/sparselm/cpu-kernels``."""
    root = os.environ.get("SPARSELM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparselm")
    return Path(root) / "cpu-kernels"


def _sources() -> bytes:
    """The kernel source and its headers, the cache key's main part."""
    parts = [_SOURCE] + sorted(_SOURCE.parent.glob("spmm_*.h"))
    return b"".join(p.name.encode() + p.read_bytes() for p in parts)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(cxx: str, flags: list[str], out: Path) -> None:
    """Compile into a temporary file beside ``out`` and rename: concurrent processes never see half a library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *flags, "-o", tmp, str(_SOURCE)], check=True, capture_output=True, text=True,
                       timeout=300)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.sl_spmm.restype = ctypes.c_int
    lib.sl_spmm.argtypes = [ctypes.c_int, ctypes.c_int, vp, i64, i64, vp, i64, vp, i64, vp, i64, i64, vp, i64, i64,
                            vp, i64, ctypes.c_int, ctypes.c_int]
    lib.sl_check.restype = i64
    lib.sl_check.argtypes = [vp, i64, vp, i64, i64]
    lib.sl_isa_flags.restype = ctypes.c_int
    lib.sl_has_openmp.restype = ctypes.c_int
    return lib


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    errors = []
    for extra in ([],):  # threads: pthreads in spmm_pool.h, no OpenMP runtime needed
        flags = _BASE_FLAGS + extra
        key = hashlib.sha256(_sources() + repr((flags, version)).encode()).hexdigest()[:16]
        out = cache_dir() / f"sparse_matmul-{key}.so"
        try:
            if not out.exists():
                _compile(cxx, flags, out)
            return _declare(ctypes.CDLL(str(out)))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            errors.append(detail.strip()[-400:])
    raise RuntimeError("; ".join(errors))


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first use; None (after one warning) when it cannot be built."""
    global _lib, _tried, _build_error
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            if os.environ.get("SPARSELM_CPU_NO_JIT"):
                _build_error = "disabled by SPARSELM_CPU_NO_JIT"
            else:
                try:
                    _lib = _build()
                except RuntimeError as e:
                    _build_error = str(e)
            if _lib is None:
                warnings.warn(f"sparselm CPU kernels unavailable ({_build_error}); using the slow torch fallback",
                              RuntimeWarning, stacklevel=3)
            _tried = True
    return _lib


def build_error() -> str | None:
    """Why the library could not be built (None when it loaded or was not tried yet)."""
    return _build_error
