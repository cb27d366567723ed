"""Benchmark of erank.py: streaming eRank over 10^6 tokens (time, and memory that stays flat in N), and one
65k-token batch against `torch.linalg.svdvals` on the full matrix (fp32 and fp64), with the agreement to a
float64 SVD reference.

The streaming tokens are synthetic, generated chunk by chunk from a seed (so "sq" can read them twice) and
never all held. Peak memory is ru_maxrss (torch allocations are invisible to tracemalloc), and each streaming
run happens in a fresh process, so its peak belongs to that run alone: equal columns for 10^5 and 10^6 tokens
mean that memory does not grow with N. The machine's load average is printed, since timings on a shared
machine move with it.

Builds on erank.py. Run as: python bench/bench_erank.py [--tokens 1000000] [--dim 576] [--batch 65536] [--threads 1]
"""
import argparse
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

# bench/ scripts run as files (python bench/x.py), so the repo root is not on sys.path by itself
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from erank import (STEP_ELEMENTS, ERankAccumulator, center_tokens, erank, erank_rv, erank_sq,  # noqa: E402
                   erank_streaming, normalize_rows, token_mean)


# ---------------------------------------------------------------------------------------------------------
# Synthetic residual-stream-like tokens and measuring helpers

def synthetic_chunks(n: int, d: int, chunk: int, seed: int = 0):
    """n tokens (chunk, d) at a time: an offset, two decades of per-channel scale, one massive channel."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, d)  # (d,)
    offset = 3.0 * torch.randn(d, generator=g)  # (d,)
    for start in range(0, n, chunk):
        h = torch.randn(min(chunk, n - start), d, generator=g) * scales + offset  # (c, d)
        h[::97, 0] += 300.0  # a few tokens with a massive activation, as at a residual stream's sinks
        yield h


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_time(fn, repeat: int):
    """(fastest wall time in seconds over `repeat` calls, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def stream_run(n: int, d: int, chunk: int, kind: str | None, threads: int) -> tuple[float, float]:
    """(seconds, peak RSS growth in MiB) of streaming eRank over n synthetic tokens (kind None: generate only)."""
    torch.set_num_threads(threads)  # a spawned process starts from torch's default, not the parent's setting
    base = peak_rss_mb()
    t = time.perf_counter()
    if kind is None:
        for _ in synthetic_chunks(n, d, chunk):
            pass
    else:  # "sq" reads the chunks twice: the mean, then the normalised Gram
        erank_streaming(lambda: synthetic_chunks(n, d, chunk), kind=kind)
    return time.perf_counter() - t, peak_rss_mb() - base


def in_fresh_process(fn, *args):
    """fn(*args) run in a new (spawned) process, so that its ru_maxrss is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def svdvals_erank(h: torch.Tensor, kind: str, dtype: torch.dtype) -> float:
    """eRank the direct way: centre (and for "sq" normalise) the whole matrix, then torch.linalg.svdvals."""
    x = center_tokens(h.to(dtype), h.to(dtype).mean(0))  # (N, d)
    if kind == "sq":
        x = normalize_rows(x)
    s = torch.linalg.svdvals(x).double()  # (d,)
    return erank_sq(s**2) if kind == "sq" else erank_rv(s)


# ---------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description="Benchmark streaming eRank and compare with svdvals.")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="largest streaming run")
    parser.add_argument("--dim", type=int, default=576, help="token width (SmolLM2-135M: 576)")
    parser.add_argument("--chunk", type=int, default=8192, help="tokens per streamed chunk")
    parser.add_argument("--batch", type=int, default=65536, help="tokens in the one-batch comparison")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per one-batch method (fastest kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (use 1 on a shared machine: busy cores stall multi-threaded BLAS)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    d = args.dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d={d}")

    # --- streaming: time and peak memory as N grows, each run in a fresh process
    print(f"\nstreaming, chunks of {args.chunk} generated on the fly; load average {os.getloadavg()[0]:.1f}")
    print(f"{'tokens':>9} {'kind':>6} {'time s':>8} {'Mtok/s':>8} {'peak RSS +MiB':>14}")
    for n in sorted({min(args.tokens, 100_000), args.tokens}):
        for kind in (None, "rv", "sq"):
            dt, rss = in_fresh_process(stream_run, n, d, args.chunk, kind, args.threads)
            print(f"{n:>9} {kind or '(gen)':>6} {dt:>8.2f} {n / dt / 1e6:>8.3f} {rss:>14.0f}")
    gram_mb = d * d * 8 / 2**20
    chunk_mb = args.chunk * d * 4 * 3 / 2**20  # generating a chunk: randn, times scales, plus offset (fp32)
    print(f"(state: one {d}x{d} fp64 Gram = {gram_mb:.1f} MiB; temporaries: ~{chunk_mb:.0f} MiB to generate a "
          f"chunk, <= 3 x {STEP_ELEMENTS * 8 >> 20} MiB in erank.py; the rest is torch/BLAS working memory)")

    # --- one batch of 65k tokens: ours (fp64 Gram + eigvalsh) against svdvals on the full matrix
    h = torch.cat(list(synthetic_chunks(args.batch, d, args.chunk, seed=1)))  # (N, d) fp32
    print(f"\none batch of {args.batch} x {d} fp32 tokens; fastest of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.1f}; rel err against svdvals in fp64")
    print(f"{'kind':>5} {'method':>16} {'time s':>8} {'ours/this':>10} {'eRank':>12} {'rel err':>9}")
    for kind in ("rv", "sq"):
        ours_t, ours = best_time(lambda: erank(h, kind=kind), args.repeat)
        runs = {"svdvals fp32": best_time(lambda: svdvals_erank(h, kind, torch.float32), args.repeat),
                "svdvals fp64": best_time(lambda: svdvals_erank(h, kind, torch.float64), args.repeat)}
        ref = runs["svdvals fp64"][1]
        print(f"{kind:>5} {'ours (fp64 Gram)':>16} {ours_t:>8.3f} {'':>10} {ours:>12.6f} "
              f"{abs(ours - ref) / ref:>9.1e}")
        for name, (dt, value) in runs.items():
            print(f"{kind:>5} {name:>16} {dt:>8.3f} {ours_t / dt:>10.2f} {value:>12.6f} "
                  f"{abs(value - ref) / ref:>9.1e}")
        assert abs(ours - ref) <= 1e-6 * ref, f"{kind}: ours {ours} vs fp64 reference {ref}"
    # streaming the same 65k tokens in chunks agrees with the one-batch value to rounding
    acc = ERankAccumulator(d, kind="sq", mean=token_mean(h))
    for c in h.split(args.chunk):
        acc.update(c)
    print(f"\nstreamed in chunks of {args.chunk} vs one batch (sq): rel diff "
          f"{abs(acc.value() - erank(h, kind='sq')) / erank(h, kind='sq'):.1e}")


if __name__ == "__main__":
    main()
