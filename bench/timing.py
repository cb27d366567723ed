"""Side-by-side timing for the benchmarks: two workloads measured alternately in one process.

Builds on nothing in red: plain time.perf_counter, and /proc/self/statm or torch.cuda for memory.
Run as: imported by bench/bench_*.py (nothing to run on its own).
"""
import os
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


def peak_memory(fn, device="cpu", interval: float = 0.002) -> tuple[object, int]:
    """(fn(), the most memory in bytes in use during the call beyond what was in use before it): on CUDA the
    allocator's peak (torch.cuda.max_memory_allocated), on the CPU the process's resident set sampled every
    `interval` seconds by a thread, after glibc's malloc_trim (the kernel's own peak, ru_maxrss, cannot be reset
    within a process)."""
    import ctypes
    import threading

    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - before
    def rss() -> int:
        """The process's resident set in bytes (statm's second field counts pages)."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    try:  # hand memory freed by earlier work back to the system, or the step would reuse it unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(interval)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return out, max(peak[0], rss()) - before
