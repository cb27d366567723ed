"""Training text into packed, shuffled, resumable token batches: the input side of distill.py.

Sources (`--data SPEC ...`, each `FILE` or `FILE:WEIGHT`):
  .txt    one document per file (UTF-8)
  .jsonl  one document per line: a "text" field, or GSM8K-style "question" + "answer" joined as
          "Question: {q}\nAnswer: {a}" (qa_text: the format eval_reasoning.py prompts in)
  .bin    pre-tokenised, raw little-endian ids (nanoGPT's convention). The dtype is read from the sidecar
          FILE.bin.json ({"dtype": "uint16" | "uint32", ...}) that `--out` writes; without one it follows the
          vocab size: uint16 when every id fits (vocab <= 65536), else uint32
  .npy    pre-tokenised, any 1-D integer array (the header carries the dtype)
  self:N  N sequences sampled from the teacher itself, so a run needs no corpus (cached in the run dir)
A WEIGHT is an upsampling factor: each epoch draws round(WEIGHT * train sequences) of that source (2 = every
sequence twice, 0.5 = a fresh random half each epoch). The text after the last ':' is a weight only when it
parses as a number and SPEC itself is not an existing file, so paths containing ':' still work.

Packing (LRC joins documents as `eos + text + bos` and cuts 2048-token chunks, METHOD.md §2.4): every
document becomes [bos] + tokens + [eos] (bos only if the tokenizer adds one), a source's documents are
concatenated, and the stream is cut into non-overlapping `seq_len`-token sequences; the tail is dropped.
Labels are the inputs themselves, as in LRC: the loss predicts token t+1 from position t inside a sequence,
so a document boundary is just an eos in the middle of a row (plain causal attention, no masking).

Split: the last `val_fraction` of each source's sequences are held out (at least one when the source has
two or more) and never trained on. Order: each epoch is a permutation of (source, sequence) pairs seeded by
(seed, epoch); the position in that stream is two ints, so a checkpoint resumes exactly. Distributed: every
rank walks the same global batches and keeps its contiguous slice of rows, so the union over ranks is the
same global batch whatever the world size.

Builds on model.py (sampling for self:N) and tokenizer.py.
Run as: python data.py --tokenizer DIR --data FILE[:WEIGHT] ... --seq-len T [--out FILE.bin]
"""
import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model import generate

TEXT_EXTENSIONS = (".txt", ".jsonl")
TOKEN_EXTENSIONS = (".bin", ".npy")


class DataError(ValueError):
    """Training data that cannot be used as given (one line: which file, what is wrong, what to do)."""


@dataclass
class Source:
    name: str               # the path (or "self:N") as given on the command line
    tokens: np.ndarray      # (n_tokens,) packed ids; a read-only memmap for .bin / .npy
    weight: float           # upsampling factor per epoch
    documents: int | None   # None when a pre-tokenised file does not say
    n_train: int = 0        # sequences [0, n_train) are trained on ...
    n_val: int = 0          # ... and [n_train, n_train + n_val) are held out


@dataclass
class TokenData:
    sources: list[Source]
    seq_len: int
    val_fraction: float
    vocab_size: int


# ---------------------------------------------------------------------------------------------------------
# Parsing specs and reading files

def parse_spec(spec: str) -> tuple[str, float]:
    """'FILE', 'FILE:WEIGHT', 'self:N' or 'self:N:WEIGHT' -> (name, weight)."""
    if spec.startswith("self:"):
        n, _, weight = spec[5:].partition(":")
        if not (n.isdigit() and int(n) > 0):
            raise DataError(f"{spec}: self:N needs a positive integer N of sequences to sample, e.g. self:256")
        name, weight = f"self:{n}", weight or "1"
    else:
        head, sep, tail = spec.rpartition(":")
        is_weight = sep and head and _is_number(tail) and not os.path.exists(spec)
        name, weight = (head, tail) if is_weight else (spec, "1")
    w = float(weight) if _is_number(weight) else float("nan")
    if not (math.isfinite(w) and w > 0):
        raise DataError(f"{spec}: weight must be a positive number, got {weight!r} - write FILE:2 or FILE:0.5")
    return name, w


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_text(path: str) -> str:
    """A file's contents as text; one-line DataError naming the line and byte of bad UTF-8."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # a BOM is an encoding marker, not text
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 at byte {e.start} (line {line}) - re-encode it, e.g. "
                        f"iconv -f latin1 -t utf-8") from None


def qa_text(question: str, answer: str) -> str:
    """A GSM8K-style item as one document; eval_reasoning.py prompts with the same "Question:/Answer:" frame."""
    return f"Question: {question}\nAnswer: {answer}"


def read_documents(path: str) -> list[str]:
    """The documents of a .txt (the whole file) or .jsonl file (one per line)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file - pass a .txt or .jsonl file")
    text = read_text(path)
    if path.endswith(".txt"):
        return [text] if text.strip() else []
    docs = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}) - fix or delete that line") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            docs.append(row["text"])
        elif isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            docs.append(qa_text(row["question"], row["answer"]))
        else:
            raise DataError(f"{path}:{lineno}: needs a string \"text\" field or \"question\" and \"answer\" "
                            "- convert the file to one of those forms")
    return [d for d in docs if d]  # an empty document would be bos + eos only


