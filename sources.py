"""Where training and measurement text comes from: files, pre-tokenised token files, built-in corpora and
samples of the teacher, each read and checked; data.py packs what they give.

Sources (`--data SPEC ...`, each `SOURCE` or `SOURCE:WEIGHT`):
  FILE.txt      one document (UTF-8)
  FILE.jsonl    one document per line: a "text" field, or GSM8K-style "question" + "answer" (problems.qa_text)
  FILE.bin      pre-tokenised raw little-endian ids (nanoGPT's layout) with the sidecar FILE.bin.json that
                `python data.py --out` writes ({"dtype": "uint16" | "uint32", ...}): the dtype is never guessed
  FILE.npy      pre-tokenised, any 1-D integer array (its header carries the dtype)
  pydoc         CPython's own documentation topics (module pydoc_data.topics: ~0.5 MB of English technical
                text that every Python install carries), one document per topic
  problems:N    N synthetic worked arithmetic problems (problems.py, 1-4 steps mixed, seeded by --seed)
  self:N        N sequences sampled from the teacher (distill.py only), cached in the run directory under
                the teacher's fingerprint
A WEIGHT in (0, 100] is an upsampling factor (data.py). The text after the last ':' is a weight only when it
parses as a number and SPEC itself is not an existing file, so paths containing ':' still work.

Builds on model.py (sampling for self:N), problems.py and cli.py.
Run as: imported by data.py (python data.py --tokenizer DIR --data SOURCE ... prints what the sources hold).
"""
import json
import math
import os

import numpy as np
import torch
from tqdm import tqdm

import cli
from model import generate
from problems import qa_text, worked_problems

TEXT_EXTENSIONS = (".txt", ".jsonl")
TOKEN_EXTENSIONS = (".bin", ".npy")
MAX_WEIGHT = 100.0


class DataError(ValueError):
    """Training data that cannot be used as given (one line: which file, what is wrong, what to do)."""


# ---------------------------------------------------------------------------------------------------------
# Specs, text files and built-in sources

def parse_spec(spec: str) -> tuple[str, float]:
    """'SOURCE' or 'SOURCE:WEIGHT' -> (name, weight); builtins pydoc, problems:N, self:N."""
    head, sep, tail = spec.rpartition(":")
    is_weight = sep and head and _is_number(tail) and not os.path.exists(spec)
    if spec.split(":")[0] in ("self", "problems"):  # self:N[:W], problems:N[:W]
        kind, n, *rest = spec.split(":") + [""]
        if not (n.isdigit() and int(n) > 0):
            raise DataError(f"{spec}: {kind}:N needs a positive integer N, e.g. {kind}:256")
        name, weight = f"{kind}:{int(n)}", rest[0] or "1"
    else:
        name, weight = (head, tail) if is_weight else (spec, "1")
    w = float(weight) if _is_number(weight) else float("nan")
    if not (math.isfinite(w) and 0 < w <= MAX_WEIGHT):
        raise DataError(f"{spec}: weight must be a number in (0, {MAX_WEIGHT:g}], got {weight!r} - write "
                        "SOURCE:2 or SOURCE:0.5")
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


def read_documents(path: str) -> list[str]:
    """The non-blank documents of a .txt (the whole file) or .jsonl file (one per line)."""
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
    return [d for d in docs if d.strip()]  # a blank document would be bos + eos only


def builtin_documents(name: str, seed: int) -> list[str]:
    """The documents of a built-in source: pydoc or problems:N."""
    if name == "pydoc":
        from pydoc_data.topics import topics  # CPython's help() texts, shipped with every Python
        return [topics[key] for key in sorted(topics)]
    return worked_problems(int(name.split(":")[1]), seed=seed)


def check_source(name: str):
    """DataError unless `name` (a spec without its weight) is a built-in source or an existing, non-empty file
    of a known kind: the checks a tool runs before it loads any model."""
    if name.startswith(("self:", "problems:")) or name == "pydoc":
        return
    if not name.endswith(TEXT_EXTENSIONS + TOKEN_EXTENSIONS):
        raise DataError(f"{name}: unknown source {os.path.splitext(name)[1] or name!r} - use a .txt, .jsonl, .bin "
                        "or .npy file, pydoc, problems:N or self:N (a weight is written SOURCE:WEIGHT)")
    if not os.path.isfile(name):
        raise DataError(f"{name}: no such file - check the path (a weight is written FILE:WEIGHT)")
    if os.path.getsize(name) == 0:
        raise DataError(f"{name}: empty file - remove it or fill it")


# ---------------------------------------------------------------------------------------------------------
# Pre-tokenised files

def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every id: uint16 up to 65536 ids (nanoGPT), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)


def read_sidecar(path: str) -> dict:
    """FILE.json next to a .bin/.npy file, or {} when there is none."""
    side = path + ".json"
    if not os.path.isfile(side):
        return {}
    try:
        with open(side, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise DataError(f"{side}: not a JSON object - delete it, or write {{\"dtype\": \"uint16\"}}")
    return meta


def read_tokens(path: str, vocab_size: int) -> tuple[np.ndarray, dict]:
    """A pre-tokenised .bin/.npy file as a read-only memmap, checked against its sidecar and the vocab."""
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
        if "dtype" not in meta:  # uint16 and uint32 files look alike: a wrong guess silently trains on noise
            raise DataError(f"{path}: no {os.path.basename(path)}.json saying its dtype - write one, e.g. "
                            f"echo '{{\"dtype\": \"{token_dtype(vocab_size).name}\"}}' > {path}.json")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise DataError(f"{path}.json: dtype {meta['dtype']!r} - use \"uint16\" or \"uint32\"")
        size, dtype = os.path.getsize(path), np.dtype(meta["dtype"])
        if size % dtype.itemsize:
            raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} ids - the file is truncated "
                            f"or not {dtype}")
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
        raise DataError(f"{path}: token id {int(tokens.max())} is outside the vocab of {vocab_size} - "
                        "tokenised with another tokenizer?")
    return tokens, meta


def write_tokens(path: str, tokens: np.ndarray, *, vocab_size: int, **meta):
    """Write ids as a raw .bin plus its sidecar FILE.bin.json (dtype, vocab_size, token count, `meta`)."""
    dtype = token_dtype(vocab_size)
    cli.atomic_write(path, np.asarray(tokens, dtype=dtype).tobytes())
    cli.write_json(path + ".json", dict(meta, dtype=dtype.name, vocab_size=vocab_size, tokens=len(tokens)))


def is_token_file(path: str) -> bool:
    """A .bin written by write_tokens (its sidecar names a dtype): what data.py --out may replace."""
    try:
        return "dtype" in read_sidecar(path)
    except DataError:
        return False


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
