"""Where training and measurement text comes from: files, pre-tokenised token files, built-in corpora and
samples of the teacher, each read and checked; data.py packs what they give.

Sources (`--data SPEC ...`, each `SOURCE` or `SOURCE:WEIGHT`):
  FILE.txt      one document (UTF-8), read in pieces of about a MB cut where tokenizer.encode cuts long text
  FILE.jsonl    one document per line, read a group of lines at a time: a "text" field (--text-column NAME),
                GSM8K-style "question" + "answer" (problems.qa_text), or a chat, "messages" (role/content) or
                ShareGPT's "conversations" (from/value), rendered with the teacher's chat template (chat_docs.py)
  FILE.parquet  the same rows as parquet: one shard, a folder of shards or a quoted glob ('d/train-*.parquet'),
                read a batch of rows at a time with pyarrow, an optional dependency (parquet_source.py)
  FILE.bin      pre-tokenised raw little-endian ids (nanoGPT's layout) with the sidecar FILE.bin.json that
                `python data.py --out` writes, a JSON object of named fields: {"dtype": "uint16" | "uint32",
                "tokens": id count, "vocab_size", "documents", ...}. The dtype is never guessed, and the file
                must hold exactly tokens x itemsize bytes, so ids of another width are refused, not read as noise
  FILE.npy      pre-tokenised, any 1-D integer array (its header carries the dtype)
  pydoc         CPython's own documentation topics (module pydoc_data.topics: ~0.5 MB of English technical
                text that every Python install carries), one document per topic
  problems:N    N synthetic worked arithmetic problems (problems.py, 1-4 steps mixed, seeded by --seed);
                N <= 1,000,000 (made in memory: ~1 minute and ~100-300M tokens at the most)
  self:N        N sequences sampled from the teacher (distill.py only), cached in the run directory under
                the teacher's fingerprint; N <= 1,000,000
A WEIGHT in (0, 100] is an upsampling factor (data.py). The text after the last ':' is a weight only when it
parses as a number and SPEC itself is not an existing file, so paths containing ':' still work.

Builds on parquet_source.py (its checks), model.py (sampling for self:N), problems.py and cli.py; text_sources.py
reads the text sources.
Run as: imported by data.py (python data.py --tokenizer DIR --data SOURCE ... prints what the sources hold).
"""
import argparse
import json
import math
import os
import warnings
from decimal import Decimal

import numpy as np
import torch
from tqdm import tqdm

import cli
from model import generate
from parquet_source import check_parquet, is_parquet
from problems import MAX_PROBLEMS, worked_problems

TEXT_EXTENSIONS = (".txt", ".jsonl", ".parquet")
TOKEN_EXTENSIONS = (".bin", ".npy")
MAX_WEIGHT = 100.0
MAX_SELF = 1_000_000  # self:N sequences (each a teacher sample of --seq-len tokens)
TOKEN_DTYPES = ("uint16", "uint32")


class DataError(ValueError):
    """Training data that cannot be used as given (one line: which file, what is wrong, what to do)."""


# ---------------------------------------------------------------------------------------------------------
# Specs, text files and built-in sources

