"""Text into packed ids on every core, in order and in flat memory: how data.py tokenises every text source,
and the streamed .bin that `python data.py --out` writes for a corpus larger than memory.

The packing is data.py's (`tokenize_documents`: each document [bos] + ids + [eos]); here it runs on a source's
work items (text_sources.source_work: about a MB of text each, whose documents are read where they are
encoded). Each item is encoded by a worker process of a pool as wide as the cores this process may use,
forked, so that each inherits the tokenizer as it is (threads would share one interpreter: tiktoken releases
the GIL while it encodes, yet two threads ran 1.0-1.4x as fast as one on the 2-core machine, two worker
processes 1.7-1.9x; bench/bench_tokenize.py). At most two items per worker are in flight and the results are taken
back in submission order: the ids are those of one process, byte for byte, and memory is bounded by the items
in flight, whatever the size of the corpus. A source of one item is encoded here, without a pool; so is every
source where processes cannot be forked (Windows).

`BinWriter` is data.py --out: ids are appended to a temporary file beside FILE.bin as they come (a tqdm bar
shows tokens/s on a terminal) and read back as a memory map for the statistics; `commit` then syncs it and,
with Ctrl-C and SIGTERM held back, removes the previous sidecar, renames the file into place and writes the
sidecar FILE.bin.json last. The sidecar is the commit: a run stopped or killed while tokenising leaves the
previous .bin and sidecar as they were (and, only after a kill -9, a hidden temporary file beside them), and a
.bin is never read without its sidecar (sources.read_tokens).

Builds on sources.py (token_dtype), cli.py (held-back signals, JSON writes) and tqdm.
Run as: imported by data.py (python data.py --tokenizer DIR --data SOURCE ... --out FILE.bin; bench/
bench_tokenize.py measures it against tiktoken and Hugging Face tokenizers).
"""
import itertools
import multiprocessing as mp
import os
import signal
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

import cli
from sources import token_dtype

COPY_IDS = 1 << 24     # ids of a token file copied at a time


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset may narrow), shared
    among the ranks of a torchrun launch on this machine."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, n // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def encode_batch(tokenizer, has_bos: bool, item: tuple) -> tuple[np.ndarray, int]:
    """(uint32 ids, documents ended) of one work item (text_sources.source_work: its function gives the item's
    (text, starts, ends) pieces), packed as data.py packs."""
    function, arguments = item
    pieces = function(tokenizer, *arguments)
    parts = [np.asarray(tokenizer.encode(text, bos=starts and has_bos, eos=ends), dtype=np.uint32)
             for text, starts, ends in pieces]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return ids, sum(ends for _, _, ends in pieces)


def packed_chunks(work, tokenizer, *, workers: int = 0):
    """Yield (uint32 ids, documents ended) per work item, in order, encoded by `workers` processes (0: every
    core). A source of one item is encoded here, without starting any."""
    # bos only where the checkpoint's own tokenizer puts one first (Llama 3 yes; SmolLM2, Qwen no)
    has_bos = getattr(tokenizer, "add_bos", tokenizer.bos_id is not None)
    workers = workers or cores()
    work = iter(work)
    first = list(itertools.islice(work, 2))
    if len(first) < 2 or workers == 1 or "fork" not in mp.get_all_start_methods():
        for item in itertools.chain(first, work):
            yield encode_batch(tokenizer, has_bos, item)
        return
    # fork: each worker inherits the tokenizer as it is, nothing pickled, nothing imported again
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_start_worker,
                             initargs=(tokenizer, has_bos)) as pool:
        pending = deque()
        try:
            for item in itertools.chain(first, work):
                pending.append(pool.submit(_encode_in_worker, item))
                if len(pending) >= 2 * workers:  # bounded memory: wait for the oldest before reading on
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an early stop: items not started are dropped, running ones finish
            for future in pending:
                future.cancel()


_WORKER = {}


def _start_worker(tokenizer, has_bos: bool):
    """A worker's start: keep the tokenizer; Ctrl-C is the parent's to handle (it stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(tokenizer=tokenizer, has_bos=has_bos)


def _encode_in_worker(item: tuple) -> tuple[np.ndarray, int]:
    return encode_batch(_WORKER["tokenizer"], _WORKER["has_bos"], item)


def copy_chunks(tokens: np.ndarray, size: int = COPY_IDS):
    """A token file's ids in slices of `size` (read from its memory map a slice at a time)."""
    for start in range(0, len(tokens), size):
        yield tokens[start:start + size]


class Bar(tqdm):
    """tqdm without its monitor thread (the pool's workers are forked from this process: no thread to copy)."""
    monitor_interval = 0


class BinWriter:
    """A .bin written as a stream: `extend` appends ids, `commit` puts the file and its sidecar in place. Used as
    a context manager; leaving the block without `commit` (an error, Ctrl-C) removes the temporary file."""

    def __init__(self, path: str, vocab_size: int):
        self.path, self.vocab_size, self.dtype = path, vocab_size, token_dtype(vocab_size)
        self.tokens = 0
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-")
        self.file = os.fdopen(fd, "wb")
        self.bar = Bar(desc=f"tokenising into {name}", unit="tok", unit_scale=True, disable=None, smoothing=0.1,
                        mininterval=0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def extend(self, chunks) -> np.ndarray:
        """Append every array of ids in `chunks`; return what was appended, as a read-only memory map."""
        start = self.tokens
        for ids in chunks:
            self.file.write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
            self.tokens += len(ids)
            self.bar.update(len(ids))
        self.file.flush()
        if self.tokens == start:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.tmp, dtype=self.dtype, mode="r", offset=start * self.dtype.itemsize,
                         shape=(self.tokens - start,))

    def commit(self, **meta):
        """Sync the file, then (signals held back) replace the previous .bin and write the sidecar last: the
        fields of `meta`, then dtype, vocab_size and tokens, as sources.write_tokens writes them."""
        self.bar.close()
        os.fsync(self.file.fileno())
        self.file.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes it private; the final file gets the usual permissions
        side = self.path + ".json"
        with cli.deferred_signals():
            if os.path.exists(side):  # from here until the new sidecar, no .bin here reads as complete
                os.remove(side)
            os.replace(self.tmp, self.path)
            cli.write_json(side, dict(meta, dtype=self.dtype.name, vocab_size=self.vocab_size, tokens=self.tokens))
