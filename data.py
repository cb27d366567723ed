"""Text into token windows: the one packing every part of red uses, and the shuffled, resumable training stream.

One packing (training, validation, calibration, eRank and perplexity all see text this way; METHOD §4.2):
    every document becomes [bos] + tokens + [eos]   (bos only where the tokenizer adds one: Llama 3 yes,
                                                      SmolLM2 and Qwen no)
    a source's documents are concatenated and cut into non-overlapping windows of seq_len tokens;
    the last partial window (fewer than seq_len tokens) is dropped, so every window is full
LRC packs the same way (documents joined by eos/bos, cut into 2048-token chunks, METHOD §2.4). Labels are the
inputs themselves: position t predicts token t+1 inside a window, and a document boundary is just an eos in
the middle of a row (plain causal attention, no masking). Sources (files, pydoc, problems:N, self:N) are read
by sources.py.

A source's WEIGHT is an upsampling factor: each epoch draws round(WEIGHT * train windows) of it (2 = every
window twice, 0.5 = a fresh random half each epoch). Split: the last `val_fraction` of each source's windows
are held out (at least one when it has two or more) and never trained on. Order: each epoch is a permutation
of (source, window) pairs seeded by (seed, epoch); the position in that stream is two ints, so a checkpoint
resumes exactly, on the same windows (`fingerprints`: a sha256 of each source's ids, not of its path).
Distributed: every rank walks the same global batches and keeps its contiguous slice of rows.

Text is tokenised on every core (tokenize_corpus.py). `--out FILE.bin` streams the packed ids into FILE.bin,
memory flat whatever the corpus size, and writes FILE.bin.json (dtype, id count, vocab size, documents, sources)
last, as the commit; it replaces only such a pair that data.py wrote, never an input.

Builds on sources.py, text_sources.py, tokenize_corpus.py, tokenizer.py and cli.py.
Run as: python data.py --tokenizer DIR --data SOURCE[:WEIGHT] ... --seq-len T [--out FILE.bin]
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import argparse
import contextlib
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from sources import (DataError, check_source, column_name, is_text_source, is_token_file, is_token_sidecar,
                     load_self, parse_spec, read_tokens)
from text_sources import source_work
from tokenize_corpus import BinWriter, copy_chunks, packed_chunks


@dataclass
class Source:
    name: str               # the spec as given on the command line, without its weight
    tokens: np.ndarray      # (n_tokens,) packed ids; a read-only memmap for .bin / .npy
    weight: float           # upsampling factor per epoch
    documents: int | None   # None when a pre-tokenised file does not say
    n_train: int = 0        # windows [0, n_train) are trained on ...
    n_val: int = 0          # ... and [n_train, n_train + n_val) are held out


@dataclass
class TokenData:
    sources: list[Source]
    seq_len: int


# ---------------------------------------------------------------------------------------------------------
# The packing (written once)

def tokenize_documents(docs: list[str], tokenizer) -> np.ndarray:
    """Each document as [bos] + ids + [eos], concatenated into one uint32 stream."""
    # bos only where the checkpoint's own tokenizer puts one first (Llama 3 yes; SmolLM2, Qwen no)
    has_bos = getattr(tokenizer, "add_bos", tokenizer.bos_id is not None)
    parts = [np.asarray(tokenizer.encode(d, bos=has_bos, eos=True), dtype=np.uint32) for d in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def cut_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, seq_len) view of a token stream: non-overlapping windows, the partial last one dropped."""
    n = len(stream) // seq_len
    return stream[:n * seq_len].reshape(n, seq_len)


def load_windows(spec: str, tokenizer, seq_len: int, *, seed: int = 0, limit: int | None = None,
                 text_column: str = "text") -> torch.Tensor:
    """(N, seq_len) long windows of one source, packed exactly as training packs it (N <= limit if given):
    what the measuring tools (erank.py, init_select.py, eval_reasoning.py --ppl) read their text through."""
    name, _ = parse_spec(spec)
    if name.startswith("self:"):
        raise DataError(f"{spec}: teacher samples exist only inside a distill.py run - pass a file, pydoc or "
                        "problems:N")
    stream, _ = read_source(name, tokenizer, seq_len, seed=seed, text_column=text_column)
    windows = cut_windows(stream, seq_len)[:limit]
    return torch.from_numpy(windows.astype(np.int64))


# ---------------------------------------------------------------------------------------------------------
# Reading one source, packed