def tokenize_documents(docs: list[str], tokenizer) -> np.ndarray:
    """Each document as [bos] + ids + [eos], concatenated into one uint32 stream."""
    # bos only where the checkpoint's own tokenizer puts one first (Llama 3 yes; SmolLM2, Qwen no)
    has_bos = getattr(tokenizer, "add_bos", tokenizer.bos_id is not None)
    parts = [np.asarray(tokenizer.encode(d, bos=has_bos, eos=True), dtype=np.uint32) for d in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id: uint16 up to 65536 ids (nanoGPT), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)


def read_sidecar(path: str) -> dict:
    """FILE.json next to a .bin/.npy file, or {} when there is none."""
    side = path + ".json"
    if not os.path.isfile(side):
        return {}
    try:
        with open(side) as f:
            meta = json.load(f)
        assert isinstance(meta, dict)
        return meta
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        raise DataError(f"{side}: not a JSON object - delete it or write {{\"dtype\": \"uint16\"}}") from None


def read_tokens(path: str, vocab_size: int) -> tuple[np.ndarray, dict]:
    """A pre-tokenised .bin/.npy file as a read-only memmap, checked against the vocab; plus its sidecar."""
    meta = read_sidecar(path)
    if path.endswith(".npy"):
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a .npy array ({str(e)[:80]}) - save it with numpy.save") from None
        if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
            raise DataError(f"{path}: holds a {tokens.dtype} array of shape {tokens.shape} - "
                            "pre-tokenised data is one 1-D integer array")
    else:
        dtype = meta.get("dtype", token_dtype(vocab_size).name)
        if dtype not in ("uint16", "uint32"):
            raise DataError(f"{path}.json: dtype {dtype!r} - use \"uint16\" or \"uint32\"")
        size, dtype = os.path.getsize(path), np.dtype(dtype)
        if size % dtype.itemsize:
            raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} ids - the file is truncated "
                            f"or not {dtype} (say which in {path}.json)")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    if meta.get("vocab_size", vocab_size) != vocab_size:
        raise DataError(f"{path}: tokenised with a vocab of {meta['vocab_size']}, this tokenizer has "
                        f"{vocab_size} - re-tokenise it with this tokenizer")
    # NOTE: one pass over the file; ids beyond the vocab mean another tokenizer or a wrong dtype, which would
    # otherwise surface as an index error deep inside the embedding
    if len(tokens) and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
        raise DataError(f"{path}: token id {int(tokens.max())} is outside the vocab of {vocab_size} - wrong "
                        f"tokenizer, or the wrong dtype (write {path}.json with {{\"dtype\": \"uint32\"}})")
    return tokens, meta