def parse_spec(spec: str) -> tuple[str, float]:
    """'SOURCE' or 'SOURCE:WEIGHT' -> (name, weight); builtins pydoc, problems:N, self:N."""
    head, sep, tail = spec.rpartition(":")
    shown = spec if len(spec) <= 80 else f"...{spec[-77:]}"  # one readable line that keeps the file name
    is_weight = sep and head and _is_number(tail) and not os.path.exists(spec)
    if spec.split(":")[0] in ("self", "problems"):  # self:N[:W], problems:N[:W]
        kind, n, *rest = spec.split(":")
        most = MAX_PROBLEMS if kind == "problems" else MAX_SELF
        # ASCII digits ("²".isdigit() too), few enough that int() is instant (it refuses 4300 and more)
        if not (n.isascii() and n.isdigit() and len(n) <= 20 and int(n) > 0):
            raise DataError(f"{shown}: {kind}:N needs a positive integer N - e.g. {kind}:256")
        if int(n) > most:
            raise DataError(f"{shown}: at most {kind}:{most:,} ({kind}:N is made in memory, before training) - "
                            f"lower N, or weight it to see it more often ({kind}:{most}:2 is every one twice)")
        if len(rest) > 1 or rest == [""]:
            raise DataError(f"{shown}: expected {kind}:N or {kind}:N:WEIGHT - e.g. {kind}:{int(n)}:0.5")
        name, weight = f"{kind}:{int(n)}", rest[0] if rest else "1"
    else:
        name, weight = (head, tail) if is_weight else (spec, "1")
    w = float(weight) if _is_number(weight) else float("nan")
    if not (math.isfinite(w) and 0 < w <= MAX_WEIGHT):
        raise DataError(f"{shown}: weight must be a number in (0, {MAX_WEIGHT:g}], got {weight[:20]!r} - write "
                        "SOURCE:2 or SOURCE:0.5")
    return name, w


def column_name(text: str) -> str:
    """argparse type of --text-column: a non-empty name."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty - name the column that holds the text")
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def json_row(line: str):
    """One JSON value (a line of a .jsonl file, a sidecar); every way it can be bad is a ValueError with a short
    message: integers past Python's int() limit (4300 digits) are read as exact Decimals instead of raising;
    nesting too deep for the parser and unpaired surrogates (not text: they cannot be written back) are refused."""
    try:
        if line.startswith("\ufeff"):  # as json.loads, whose decoder is built once here (JSON_DECODER)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", line, 0)
        row = JSON_DECODER.decode(line)
        if "\\ud" in line or "\\uD" in line:  # an escaped surrogate is text only in a pair (json joins one)
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        return row
    except json.JSONDecodeError as e:
        raise ValueError(e.msg) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate escape such as \\ud800, which is no character") from None


def _json_int(text: str) -> int | Decimal:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return Decimal(text)


JSON_DECODER = json.JSONDecoder(parse_int=_json_int)


def read_text(path: str) -> str:
    """A file's contents as text; one-line DataError naming the line and byte of bad UTF-8."""
    with open(path, "rb") as f:
        return decode(f.read(), path).removeprefix("\ufeff")  # a BOM is an encoding marker, not text


