"""Text into packed ids on every core, in order and in flat memory: how data.py tokenises every text source,
and the streamed .bin that `python data.py --out` writes for a corpus larger than memory.

The packing is data.py's (`tokenize_documents`: each document [bos] + ids + [eos]); here it runs on a stream
of (text, starts a document, ends one) pieces (sources.source_pieces). Pieces are gathered into batches of
about BATCH_CHARS characters and each batch is encoded by a thread of a pool as wide as the cores this process
may use (tiktoken releases the GIL while it encodes, so the threads run at once); at most two batches per thread
are in flight and the results are taken back in submission order. The ids are therefore those of one thread,
byte for byte, and memory is bounded by the batches in flight, whatever the size of the corpus.

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
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

import cli
from sources import token_dtype

BATCH_CHARS = 1 << 20  # characters of text per batch a thread encodes
COPY_IDS = 1 << 24     # ids of a token file copied at a time


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_batch(tokenizer, has_bos: bool, batch: list) -> tuple[np.ndarray, int]:
    """(uint32 ids, documents ended) of a batch of (text, starts, ends) pieces, packed as data.py packs."""
    parts = [np.asarray(tokenizer.encode(text, bos=starts and has_bos, eos=ends), dtype=np.uint32)
             for text, starts, ends in batch]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return ids, sum(ends for _, _, ends in batch)


def batches(pieces, chars: int = BATCH_CHARS):
    """Consecutive lists of pieces holding about `chars` characters each (a piece is never split)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def packed_chunks(pieces, tokenizer, *, workers: int = 0, chars: int = BATCH_CHARS):
    """Yield (uint32 ids, documents ended) per batch of pieces, in order, encoded by `workers` threads (0: every
    core). Reading the pieces (JSON, parquet, UTF-8) runs in the calling thread, alongside the encoding."""
    # bos only where the checkpoint's own tokenizer puts one first (Llama 3 yes; SmolLM2, Qwen no)
    has_bos = getattr(tokenizer, "add_bos", tokenizer.bos_id is not None)
    workers = workers or cores()
    if workers == 1:
        for batch in batches(pieces, chars):
            yield encode_batch(tokenizer, has_bos, batch)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool:
        pending = deque()
        try:
            for batch in batches(pieces, chars):
                pending.append(pool.submit(encode_batch, tokenizer, has_bos, batch))
                if len(pending) >= 2 * workers:  # bounded memory: wait for the oldest before reading on
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an early stop: batches not started are dropped, running ones finish
            for future in pending:
                future.cancel()


def copy_chunks(tokens: np.ndarray, size: int = COPY_IDS):
    """A token file's ids in slices of `size` (read from its memory map a slice at a time)."""
    for start in range(0, len(tokens), size):
        yield tokens[start:start + size]


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
        self.bar = tqdm(desc=f"tokenising into {name}", unit="tok", unit_scale=True, disable=None, smoothing=0.1)

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
