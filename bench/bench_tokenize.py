"""Benchmark of data.py --out on a corpus larger than the memory it uses: tokens/s per core and peak resident
memory, against a plain single-thread tiktoken loop and Hugging Face tokenizers' batch encoding on the same text.

1. A corpus is generated (default 2,000 MB of .jsonl rows; --format txt makes it one document, parquet makes
   shards of it) from CPython's pydoc topics and worked problems, and a tenth of it.
2. The same text in this process, side by side: the first --sample-mb of its documents, held in memory, encoded by
     red        tokenize_corpus.packed_chunks on every core (what data.py runs), bos/eos left out of the count
     tiktoken   a plain loop of Encoding.encode_ordinary, one thread (the same tiktoken Encoding)
     encode     red's Tokenizer.encode in the same loop: what each call adds (added tokens split out, long texts
                chunked, the check for bytes without a token)
     per core   the same loop in one process per core at once, each over its share: what the machine gives
                the loop when every core is busy (a reference: on a VM two vCPUs may share a physical core)
     batch      tiktoken's own Encoding.encode_ordinary_batch on every core (a reference, not a baseline)
     HF         tokenizers' Tokenizer.encode_batch_fast on every core, from the same tokenizer.json
   with the ids checked equal. "per core" divides tokens/s by the threads the way ran on; "per CPU-s" divides
   the tokens by the CPU time the process spent (every thread's), which a shared machine moves least.
3. End to end: `python data.py --out` on each corpus in a child process of its own: wall time, tokens/s, CPU
   time and the child's peak resident set (ru_maxrss from wait4, so the peak is that run's alone). Equal peaks
   at two sizes 10x apart are memory flat in the corpus size; the corpus's bytes over the peak say how many
   times larger than its memory the corpus was. The startup (imports, tokenizer) is timed on a tiny corpus and
   shown apart. The machine's load average is printed: timings on a shared machine move with it.

Builds on data.py (its CLI), tokenize_corpus.py, text_sources.py, tokenizer.py and problems.py, with tiktoken and
tokenizers (the references) and pyarrow for --format parquet.
Run as: python bench/bench_tokenize.py [--mb 2000] [--sample-mb 48] [--rounds 3] [--format jsonl|txt|parquet]
                                       [--tokenizer DIR] [--dir DIR]
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # bench/ scripts run as files (python bench/x.py)
from sources import builtin_documents  # noqa: E402
from text_sources import WORK_BYTES, document_work  # noqa: E402
from tokenize_corpus import cores, packed_chunks  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

MB = 1 << 20


def documents(seed: int = 0) -> list[str]:
    """English technical text and worked arithmetic, shuffled: pydoc's topics and 4,000 problems."""
    docs = builtin_documents("pydoc", seed) + builtin_documents("problems:4000", seed)
    random.Random(seed).shuffle(docs)
    return docs