def atomic_write(path: str, payload: bytes):
    """Write a file via a temporary one in the same folder, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def write_tokens(path: str, tokens: np.ndarray, *, vocab_size: int, **meta):
    """Write ids as a raw .bin plus its sidecar FILE.bin.json (dtype, vocab_size, token count, `meta`)."""
    dtype = token_dtype(vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, np.asarray(tokens, dtype=dtype).tobytes())
    meta = dict(meta, dtype=dtype.name, vocab_size=vocab_size, tokens=len(tokens))
    atomic_write(path + ".json", json.dumps(meta, indent=1).encode())


# ---------------------------------------------------------------------------------------------------------
# self:N - sequences sampled from the teacher

def sample_teacher(teacher, tokenizer, n_seq: int, seq_len: int, *, seed: int, batch_size: int = 16) -> np.ndarray:
    """(n_seq * seq_len,) ids: teacher samples at temperature 1, each [start] + sample + [eos], packed."""
    # an unconditional sample starts where a document would: at bos, or after an eos when there is no bos
    start = [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]
    device = teacher.embed_tokens.weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    need, stream = n_seq * seq_len, []
    with tqdm(total=need, desc=f"sampling self:{n_seq}", unit="tok") as bar:
        while len(stream) < need:  # samples that stop early leave room: keep sampling new documents
            rows = min(batch_size, -(-(need - len(stream)) // (seq_len + 2)))  # no more rows than can fit
            for new in generate(teacher, [start] * rows, max_new_tokens=seq_len, temperature=1.0,
                                generator=g, eos_ids=tokenizer.eos_ids, vocab_size=tokenizer.vocab_size):
                doc = start + new + [tokenizer.eos_id]
                bar.update(min(len(doc), need - len(stream)))
                stream.extend(doc)
    return np.asarray(stream[:need], dtype=np.uint32)


def load_self(n_seq: int, tokenizer, seq_len: int, *, teacher, run_dir: str | None, seed: int):
    """self:N as (tokens, sidecar), read from <run_dir>/self-N-seqT-seedS.bin, sampled and cached there first
    if missing. NOTE: the name does not record the teacher: delete the file after changing teachers."""
    if teacher is None or run_dir is None:
        raise DataError(f"self:{n_seq}: sampling needs the teacher model and a run directory - "
                        "pass both (distill.py does), or use a corpus file")
    path = os.path.join(run_dir, f"self-{n_seq}-seq{seq_len}-seed{seed}.bin")
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        tokens = sample_teacher(teacher, tokenizer, n_seq, seq_len, seed=seed)
        write_tokens(path, tokens, vocab_size=tokenizer.vocab_size, sampled="teacher, temperature 1", seed=seed,
                     documents=int((tokens == tokenizer.eos_id).sum()))
    return read_tokens(path, tokenizer.vocab_size)  # a fresh sample is read back too: both runs see a memmap


# ---------------------------------------------------------------------------------------------------------
# Loading every source

def split_sizes(n_seq: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sequence counts: the last val_fraction held out, >= 1 of each when n_seq >= 2."""
    if val_fraction <= 0 or n_seq < 2:
        return n_seq, 0
    n_val = min(n_seq - 1, max(1, int(n_seq * val_fraction)))
    return n_seq - n_val, n_val