def read_source(name: str, tokenizer, seq_len: int, *, seed: int = 0, teacher=None, run_dir: str | None = None,
                fingerprint: str = "", text_column: str = "text", out: BinWriter | None = None,
                workers: int = 0) -> tuple[np.ndarray, int | None]:
    """(token stream, document count or None) of one source, packed; checked to hold at least one window.
    Text is tokenised by `workers` processes (tokenize_corpus.packed_chunks; 0: every core). With `out`, the
    stream is appended to that .bin as it is made and returned as a memory map of what was written."""
    check_source(name, text_column)
    if is_text_source(name):
        documents = 0  # counted as the chunks pass

        def text_chunks():
            nonlocal documents
            work = source_work(name, tokenizer, seed=seed, text_column=text_column)
            for ids, ended in packed_chunks(work, tokenizer, workers=workers):  # (n,) uint32, documents ended
                documents += ended
                yield ids
        if out is not None:
            tokens = out.extend(text_chunks())
        else:
            parts = list(text_chunks())
            tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
        if not documents:
            raise DataError(f"{name}: no documents (only blank text) - remove it or fill it")
    else:  # ids already: teacher samples (self:N) or a token file, each a memory map
        if name.startswith("self:"):
            tokens, meta = load_self(int(name[5:]), tokenizer, seq_len, teacher=teacher, run_dir=run_dir, seed=seed,
                                     fingerprint=fingerprint)
        else:
            tokens, meta = read_tokens(name, tokenizer.vocab_size)
        documents = meta.get("documents")
        if out is not None:
            tokens = out.extend(copy_chunks(tokens))
    if len(tokens) < seq_len:
        raise DataError(f"{name}: needs at least {seq_len} tokens for one window, got {len(tokens)} - add text "
                        "or lower the sequence length")
    return tokens, documents


# ---------------------------------------------------------------------------------------------------------
# Loading every source, the training stream, the held-out windows

