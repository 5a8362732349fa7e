"""The CUDA C++ tensor-core kernel over the per-nonzero tiled layout "tile16" (`tile_mma.cu`), batch 8-64.

    y = spmm(x, packed, cfg)        # x (B, K) fp16/bf16 on the GPU, B <= cfg.block_b (8, 16, 32 or 64)
    y = spmm_host(x, packed, bp)    # the same scatter and fragments on the CPU (tests): float32 (B, N)

Why: bmma (cuda_mma.py) expands the bitmask per weight position, ~20 instructions per nonzero at 75%, and stayed
below cuBLAS at batch 16. Here each nonzero carries its position in a 16 x 128 tile: a warp zeroes the tile in
shared memory, scatters the nonzeros (one 16-bit store each) and feeds ldmatrix + mma.sync. 4 bytes per fp16
nonzero (value + position) plus padding to groups of 8 per tile, built once per matrix on its device.

Config (SpmmConfig(kernel="tmma", ...)): block_b = padded batch 8 / 16 / 32 / 64; num_warps = 4 or 8 (one 16-row
band each); split_k = blocks along K (the split-K workspace of cuda_mma.workspace); block_k 128.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from sparselm.kernels.gpu import cuda_build
from sparselm.kernels.gpu.cuda_mma import BATCHES, aligned16, check_input, splits, workspace

_SOURCE = Path(__file__).with_name("tile_mma.cu")
CHUNK = 128  # tile columns (tile_mma.cu TC)
TS = CHUNK + 8  # the shared tile's row stride in elements
WARPS = (4, 8)
_VT = {torch.float16: 0, torch.bfloat16: 1}


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    if kind == "device":
        lib.sl_tile_launch.restype = i32
        # (vt, BP, W), (x, ent, gptr, y, ws, cnt), (N, K, bsz, ldx, ldy, n_chunks, per, splits), stream
        lib.sl_tile_launch.argtypes = [i32] * 3 + [vp] * 6 + [i32] * 8 + [vp]
        lib.sl_tile_error_string.restype = ctypes.c_char_p
        lib.sl_tile_error_string.argtypes = [i32]
    else:
        lib.sl_tile_host.restype = i32
        lib.sl_tile_host.argtypes = [i32] * 2 + [vp] * 4 + [i32] * 4


_LIB = cuda_build.Library(_SOURCE, _declare)
load = _LIB.load  # load("device" | "host"): the CDLL, or None when it cannot be built
available = _LIB.available
build_error = _LIB.build_error


def check_config(cfg) -> None:
    """SpmmConfig's rules for kernel "tmma" (the scatter-to-tile tensor-core kernel)."""
    if (cfg.block_b not in BATCHES or cfg.num_warps not in WARPS or cfg.block_k != CHUNK
            or not isinstance(cfg.split_k, int) or isinstance(cfg.split_k, bool) or cfg.split_k < 1
            or cfg.unroll != 1 or not cfg.smem or cfg.persist):
        raise ValueError(f"SpmmConfig tmma: block_b (padded batch) in {BATCHES}, num_warps in {WARPS}, "
                         f"block_k {CHUNK}, split_k an int >= 1, no persist / unroll / smem=False; got {cfg}")


def supports(p, x_dtype: torch.dtype | None = None, batch: int = 16) -> bool:
    """fp16 / bf16 values (x of the same dtype), K a multiple of 8, padded batch 8-64."""
    n, k = p.shape
    if p.values.dtype not in _VT or k % 8 or batch not in BATCHES or p.values.numel() >= 2**31:
        return False
    return x_dtype is None or x_dtype == p.values.dtype


def _mask(p) -> torch.Tensor:
    """(N, K) bool: the bitmask unpacked (bit i of word w <-> column 32 w + i)."""
    n, k = p.shape
    shifts = torch.arange(32, device=p.words.device, dtype=torch.int32)
    return (((p.words[:, :, None] >> shifts) & 1) != 0).reshape(n, -1)[:, :k]


