"""Side-by-side timing for the benchmarks: two workloads measured alternately in one process.

Builds on nothing in red: plain time.perf_counter.
Run as: imported by bench/bench_*.py (nothing to run on its own).
"""
import statistics
import time


def timed_pair(fn_a, fn_b, repeats: int, warmup: bool = True) -> tuple[float, float, object, object]:
    """Median seconds of fn_a and fn_b over `repeats` alternating calls (after one warm-up call each unless
    the caller warmed them up more cheaply itself), and each one's last result."""
    if warmup:
        fn_a(), fn_b()  # allocator, kernel selection, lazy initialisation
    # alternating a, b, a, b: on a shared machine the load drifts over minutes, and timing all of a's runs
    # before all of b's would charge that drift to one side
    times_a, times_b, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        start = time.perf_counter()
        out_a = fn_a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        out_b = fn_b()
        times_b.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b), out_a, out_b