def write_corpus(path: str, docs: list[str], size: int, fmt: str) -> int:
    """Write about `size` bytes of `docs`, repeated, as .jsonl rows, one .txt document or parquet shards (a
    folder); returns the bytes written."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        os.makedirs(path)
        shard, written, n = docs * max(1, (64 * MB) // sum(map(len, docs))), 0, 0
        table = pa.table({"text": shard})
        while written < size:
            name = os.path.join(path, f"train-{n:05d}.parquet")
            pq.write_table(table, name, row_group_size=1024)
            written, n = written + os.path.getsize(name), n + 1
        return written
    sep = "\n\n" if fmt == "txt" else ""
    block = (sep.join(docs) + sep if fmt == "txt" else
             "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)).encode()
    with open(path, "wb") as f:
        for _ in range(max(1, size // len(block))):
            f.write(block)
    return os.path.getsize(path)


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its children that ended (the pool's workers)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                         resource.RUSAGE_CHILDREN)))


def same_text(tok, tokenizer_json: str, docs: list[str], threads: int, rounds: int) -> list[tuple]:
    """(name, threads, tokens, wall s, CPU s) of each way over the same in-memory documents, the fastest of
    `rounds` rounds (the ways interleaved, so a neighbour's load falls on all of them), ids checked equal."""
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(tokenizer_json)
    encode_hf = getattr(hf, "encode_batch_fast", hf.encode_batch)
    ways = [("tiktoken loop", 1, lambda: [tok.encoding.encode_ordinary(d) for d in docs]),
            ("red Tokenizer.encode loop", 1, lambda: [tok.encode(d) for d in docs]),
            ("tiktoken loop, a process per core", threads, lambda: loop_per_core(tok, docs, threads)),
            ("red packed_chunks", threads,
             lambda: [ids for ids, _ in packed_chunks(document_work(docs, WORK_BYTES, marks=False), tok,
                                                      workers=threads)]),
            ("tiktoken encode_ordinary_batch", threads,
             lambda: tok.encoding.encode_ordinary_batch(docs, num_threads=threads)),
            ("HF tokenizers encode_batch_fast", threads,
             lambda: [e.ids for e in encode_hf(docs, add_special_tokens=False)])]
    best, reference = {}, None
    for r in range(rounds):
        for name, n, fn in ways:
            c, t = cpu_seconds(), time.perf_counter()
            out = fn()
            wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            flat = np.concatenate([np.asarray(x, dtype=np.uint32) for x in out])
            reference = flat if reference is None else reference
            assert np.array_equal(flat, reference), f"{name}: ids differ from the plain tiktoken loop"
            if name not in best or wall < best[name][3]:
                best[name] = (name, n, len(flat), wall, cpu)
            print(f"  round {r + 1}, {name}: {len(flat) / wall / 1e6:.2f} Mtok/s", flush=True)
    return [best[name] for name, _, _ in ways]


def loop_per_core(tok, docs: list[str], processes: int) -> list[np.ndarray]:
    """The plain tiktoken loop in `processes` forked processes at once, each over its contiguous share of the
    documents: what the machine gives the loop when every core is busy (two vCPUs may share a physical core)."""
    _SHARE.update(tok=tok, docs=docs, n=processes)
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_loop_share, range(processes)))


_SHARE = {}


def _loop_share(k: int) -> np.ndarray:
    docs, n = _SHARE["docs"], _SHARE["n"]
    share = docs[k * len(docs) // n:(k + 1) * len(docs) // n]
    return np.concatenate([np.asarray(_SHARE["tok"].encoding.encode_ordinary(d), dtype=np.uint32) for d in share])


def tree_memory(pid: int) -> tuple[float, float]:
    """(PSS of `pid` and every process below it, MiB; `pid`'s own peak resident set VmHWM, MiB) from /proc. PSS
    shares each page among the processes that map it, so forked workers' shared pages are counted once."""
    pss, todo, hwm = 0, [pid], 0
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            if p == pid:
                with open(f"/proc/{p}/status") as f:
                    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):  # a process that ended meanwhile
            continue
    return pss / 1024, hwm / 1024