def aux(p) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries, gptr), cached under ("tile16",): entries int16 (G, 16) = per group of 8, the values' 16 bits then
    their positions (row-in-band * 136 + column-in-chunk); gptr int32 (n_tiles + 1,) = each tile's first group,
    tiles ordered band-major (band * n_chunks + chunk). Padding: value 0 at position 128 (a column never read).
    Inside a tile the entries are ordered for the scatter's shared-memory banks (`_bank_spread`)."""
    if ("tile16",) not in p._cptr:
        n, k = p.shape
        nch = -(-k // CHUNK)
        nbands = -(-n // 16)
        rows, cols = _mask(p).nonzero(as_tuple=True)  # row-major: the order of `values`
        tile = (rows // 16) * nch + cols // CHUNK
        pos = (rows % 16) * TS + cols % CHUNK
        vals = p.values.view(torch.int16)
        counts = torch.bincount(tile, minlength=nbands * nch)
        groups = (counts + 7) // 8
        gptr = torch.zeros(nbands * nch + 1, dtype=torch.int64, device=tile.device)
        gptr[1:] = torch.cumsum(groups, 0)
        order, grp, e = _bank_spread(tile, pos, counts, groups)
        slot = (gptr[tile[order]] + grp) * 8 + e
        total = int(gptr[-1]) * 8
        v = torch.zeros(total, dtype=torch.int16, device=tile.device)
        q = torch.full((total,), CHUNK, dtype=torch.int16, device=tile.device)
        v[slot], q[slot] = vals[order], pos[order].to(torch.int16)
        ent = torch.cat([v.view(-1, 8), q.view(-1, 8)], dim=1).contiguous()
        p._cptr[("tile16",)] = (ent, gptr.to(torch.int32).contiguous())
    return p._cptr[("tile16",)]


def _bank_spread(tile: torch.Tensor, pos: torch.Tensor, counts: torch.Tensor, groups: torch.Tensor):
    """(order, group-in-tile, entry-in-group) for the nonzeros (`tile`, `pos` per nonzero): where each one goes.

    Why: the kernel's lane l scatters the tile's groups l, l + 32, ..., and each 16-bit store instruction writes
    entry e of 32 groups at once; entries that share a bank (32-bit word (pos >> 1) mod 32) but not a word cost one
    shared-memory wavefront each. Row-major entries put about 3 wavefronts into every store (a 16 x 128 tile at
    75%); dealing them bank by bank — the first entry of every bank, then the second of every bank, ... — into
    store order (group block m, entry e, lane l) gives each store mostly distinct banks: 1.5 wavefronts at 75%,
    1.3 at 50% (uniform masks, tests/test_cuda_tile.py). The scatter is order-free, so only speed changes."""
    dev = tile.device
    bank = (pos >> 1) & 31
    by_bank = torch.argsort((tile * 32 + bank) * 4096 + pos)  # buckets (tile, bank); positions < 4096
    key = (tile * 32 + bank)[by_bank]
    bstart = torch.zeros(counts.numel() * 32, dtype=torch.int64, device=dev)
    bstart[1:] = torch.cumsum(torch.bincount(key, minlength=counts.numel() * 32), 0)[:-1]
    rank = torch.arange(key.numel(), device=dev) - bstart[key]  # an entry's rank inside its bank
    t_sorted = tile[by_bank]
    order = by_bank[torch.argsort((t_sorted * 4096 + rank) * 32 + bank[by_bank])]  # tile, rank, bank
    t = tile[order]
    first = torch.zeros_like(counts)
    first[1:] = torch.cumsum(counts, 0)[:-1]
    s = torch.arange(t.numel(), device=dev) - first[t]  # place in the tile's store order
    g = groups[t]
    full = (g // 32) * 256  # entries in the tile's whole blocks of 32 groups x 8
    whole = s < full
    lanes = torch.where(whole, torch.full_like(g, 32), (g % 32).clamp_min(1))  # a last block has g % 32 lanes
    r = torch.where(whole, s % 256, s - full)
    m = torch.where(whole, s // 256, g // 32)
    e, lane = r // lanes, r % lanes
    return order, m * 32 + lane, e


def _check(x: torch.Tensor, p, block_b: int) -> None:
    check_input("tmma", x, p, block_b, supports)


def spmm(x: torch.Tensor, p, cfg, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x W^T on the GPU (cfg: block_b, num_warps, split_k). `out`: a contiguous (B, N) tensor."""
    _check(x, p, cfg.block_b)
    n, k = p.shape
    bsz = x.shape[0]
    lib, y = _LIB.prepare("tmma", x, p, out)
    x = aligned16(x)
    ent, gptr = aux(p)
    n_chunks = -(-k // CHUNK)
    per, nsplit = splits(n_chunks, cfg.split_k)
    ws, cnt = workspace(p, cfg.block_b)
    code = lib.sl_tile_launch(_VT[x.dtype], cfg.block_b, cfg.num_warps, x.data_ptr(), ent.data_ptr(),
                              gptr.data_ptr(), y.data_ptr(), ws.data_ptr(), cnt.data_ptr(), n, k, bsz, k, n,
                              n_chunks, per, nsplit, torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"tmma launch failed: {lib.sl_tile_error_string(code).decode()} (code {code})")
    return y


def spmm_host(x: torch.Tensor, p, block_b: int = 16) -> torch.Tensor:
    """The kernel's zero / scatter / ldmatrix / mma steps on the CPU: float32 (B, N), for the CPU tests."""
    _check(x, p, block_b)
    lib = load("host")
    if lib is None:
        raise RuntimeError(f"tmma host emulation unavailable ({build_error('host')})")
    n, k = p.shape
    x = x.contiguous().cpu()
    ent, gptr = (t.cpu() for t in aux(p))
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    code = lib.sl_tile_host(_VT[x.dtype], block_b, x.data_ptr(), ent.data_ptr(), gptr.data_ptr(), y.data_ptr(), n,
                            k, x.shape[0], -(-k // CHUNK))
    if code != 0:
        raise ValueError(f"tmma host: unsupported values {p.values.dtype} / batch {block_b}")
    return y