def decode(raw: bytes, path: str, offset: int = 0, line: int = 1) -> str:
    """UTF-8 bytes found at byte `offset` (line `line`) of `path` as text; one-line DataError naming the file's
    byte and line of bad UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw[:e.start].count(b"\n")
        raise DataError(f"{path}: not UTF-8 at byte {offset + e.start} (line {line}) - re-encode it, e.g. "
                        "iconv -f latin1 -t utf-8") from None


def builtin_documents(name: str, seed: int) -> list[str]:
    """The documents of a built-in source: pydoc or problems:N."""
    if name == "pydoc":
        from pydoc_data.topics import topics  # CPython's help() texts, shipped with every Python
        return [topics[key] for key in sorted(topics)]
    return worked_problems(int(name.split(":")[1]), seed=seed)


def is_builtin(name: str) -> bool:
    """Whether a source (a spec without its weight) is made by red: pydoc, problems:N or self:N, not a file."""
    return name == "pydoc" or name.startswith(("self:", "problems:"))


def check_source(name: str, text_column: str = "text"):
    """DataError unless `name` (a spec without its weight) is a built-in source or an existing, non-empty file
    of a known kind (parquet: every shard opened, its columns found): the checks a tool runs before it loads
    any model."""
    if is_builtin(name):
        return
    if is_parquet(name):
        return check_parquet(name, text_column, DataError)
    if not name.endswith(TEXT_EXTENSIONS + TOKEN_EXTENSIONS):
        raise DataError(f"{name}: unknown source {os.path.splitext(name)[1] or name!r} - use a .txt, .jsonl, "
                        ".parquet (or a folder or glob of shards), .bin or .npy file, pydoc, problems:N or self:N "
                        "(a weight is written SOURCE:WEIGHT)")
    if not os.path.isfile(name):
        raise DataError(f"{name}: no such file - check the path (a weight is written FILE:WEIGHT)")
    if os.path.getsize(name) == 0:
        raise DataError(f"{name}: empty file - remove it or fill it")


def is_text_source(name: str) -> bool:
    """Whether a source is text to tokenise (built-in, .txt, .jsonl, parquet), not ids or teacher samples."""
    return name == "pydoc" or name.startswith("problems:") or name.endswith(TEXT_EXTENSIONS) or is_parquet(name)


# ---------------------------------------------------------------------------------------------------------
# Pre-tokenised files

def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id: uint16 up to 65536 ids (nanoGPT), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)


def read_sidecar(path: str) -> dict:
    """FILE.json next to a .bin/.npy file, or {} when there is none; its known fields checked (others are kept
    for whoever reads them: the sidecar is a JSON object of named fields)."""
    side = path + ".json"
    if not os.path.isfile(side):
        return {}
    return _sidecar(side)


def _sidecar(side: str) -> dict:
    try:
        with open(side, "rb") as f:
            meta = json_row(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):  # UnicodeDecodeError is a ValueError too; named for the reader
        meta = None
    if not isinstance(meta, dict):
        raise DataError(f"{side}: not a JSON object - delete it and write the data again with python data.py "
                        "--out")
    if "dtype" in meta and meta["dtype"] not in TOKEN_DTYPES:
        raise DataError(f"{side}: dtype {str(meta['dtype'])[:40]!r} is not a token dtype - use \"uint16\" or "
                        "\"uint32\"")
    for key in ("tokens", "vocab_size", "documents"):  # counts: a bool, float or string is a damaged sidecar
        if key in meta and not (type(meta[key]) is int and meta[key] >= 0):
            raise DataError(f"{side}: {key} {str(meta[key])[:40]!r} is not a count - write the data again with "
                            "python data.py --out")
    return meta


def read_tokens(path: str, vocab_size: int) -> tuple[np.ndarray, dict]:
    """A pre-tokenised .bin/.npy file as a read-only memmap, checked against its sidecar and the vocab."""
    meta = read_sidecar(path)
    if path.endswith(".npy"):
        try:
            with warnings.catch_warnings():  # numpy warns about odd headers: the one line below says enough
                warnings.simplefilter("ignore")
                tokens = np.load(path, mmap_mode="r")
        except Exception as e:  # numpy's header parser raises ValueError, EOFError, even tokenize.TokenError
            raise DataError(f"{path}: not a .npy array ({str(e)[:80]}) - save it with numpy.save") from None
        if not isinstance(tokens, np.ndarray):  # an .npz archive under a .npy name
            tokens.close()
            raise DataError(f"{path}: an .npz archive, not one array - save the ids with numpy.save")
        if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
            raise DataError(f"{path}: holds a {tokens.dtype} array of shape {tokens.shape} - "
                            "pre-tokenised data is one 1-D integer array")
    else:
        # uint16 and uint32 files look alike: a uint32 file read as uint16 is noise of a plausible size, so a
        # .bin needs both its dtype and its id count, and bytes = count x itemsize. Every sidecar red ever wrote
        # has both; one without a count was written by hand, and is refused rather than trusted
        if "dtype" not in meta:
            raise DataError(f"{path}: no {os.path.basename(path)}.json saying its dtype and id count - write one, "
                            f"e.g. {{\"dtype\": \"{token_dtype(vocab_size).name}\", \"tokens\": <ids in the file>}}, "
                            "or pack the text again with python data.py --out")
        size, dtype = os.path.getsize(path), np.dtype(meta["dtype"])
        if size % dtype.itemsize:
            raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} ids - the file is truncated "
                            f"or not {dtype}")
        if "tokens" not in meta:
            raise DataError(f"{path}.json: says dtype {dtype} but not how many ids (\"tokens\") - add \"tokens\": "
                            "<ids in the file> (a wrong dtype then shows), or pack the text again with python "
                            "data.py --out")
        if size // dtype.itemsize != meta["tokens"]:
            raise DataError(f"{path}: holds {size // dtype.itemsize} ids, its sidecar says {meta['tokens']} "
                            f"({size:,} bytes as {dtype}) - the file is truncated, was replaced or is not {dtype}; "
                            "write it again")
        tokens = np.memmap(path, dtype=dtype, mode="r")
    if "tokens" in meta and meta["tokens"] != len(tokens):
        raise DataError(f"{path}: holds {len(tokens)} ids, its sidecar says {meta['tokens']} - the file is "
                        "truncated or was replaced; write it again")
    if meta.get("vocab_size", vocab_size) != vocab_size:
        raise DataError(f"{path}: tokenised with a vocab of {meta['vocab_size']}, this tokenizer has "
                        f"{vocab_size} - re-tokenise it with this tokenizer")
    # NOTE: one pass over the file; ids beyond the vocab mean another tokenizer, which would otherwise surface
    # as an index error deep inside the embedding
    if len(tokens) and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
        bad = int(tokens.max()) if int(tokens.max()) >= vocab_size else int(tokens.min())
        raise DataError(f"{path}: token id {bad} is outside the vocab of {vocab_size} - "
                        "tokenised with another tokenizer?")
    return tokens, meta


def write_tokens(path: str, tokens: np.ndarray, *, vocab_size: int, **meta):
    """Write ids as a raw .bin plus its sidecar FILE.bin.json (dtype, vocab_size, token count, `meta`)."""
    dtype = token_dtype(vocab_size)
    cli.atomic_write(path, np.asarray(tokens, dtype=dtype).tobytes())
    cli.write_json(path + ".json", dict(meta, dtype=dtype.name, vocab_size=vocab_size, tokens=len(tokens)))


def is_token_sidecar(side: str) -> bool:
    """A FILE.bin.json as write_tokens writes it (dtype, vocab_size and tokens, all valid): what data.py --out
    may replace. A hand-written {"dtype": ...} is the user's and is not."""
    try:
        meta = _sidecar(side)
    except (DataError, OSError):
        return False
    return {"dtype", "vocab_size", "tokens"} <= set(meta)