def data_out(corpus: str, out: str, tokenizer: str, threads: int) -> dict:
    """One `python data.py --out` in a child process: wall s, CPU s (its workers' too), tokens written, and the
    peak memory of its process tree (PSS summed, sampled every 0.1 s) and of data.py's own process (VmHWM). Not
    ru_maxrss: Linux carries the forking parent's peak over into a child's."""
    argv = [sys.executable, os.path.join(ROOT, "data.py"), "--tokenizer", tokenizer, "--data", corpus,
            "--seq-len", "2048", "--out", out, "--workers", str(threads)]
    peak = [0.0, 0.0]
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        while child.poll() is None:
            peak = [max(a, b) for a, b in zip(peak, tree_memory(child.pid))]
            time.sleep(0.1)
        wall = time.perf_counter() - started
        err.seek(0)
        assert child.returncode == 0, err.read().decode()[-2000:]
    with open(out + ".json") as f:
        tokens = json.load(f)["tokens"]
    for path in (out, out + ".json"):
        os.remove(path)
    return dict(wall=wall, tree=peak[0], rss=peak[1], tokens=tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=2000, help="the large corpus in MB (the small one is a tenth)")
    parser.add_argument("--sample-mb", type=float, default=48, help="MB of documents for the same-text ratios")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the same-text ways (the fastest counts)")
    parser.add_argument("--format", choices=["jsonl", "txt", "parquet"], default="jsonl")
    parser.add_argument("--tokenizer", help="checkpoint directory (default: the example teacher)")
    parser.add_argument("--dir", help="where the corpora are written (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.tokenizer is None:
        from scripts.example_teacher import build_example_teacher
        args.tokenizer = build_example_teacher()
    tok, threads = load_tokenizer(args.tokenizer), cores()
    docs = documents()
    print(f"tokenizer {args.tokenizer}; {threads} cores; load average {os.getloadavg()[0]:.2f}")

    sample, size = [], 0
    while size < args.sample_mb * MB:
        sample.append(docs[len(sample) % len(docs)])
        size += len(sample[-1].encode())
    print(f"\n1. the same {size / MB:.0f} MB of text ({len(sample)} documents) in this process, fastest of "
          f"{args.rounds}:")
    rows = same_text(tok, os.path.join(args.tokenizer, "tokenizer.json"), sample, threads, args.rounds)
    del sample
    by_name = {row[0]: row for row in rows}
    tokens_per_s = lambda name: by_name[name][2] / by_name[name][3]
    base = tokens_per_s("tiktoken loop")  # the plain loop's tokens/s, on its one core
    busy = tokens_per_s("tiktoken loop, a process per core") / threads  # the loop's tokens/s per core, every core busy
    print("\n| way | cores | Mtok/s | Mtok/s per core | Mtok per CPU-s | per core, vs the tiktoken loop | "
          "vs the loop on every core |")
    print("|---|---|---|---|---|---|---|")
    for name, n, tokens, wall, cpu in rows:
        print(f"| {name} | {n} | {tokens / wall / 1e6:.2f} | {tokens / wall / n / 1e6:.2f} | {tokens / cpu / 1e6:.2f} "
              f"| {tokens / wall / n / base:.2f}x | {tokens / wall / n / busy:.2f}x |")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-tokenize-") as folder:
        name = "corpus" + ("" if args.format == "parquet" else f".{args.format}")
        tiny = os.path.join(folder, "tiny-" + name)
        write_corpus(tiny, docs[:50], 1, args.format)
        cpu = cpu_seconds()
        startup = data_out(tiny, os.path.join(folder, "tiny.bin"), args.tokenizer, threads)
        print(f"\n2. python data.py --out, end to end (the startup, on a tiny corpus: {startup['wall']:.1f} s, "
              f"data.py's peak RSS {startup['rss']:.0f} MiB; load average {os.getloadavg()[0]:.2f}):")
        print("\n| corpus | tokens | wall | Mtok/s | per core | per core after the startup | per core, vs the "
              "tiktoken loop | vs the loop on every core | Mtok per CPU-s | peak RSS of data.py | peak PSS, with its "
              "workers | corpus / peak |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        peaks = []
        for mb in (args.mb / 10, args.mb):
            corpus = os.path.join(folder, f"{mb:.0f}-{name}")
            t = time.perf_counter()
            written = write_corpus(corpus, docs, int(mb * MB), args.format)
            print(f"  (generated {written / MB:,.0f} MB of {args.format} in {time.perf_counter() - t:.0f} s)",
                  flush=True)
            cpu = cpu_seconds()
            r = data_out(corpus, os.path.join(folder, "out.bin"), args.tokenizer, threads)
            rate, used = r["tokens"] / r["wall"], cpu_seconds() - cpu
            peaks.append(r)
            print(f"| {written / MB:,.0f} MB {args.format} | {r['tokens'] / 1e6:,.0f}M | {r['wall']:.0f} s | "
                  f"{rate / 1e6:.2f} | {rate / threads / 1e6:.2f} | "
                  f"{r['tokens'] / (r['wall'] - startup['wall']) / threads / 1e6:.2f} | {rate / threads / base:.2f}x | "
                  f"{rate / threads / busy:.2f}x | "
                  f"{r['tokens'] / used / 1e6:.2f} | {r['rss']:.0f} MiB | {r['tree']:.0f} MiB | "
                  f"{written / MB / max(r['rss'], r['tree']):.1f}x |", flush=True)
            shutil.rmtree(corpus) if os.path.isdir(corpus) else os.remove(corpus)
        print(f"\npeak RSS of data.py {peaks[1]['rss']:.0f} MiB for {args.mb:,} MB against {peaks[0]['rss']:.0f} MiB "
              f"for a tenth of it ({peaks[1]['rss'] / peaks[0]['rss']:.2f}x); peak PSS with its workers "
              f"{peaks[1]['tree']:.0f} against {peaks[0]['tree']:.0f} MiB ({peaks[1]['tree'] / peaks[0]['tree']:.2f}x)")


if __name__ == "__main__":
    main()