def load_sources(specs: list[str], tokenizer, seq_len: int, *, val_fraction: float = 0.05, teacher=None,
                 run_dir: str | None = None, seed: int = 0) -> TokenData:
    """Read, tokenise and split every --data spec (text is tokenised up front, token files memory-mapped)."""
    if not specs:
        raise DataError("no training data - pass --data FILE (.txt, .jsonl, .bin, .npy) or --data self:N")
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len} is too short - a sequence needs at least 2 tokens")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be in [0, 1) - e.g. 0.05")
    if tokenizer.eos_id is None:
        raise DataError("the tokenizer has no eos token - packing needs one between documents; "
                        "add eos_token to tokenizer_config.json")
    sources = []
    for spec in specs:
        name, weight = parse_spec(spec)
        documents = None
        if name.startswith("self:"):
            tokens, meta = load_self(int(name[5:]), tokenizer, seq_len, teacher=teacher, run_dir=run_dir, seed=seed)
            documents = meta.get("documents")
        elif not name.endswith(TEXT_EXTENSIONS + TOKEN_EXTENSIONS):
            raise DataError(f"{name}: unknown extension {os.path.splitext(name)[1]!r} - use .txt, .jsonl, .bin "
                            "or .npy (a weight is written FILE:WEIGHT)")
        elif not os.path.isfile(name):
            raise DataError(f"{name}: no such file - check the path (a weight is written FILE:WEIGHT)")
        elif os.path.getsize(name) == 0:
            raise DataError(f"{name}: empty file - remove it from --data or fill it")
        elif name.endswith(TEXT_EXTENSIONS):
            docs = read_documents(name)
            if not docs:
                raise DataError(f"{name}: no documents (only blank text) - remove it from --data or fill it")
            tokens, documents = tokenize_documents(docs, tokenizer), len(docs)
        else:
            tokens, meta = read_tokens(name, tokenizer.vocab_size)
            documents = meta.get("documents")
        if len(tokens) < seq_len:
            raise DataError(f"{name}: needs at least {seq_len} tokens for one sequence, got {len(tokens)} - "
                            "add data or lower --seq-len")
        n_train, n_val = split_sizes(len(tokens) // seq_len, val_fraction)
        sources.append(Source(name, tokens, weight, documents, n_train, n_val))
    return TokenData(sources, seq_len, val_fraction, tokenizer.vocab_size)


def gather(data: TokenData, rows: list[tuple[int, int]]) -> torch.Tensor:
    """(len(rows), seq_len) long tensor of the (source, sequence index) pairs."""
    T = data.seq_len
    out = np.empty((len(rows), T), dtype=np.int64)
    for r, (s, i) in enumerate(rows):
        out[r] = data.sources[s].tokens[i * T:(i + 1) * T]
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------------------
# Batches: the shuffled, weighted, resumable, rank-sharded training stream

class Batches:
    """Infinite training stream; `next()` gives this rank's (batch_size // world_size, seq_len) long rows."""

    def __init__(self, data: TokenData, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise DataError(f"batch size {batch_size} does not split over {world_size} ranks (rank {rank}) - "
                            "use a multiple of the world size")
        self.data, self.batch_size, self.seed, self.rank, self.world_size = data, batch_size, seed, rank, world_size
        n_train = np.array([s.n_train for s in data.sources])
        self.starts = np.concatenate([[0], np.cumsum(n_train)[:-1]])  # global id of each source's first row
        # round(weight * n) draws per epoch (>= 1 so a small weight never silences a source entirely)
        self.draws = [max(1, round(s.weight * s.n_train)) for s in data.sources]
        self.epoch_len = sum(self.draws)
        self.epoch, self.cursor = 0, 0
        self._order, self._order_epoch = None, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(epoch_len,) global train-sequence ids of one epoch, shuffled by (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for start, draws, src in zip(self.starts, self.draws, self.data.sources):
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

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        """The stream position as JSON-serialisable ints (for a checkpoint's state.json)."""
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "draws": list(self.draws)}

    def load_state_dict(self, state: dict):
        """Continue from a saved position; the data and seed must be those of the saved run."""
        if state.get("seed") != self.seed:
            raise DataError(f"data state was saved with seed {state.get('seed')}, this run has {self.seed} - "
                            "resume with the same --seed")
        if state.get("draws") != self.draws:  # sequences drawn per source and epoch: sizes, weights and split
            raise DataError(f"data changed since the checkpoint (sequences per epoch and source {state.get('draws')}, "
                            f"now {self.draws}) - resume with the same --data, --seq-len and val fraction")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def val_batches(data: TokenData, batch_size: int, *, rank: int = 0, world_size: int = 1):
    """One pass over the held-out sequences in file order, yielding this rank's (<= batch_size // world_size,
    seq_len) rows; the last batch may be short, and with fewer rows than ranks a rank's slice is (0, seq_len)."""
    rows = [(s, i) for s, src in enumerate(data.sources) for i in range(src.n_train, src.n_train + src.n_val)]
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        lo, hi = rank * len(batch) // world_size, (rank + 1) * len(batch) // world_size
        yield gather(data, batch[lo:hi])


# ---------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description="Tokenise and pack training data; print its statistics.")
    parser.add_argument("--tokenizer", required=True, help="checkpoint directory holding the tokenizer")
    parser.add_argument("--data", nargs="+", required=True, help="FILE[:WEIGHT] (.txt .jsonl .bin .npy) or self:N")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="seed of self:N sampling")
    parser.add_argument("--run-dir", default="runs", help="where self:N samples are cached")
    parser.add_argument("--out", help="write every source's packed tokens, concatenated, to this .bin")
    args = parser.parse_args()
    from load_weights import LoadError, load_model
    from tokenizer import TokenizerError, load_tokenizer
    try:
        tok = load_tokenizer(args.tokenizer)
        teacher = load_model(args.tokenizer) if any(d.startswith("self:") for d in args.data) else None
        data = load_sources(args.data, tok, args.seq_len, val_fraction=args.val_fraction, teacher=teacher,
                            run_dir=args.run_dir, seed=args.seed)
    except (DataError, TokenizerError, LoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    stream = Batches(data, 1)
    epoch_len = stream.epoch_len
    print(f"{'source':40s} {'weight':>6s} {'docs':>8s} {'tokens':>12s} {'train':>8s} {'val':>6s} {'share':>6s}")
    for s, draws in zip(data.sources, stream.draws):
        docs = "?" if s.documents is None else str(s.documents)
        print(f"{s.name[-40:]:40s} {s.weight:6g} {docs:>8s} {len(s.tokens):12,d} {s.n_train:8,d} {s.n_val:6,d} "
              f"{draws / epoch_len:6.1%}")
    n_val = sum(s.n_val for s in data.sources)
    print(f"seq_len {data.seq_len}: an epoch is {epoch_len:,d} sequences ({epoch_len * data.seq_len:,d} tokens); "
          f"{n_val:,d} held out")
    if args.out:
        docs = [s.documents for s in data.sources]
        write_tokens(args.out, np.concatenate([np.asarray(s.tokens) for s in data.sources]),
                     vocab_size=tok.vocab_size, documents=None if None in docs else sum(docs), sources=args.data)
        print(f"wrote {args.out} (+ {os.path.basename(args.out)}.json)")


if __name__ == "__main__":
    main()