def is_token_file(path: str) -> bool:
    """A .bin written by write_tokens: its sidecar is one and its size is its count of ids (what data.py --out
    may replace; a .bin without such a sidecar is not red's)."""
    side = path + ".json"
    if not (os.path.isfile(path) and os.path.isfile(side) and is_token_sidecar(side)):
        return False
    meta = _sidecar(side)
    return os.path.getsize(path) == meta["tokens"] * np.dtype(meta["dtype"]).itemsize


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


def load_self(n_seq: int, tokenizer, seq_len: int, *, teacher, run_dir: str | None, seed: int,
              fingerprint: str) -> tuple[np.ndarray, dict]:
    """self:N as (tokens, sidecar), read from the run directory's cache, sampled and cached there first when
    missing. The file name carries the teacher's fingerprint, so another teacher never reuses the samples,
    and read_tokens checks the token count, so a truncated cache is refused."""
    if teacher is None or run_dir is None or not fingerprint:
        raise DataError(f"self:{n_seq}: sampling needs the teacher, its fingerprint and a run directory - "
                        "use it through distill.py, or pass a corpus file")
    path = os.path.join(run_dir, f"self-{n_seq}-seq{seq_len}-seed{seed}-{fingerprint[:16]}.bin")
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        tokens = sample_teacher(teacher, tokenizer, n_seq, seq_len, seed=seed)
        write_tokens(path, tokens, vocab_size=tokenizer.vocab_size, sampled="teacher, temperature 1", seed=seed,
                     teacher=fingerprint, documents=int((tokens == tokenizer.eos_id).sum()))
    return read_tokens(path, tokenizer.vocab_size)  # a fresh sample is read back too: both runs see a memmap