def split_sizes(n_windows: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) window counts: the last val_fraction held out, >= 1 of each when n_windows >= 2."""
    if val_fraction <= 0 or n_windows < 2:
        return n_windows, 0
    n_val = min(n_windows - 1, max(1, int(n_windows * val_fraction)))
    return n_windows - n_val, n_val


def load_sources(specs: list[str], tokenizer, seq_len: int, *, val_fraction: float = 0.05, teacher=None,
                 run_dir: str | None = None, seed: int = 0, fingerprint: str = "", text_column: str = "text",
                 out: BinWriter | None = None, workers: int = 0) -> TokenData:
    """Read, pack and split every --data spec (text is tokenised up front, token files memory-mapped; with
    `out`, every source is streamed into that .bin and memory-mapped from it)."""
    if not specs:
        raise DataError("no training data - pass --data with a file (.txt .jsonl .parquet .bin .npy), pydoc or "
                        "problems:N")
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len} is too short - a window needs at least 2 tokens")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be in [0, 1) - e.g. 0.05")
    if tokenizer.eos_id is None:
        raise DataError("the tokenizer has no eos token - packing needs one between documents; "
                        "add eos_token to tokenizer_config.json")
    names = [parse_spec(spec) for spec in specs]
    for name, _ in names:  # every source checked before the first is read
        check_source(name, text_column)
    sources = []
    for name, weight in names:
        tokens, documents = read_source(name, tokenizer, seq_len, seed=seed, teacher=teacher, run_dir=run_dir,
                                        fingerprint=fingerprint, text_column=text_column, out=out, workers=workers)
        n_train, n_val = split_sizes(len(tokens) // seq_len, val_fraction)
        sources.append(Source(name, tokens, weight, documents, n_train, n_val))
    return TokenData(sources, seq_len)


def gather(data: TokenData, rows: list[tuple[int, int]]) -> torch.Tensor:
    """(len(rows), seq_len) long tensor of the (source, window index) pairs."""
    out = np.empty((len(rows), data.seq_len), dtype=np.int64)
    for r, (s, i) in enumerate(rows):
        out[r] = cut_windows(data.sources[s].tokens, data.seq_len)[i]
    return torch.from_numpy(out)


class Batches:
    """Infinite training stream; `next()` gives this rank's (batch_size // world_size, seq_len) long rows."""

    def __init__(self, data: TokenData, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise DataError(f"batch size {batch_size} does not split over {world_size} ranks (rank {rank}) - "
                            "use a multiple of the world size")
        if not any(s.n_train for s in data.sources):
            raise DataError("no training windows: every source is too small to split - add data or lower --seq-len")
        self.data, self.batch_size, self.seed, self.rank, self.world_size = data, batch_size, seed, rank, world_size
        n_train = np.array([s.n_train for s in data.sources])
        self.starts = np.concatenate([[0], np.cumsum(n_train)[:-1]])  # global id of each source's first window
        # round(weight * n) draws per epoch (>= 1 so a small weight never silences a source entirely)
        self.draws = [max(1, round(s.weight * s.n_train)) if s.n_train else 0 for s in data.sources]
        self.epoch_len = sum(self.draws)
        self.epoch, self.cursor = 0, 0
        self._order, self._order_epoch = None, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(epoch_len,) global train-window ids of one epoch, shuffled by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for start, draws, src in zip(self.starts, self.draws, self.data.sources):
            if not draws:
                continue
            copies, extra = divmod(draws, src.n_train)  # whole repeats, then a random subset for the fraction
            ids = np.concatenate([np.tile(np.arange(src.n_train), copies),
                                  rng.choice(src.n_train, extra, replace=False)])
            parts.append(start + ids)
        return rng.permutation(np.concatenate(parts))

    def next(self) -> torch.Tensor:
        """This rank's rows of the next global batch, (batch_size // world_size, seq_len) long."""
        ids = []
        while len(ids) < self.batch_size:  # a global batch may straddle two epochs
            if self._order_epoch != self.epoch:
                self._order, self._order_epoch = self.epoch_order(self.epoch), self.epoch
            take = self._order[self.cursor:self.cursor + self.batch_size - len(ids)]
            ids.extend(take.tolist())
            self.cursor += len(take)
            if self.cursor == self.epoch_len:
                self.epoch, self.cursor = self.epoch + 1, 0
        per_rank = self.batch_size // self.world_size
        mine = np.array(ids[self.rank * per_rank:(self.rank + 1) * per_rank])
        source = np.searchsorted(self.starts, mine, side="right") - 1
        return gather(self.data, list(zip(source.tolist(), (mine - self.starts[source]).tolist())))

    def state_dict(self) -> dict:
        """The stream position as JSON-serialisable ints (for a checkpoint's state.json)."""
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "draws": list(self.draws)}

    def load_state_dict(self, state: dict):
        """Continue from a saved position; the data and seed must be those of the saved run. Every field is
        checked first (a cursor past the epoch would make next() wait forever for windows that never come), so
        a damaged state is one DataError and the stream is left as it was."""
        damaged = ("the checkpoint's data state is damaged - resume from an intact copy, or start afresh with "
                   "--overwrite")
        if not isinstance(state, dict) or not {"seed", "epoch", "cursor", "draws"} <= set(state):
            raise DataError(f"{damaged} (it needs seed, epoch, cursor and draws)")
        is_int = lambda v: type(v) is int  # not a bool, a float or a string
        if not all(map(is_int, (state["seed"], state["epoch"], state["cursor"]))):
            raise DataError(f"{damaged} (seed, epoch and cursor must be integers)")
        if state["seed"] != self.seed:
            raise DataError(f"data state was saved with seed {state['seed']}, this run has {self.seed} - "
                            "resume with the same --seed")
        draws = state["draws"]
        if not (isinstance(draws, list) and all(map(is_int, draws))) or draws != self.draws:
            # windows drawn per source and epoch: sizes, weights and split
            raise DataError(f"data changed since the checkpoint (windows per epoch and source {str(draws)[:80]}, "
                            f"now {self.draws}) - resume with the same --data, --seq-len and val fraction")
        if not (state["epoch"] >= 0 and 0 <= state["cursor"] < self.epoch_len):
            raise DataError(f"{damaged} (epoch {state['epoch']} must be >= 0 and cursor {state['cursor']} within "
                            f"the epoch's {self.epoch_len} windows)")
        self.epoch, self.cursor = state["epoch"], state["cursor"]


def fingerprints(data: TokenData) -> list[str]:
    """One sha256 per source of the windows it holds (trained on and held out, as little-endian uint32 ids): what
    a run sees, whatever file or path it came from. A resumed run must see the same (distill.setup); read in
    chunks of 16M ids, memory flat (about a second per GB of ids)."""
    out, chunk = [], 1 << 24
    for source in data.sources:
        digest = hashlib.sha256()
        ids = source.tokens[:(source.n_train + source.n_val) * data.seq_len]  # (windows * seq_len,): no partial one
        for at in range(0, len(ids), chunk):
            digest.update(np.ascontiguousarray(ids[at:at + chunk], dtype="<u4").tobytes())
        out.append(digest.hexdigest())
    return out


