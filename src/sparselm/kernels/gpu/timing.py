"""GPU timing by CUDA-graph replay: launch gaps (Triton's Python launcher costs more than a decode GEMV) stay out.

time_graph(fns) captures one call of each fn in order into a graph and returns the median milliseconds per call
over `reps` replays; callers pass fns over several weight copies whose total exceeds the L2, so the number is
DRAM, not cache.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def time_graph(fns: Sequence[Callable[[], object]], reps: int = 20, warmup: int = 3) -> float:
    """Median ms per fn call of a graph holding one call of every fn (each fn must be graph-capturable)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):  # compiles / autotunes outside the capture
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbps(nbytes: int = 4 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read + written (GB/s); best of 3 rounds, so that a GPU
    still clocking up from idle does not set the ceiling."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    src.random_(0, 255)
    dst = torch.empty_like(src)
    ms = min(time_graph([lambda: dst.copy_(src)], reps=10, warmup=5) for _ in range(3))
    return 2 * src.numel() / (ms * 1e-3) / 1e9