def held_out(data: TokenData, limit: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """(windows (N, seq_len) long, source index of each): the held-out windows in file order, at most
    ceil(limit / sources) from each source, so every source is measured even when one is much larger."""
    per_source = None if limit is None else -(-limit // len(data.sources))
    rows = [(s, i) for s, src in enumerate(data.sources)
            for i in range(src.n_train, src.n_train + min(src.n_val, per_source or src.n_val))]
    return gather(data, rows), [s for s, _ in rows]


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="data.py", description="Tokenise and pack training data; print its "
                                                                 "statistics, optionally write it as one .bin.")
    parser.add_argument("--tokenizer", required=True, help="checkpoint directory holding the tokenizer")
    parser.add_argument("--data", nargs="+", required=True, help="SOURCE[:WEIGHT]: .txt .jsonl .parquet (a file, "
                        "folder or quoted glob of shards) .bin .npy, pydoc, problems:N")
    parser.add_argument("--text-column", type=column_name, default="text", help="the column (.jsonl field) of "
                        "the text, where rows are not chats or question + answer (default: text)")
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=2048)
    parser.add_argument("--val-fraction", type=cli.float_in(0.0, 0.5), default=0.05)
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0, help="seed of problems:N")
    parser.add_argument("--out", help="write every source's packed tokens, concatenated, to this .bin (streamed: "
                                      "memory stays flat whatever the corpus size)")
    parser.add_argument("--workers", type=cli.int_at_least(0), default=0, help="processes that tokenise (default 0: "
                                                                               "every core)")
    args = cli.parse_args(parser, argv)
    from tokenizer import TokenizerError, load_tokenizer
    with cli.user_errors(DataError, TokenizerError):
        if any(parse_spec(d)[0].startswith("self:") for d in args.data):
            raise DataError("self:N samples exist only inside a distill.py run - pass files, pydoc or problems:N")
        if args.out:
            if not args.out.endswith(".bin"):
                raise DataError(f"--out {args.out}: not a .bin name - name a .bin file (its dtype goes to "
                                "FILE.bin.json)")
            # the .bin and its sidecar are both outputs: neither may be an input (a token file's sidecar is one
            # too), and each replaces only what data.py wrote
            files = [parse_spec(d)[0] for d in args.data]
            inputs = [p for f in files for p in (f, f + ".json") if os.path.exists(p)]
            cli.check_outputs({"--data": inputs, "--tokenizer": args.tokenizer},
                              [cli.Output("--out", args.out, "file", is_token_file, "token file written by data.py"),
                               cli.Output("--out", args.out + ".json", "file", is_token_sidecar,
                                          "sidecar written by data.py")])
        tok = load_tokenizer(args.tokenizer)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(BinWriter(args.out, tok.vocab_size)) if args.out else None
            data = load_sources(args.data, tok, args.seq_len, val_fraction=args.val_fraction, seed=args.seed,
                                text_column=args.text_column, out=out, workers=args.workers)
            print_statistics(data)
            if out is not None:  # the .bin into place, then its sidecar: the commit
                docs = [s.documents for s in data.sources]
                out.commit(documents=None if None in docs else sum(docs), sources=args.data)
                print(f"wrote {args.out} (+ {os.path.basename(args.out)}.json)")


def print_statistics(data: TokenData):
    """Each source's documents, tokens, train and held-out windows and share of an epoch."""
    stream = Batches(data, 1)
    print(f"{'source':40s} {'weight':>6s} {'docs':>8s} {'tokens':>12s} {'train':>8s} {'val':>6s} {'share':>6s}")
    for s, draws in zip(data.sources, stream.draws):
        docs = "?" if s.documents is None else str(s.documents)
        print(f"{s.name[-40:]:40s} {s.weight:6g} {docs:>8s} {len(s.tokens):12,d} {s.n_train:8,d} "
              f"{s.n_val:6,d} {draws / stream.epoch_len:6.1%}")
    n_val = sum(s.n_val for s in data.sources)
    print(f"seq_len {data.seq_len}: an epoch is {stream.epoch_len:,d} windows "
          f"({stream.epoch_len * data.seq_len:,d} tokens); {n_val:,d} held out")


if __name__ == "__main__":
    main()
