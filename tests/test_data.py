"""Tests for data.py and sources.py: exact packing (one rule for training and measurement), deterministic
shuffling, exact resumption, rank sharding, the held-out split, source weights, the built-in sources, token-file
round trips and their sidecar checks, self:N sampling with its fingerprinted cache, and every one-line DataError.

Most tests use a byte-level stand-in tokenizer (a collaborator of data.py, not the thing under test); the slow
ones use tokenizer.py and the real example teacher.

Builds on data.py, sources.py and tokenizer.py, with conftest.py's tiny teachers.
Run as: OMP_NUM_THREADS=1 pytest tests/test_data.py      (add -m "not slow" to skip the real-teacher tests)
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

from data import (Batches, cut_windows, gather, held_out, load_sources, load_windows, split_sizes,
                  tokenize_documents)
from sources import DataError, parse_spec, read_tokens, write_tokens


class ByteTokenizer:
    """Stand-in tokenizer: UTF-8 bytes shifted by 3 (0 unused, 1 = bos, 2 = eos)."""

    def __init__(self, bos=True, vocab_size=259):
        self.bos_id, self.eos_id, self.eos_ids, self.vocab_size = (1 if bos else None), 2, [2], vocab_size

    def encode(self, text, *, bos=False, eos=False):
        ids = [b + 3 for b in text.encode("utf-8")]
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


TOK = ByteTokenizer()


def write(path, text: str | bytes) -> str:
    """Write a test file and return its path as a string."""
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(text)
    return str(path)


BIG = ByteTokenizer(vocab_size=5000)  # room for token files whose ids never repeat


def token_file(tmp_path, name: str, n: int, start: int = 3) -> str:
    """A .bin of n ids counting up from `start`: every row is distinct and names its source and position."""
    path = str(tmp_path / name)
    write_tokens(path, start + np.arange(n), vocab_size=BIG.vocab_size)
    return path


def rows_as_set(t: torch.Tensor) -> set:
    return {tuple(r) for r in t.tolist()}


# ---------------------------------------------------------------------------------------------------------
# Parsing and packing

def test_parse_spec(tmp_path):
    assert parse_spec("a.txt") == ("a.txt", 1.0)
    assert parse_spec("a.txt:2.5") == ("a.txt", 2.5)
    assert parse_spec("dir:x/a.txt") == ("dir:x/a.txt", 1.0)  # not a number after the ':' -> part of the path
    assert parse_spec("self:8") == ("self:8", 1.0)
    assert parse_spec("self:8:0.5") == ("self:8", 0.5)
    assert parse_spec("pydoc") == ("pydoc", 1.0) and parse_spec("pydoc:0.5") == ("pydoc", 0.5)
    assert parse_spec("problems:200:3") == ("problems:200", 3.0)
    literal = write(tmp_path / "odd:3", "x")  # an existing file whose name ends in ':<number>' stays a path
    assert parse_spec(literal) == (literal, 1.0)
    for bad in ("a.txt:0", "a.txt:-1", "a.txt:nan", "a.txt:inf", "a.txt:1e15", "self:0", "self:x", "self:4:big",
                "problems:0"):
        with pytest.raises(DataError):
            parse_spec(bad)


def test_packing_reproduces_documents_exactly(tmp_path):
    docs = ["first document", "zweites Dokument \u00fc\u2028", ""]  # the empty one is dropped
    jsonl = write(tmp_path / "d.jsonl", "\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n\n"
                  + json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    txt = write(tmp_path / "t.txt", "\ufeffa whole file is one document\nwith two lines")
    data = load_sources([jsonl, txt], TOK, seq_len=8, val_fraction=0.0)
    expected = []
    for d in docs[:2] + ["Question: 1+1?\nAnswer: 2"]:
        expected += [1] + TOK.encode(d) + [2]
    assert data.sources[0].tokens.tolist() == expected
    assert data.sources[0].documents == 3
    assert data.sources[1].tokens.tolist() == [1] + TOK.encode("a whole file is one document\nwith two lines") + [2]
    # sequences are consecutive, non-overlapping seq_len windows; the tail shorter than one is dropped
    n = len(expected) // 8
    assert data.sources[0].n_train == n
    assert gather(data, [(0, i) for i in range(n)]).flatten().tolist() == expected[:n * 8]


def test_measurement_windows_are_the_training_windows(tmp_path):
    """load_windows (what erank.py, init_select.py and eval_reasoning.py read) packs exactly as training does."""
    text = write(tmp_path / "t.jsonl", "\n".join(json.dumps({"text": f"doc {i} " * (i % 5 + 1)}) for i in range(40)))
    windows = load_windows(text, TOK, 16)
    data = load_sources([text], TOK, seq_len=16, val_fraction=0.0)
    assert torch.equal(windows, gather(data, [(0, i) for i in range(data.sources[0].n_train)]))
    stream = tokenize_documents([f"doc {i} " * (i % 5 + 1) for i in range(40)], TOK)
    assert windows.tolist() == cut_windows(stream, 16).tolist() and len(windows) == len(stream) // 16
    assert torch.equal(load_windows(text, TOK, 16, limit=3), windows[:3])


def test_builtin_sources(tmp_path):
    """pydoc is CPython's documentation topics (offline, in every Python); problems:N the seeded worked problems."""
    from pydoc_data.topics import topics
    from problems import worked_problems
    pydoc = load_sources(["pydoc"], TOK, seq_len=64).sources[0]
    assert pydoc.documents == len(topics) > 50 and len(pydoc.tokens) > 300_000
    problems = load_sources(["problems:30"], TOK, seq_len=64, seed=4).sources[0]
    assert problems.tokens.tolist() == tokenize_documents(worked_problems(30, seed=4), TOK).tolist()


def test_no_bos_tokenizer_packs_eos_only(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "ab"}\n{"text": "cd"}\n')
    data = load_sources([path], ByteTokenizer(bos=False), seq_len=2, val_fraction=0.0)
    assert data.sources[0].tokens.tolist() == [100, 101, 2, 102, 103, 2]


def test_split_sizes():
    assert split_sizes(100, 0.05) == (95, 5)
    assert split_sizes(4, 0.05) == (3, 1)  # at least one held out ...
    assert split_sizes(1, 0.5) == (1, 0)   # ... but never the only sequence
    assert split_sizes(10, 0.0) == (10, 0)


# ---------------------------------------------------------------------------------------------------------
# The training stream

@pytest.fixture
def two_sources(tmp_path):
    return load_sources([token_file(tmp_path, "a.bin", 200), token_file(tmp_path, "b.bin", 120, start=1000)],
                        BIG, seq_len=4, val_fraction=0.1)


def test_epoch_covers_every_train_sequence_once_and_shuffle_is_seeded(two_sources):
    data = two_sources
    stream = Batches(data, 9, seed=3)
    assert stream.epoch_len == 45 + 27
    epoch = torch.cat([stream.next() for _ in range(8)])  # 72 rows = exactly one epoch
    train = gather(data, [(0, i) for i in range(45)] + [(1, i) for i in range(27)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, train.tolist()))
    assert torch.equal(Batches(data, 9, seed=3).next(), epoch[:9])
    other = Batches(data, 9, seed=4).next()
    assert not torch.equal(other, epoch[:9])
    assert not torch.equal(stream.next(), epoch[:9])  # the next epoch is reshuffled (seed, epoch)


def test_resume_yields_exactly_the_uninterrupted_batches(two_sources):
    uninterrupted = Batches(two_sources, 5, seed=1)
    reference = [uninterrupted.next() for _ in range(40)]  # 200 rows: crosses epoch boundaries mid-batch
    first = Batches(two_sources, 5, seed=1)
    for _ in range(17):
        first.next()
    state = json.loads(json.dumps(first.state_dict()))  # as it goes through a checkpoint's state.json
    resumed = Batches(two_sources, 5, seed=1)
    resumed.load_state_dict(state)
    for k in range(17, 40):
        assert torch.equal(resumed.next(), reference[k])
    with pytest.raises(DataError, match="seed"):
        Batches(two_sources, 5, seed=2).load_state_dict(state)
    reweighted = load_sources([s.name + ":2" for s in two_sources.sources], BIG, seq_len=4, val_fraction=0.1)
    with pytest.raises(DataError, match="data changed"):
        Batches(reweighted, 5, seed=1).load_state_dict(state)


def test_ranks_split_each_global_batch(two_sources):
    single = Batches(two_sources, 8, seed=0)
    ranks = [Batches(two_sources, 8, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):
        parts = [r.next() for r in ranks]
        assert parts[0].shape == (4, 4)
        assert torch.equal(torch.cat(parts), single.next())
    # a checkpoint taken by one process resumes on two ranks with the same global batches
    state = single.state_dict()
    for r in ranks:
        r.load_state_dict(state)
    assert torch.equal(torch.cat([r.next() for r in ranks]), single.next())
    with pytest.raises(DataError, match="multiple of the world size"):
        Batches(two_sources, 5, world_size=2)


def test_train_and_val_are_disjoint(two_sources):
    data = two_sources
    val, sources = held_out(data)
    assert val.shape == (5 + 3, 4) and sources == [0] * 5 + [1] * 3
    assert torch.equal(val, gather(data, [(0, i) for i in range(45, 50)] + [(1, i) for i in range(27, 30)]))
    stream = Batches(data, 6, seed=0)
    seen = torch.cat([stream.next() for _ in range(60)])  # five epochs
    assert not rows_as_set(seen) & rows_as_set(val)  # every row of this data is distinct, so rows identify spans
    capped, sources = held_out(data, limit=4)  # every source measured, even under a small cap
    assert sources == [0, 0, 1, 1] and torch.equal(capped, val[[0, 1, 5, 6]])


def test_weights_set_each_sources_share(tmp_path):
    a, b = token_file(tmp_path, "a.bin", 400), token_file(tmp_path, "b.bin", 400, start=1000)
    data = load_sources([a, f"{b}:3"], BIG, seq_len=4, val_fraction=0.0)
    stream = Batches(data, 10, seed=0)
    assert stream.draws == [100, 300]
    rows = torch.cat([stream.next() for _ in range(200)])  # five epochs
    from_b = (rows[:, 0] >= 1000).float().mean().item()
    assert abs(from_b - 0.75) < 0.01
    data = load_sources([a, f"{b}:0.5"], BIG, seq_len=4, val_fraction=0.0)
    stream = Batches(data, 10, seed=0)
    rows = torch.cat([stream.next() for _ in range(15)])  # one epoch: 100 + 50, no row twice
    assert (rows[:, 0] >= 1000).sum().item() == 50 and len(rows_as_set(rows)) == 150


# ---------------------------------------------------------------------------------------------------------
# Token files

def test_bin_and_npy_round_trip(tmp_path):
    ids = np.random.default_rng(0).integers(0, 259, size=1000)
    text_data = load_sources([write(tmp_path / "t.txt", "round trip " * 40)], TOK, seq_len=16)
    for path, tokens in ((str(tmp_path / "x.bin"), ids), (str(tmp_path / "t.bin"), text_data.sources[0].tokens)):
        write_tokens(path, tokens, vocab_size=259, documents=1)
        data = load_sources([path], TOK, seq_len=16)
        assert np.array_equal(data.sources[0].tokens, tokens) and data.sources[0].documents == 1
        assert data.sources[0].tokens.dtype == np.uint16
    np.save(tmp_path / "x.npy", ids.astype(np.int32))
    assert np.array_equal(load_sources([str(tmp_path / "x.npy")], TOK, seq_len=16).sources[0].tokens, ids)
    # a vocab past 65536 needs uint32; the sidecar says so, and without it the vocab size decides
    big = ByteTokenizer(vocab_size=70000)
    wide = np.array([3, 69999, 65536, 5] * 8)
    write_tokens(str(tmp_path / "w.bin"), wide, vocab_size=70000)
    assert json.load(open(tmp_path / "w.bin.json"))["dtype"] == "uint32"
    assert load_sources([str(tmp_path / "w.bin")], big, seq_len=4).sources[0].tokens.tolist() == wide.tolist()
    os.remove(tmp_path / "w.bin.json")  # without its sidecar a .bin is refused: uint16 and uint32 look alike
    with pytest.raises(DataError, match="no w.bin.json saying its dtype"):
        read_tokens(str(tmp_path / "w.bin"), 70000)
    write_tokens(str(tmp_path / "cut.bin"), wide, vocab_size=70000)
    with open(tmp_path / "cut.bin", "r+b") as f:  # truncated after its sidecar was written
        f.truncate(4 * 16)
    with pytest.raises(DataError, match="holds 16 ids, its sidecar says 32"):
        read_tokens(str(tmp_path / "cut.bin"), 70000)


# ---------------------------------------------------------------------------------------------------------
# Errors: one line, naming the file

def _error_cases(tmp_path):
    t = tmp_path
    short = write(t / "short.txt", "tiny")
    odd_with_sidecar = write(t / "odd2.bin", b"\x05\x00\x06")
    write(t / "odd2.bin.json", '{"dtype": "uint16"}')
    far_with_sidecar = write(t / "far.bin", np.array([5, 300] * 40, dtype=np.uint16).tobytes())
    write(t / "far.bin.json", '{"dtype": "uint16", "tokens": 80}')  # a count: a hand-written sidecar needs one
    return [
        ([str(t / "missing.txt")], "missing.txt", "no such file"),
        ([write(t / "empty.jsonl", "")], "empty.jsonl", "empty"),
        ([write(t / "blank.txt", "  \n\n")], "blank.txt", "no documents"),
        ([short], "short.txt", "needs at least 64 tokens"),
        ([write(t / "latin.txt", b"line one\ncaf\xe9\n")], "latin.txt", "byte 12 (line 2)"),
        ([write(t / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')], "bad.jsonl:2", "malformed JSON"),
        ([write(t / "field.jsonl", '{"text": "ok"}\n\n{"body": "x"}\n')], "field.jsonl:3", "\"text\" field"),
        ([write(t / "data.csv", "a,b\n")], "data.csv", "unknown source '.csv'"),
        ([f"{short}:-2"], "short.txt", "weight must be a number in (0, 100]"),
        ([write(t / "odd.bin", b"\x05\x00\x06")], "odd.bin", "saying its dtype"),
        ([odd_with_sidecar], "odd2.bin", "not a whole number of uint16"),
        ([far_with_sidecar], "far.bin", "outside the vocab"),
        ([write(t / "obj.npy", b"not numpy at all")], "obj.npy", "not a .npy array"),
        (["self:4"], "self:4", "needs the teacher, its fingerprint and a run directory"),
    ]


def test_every_data_error_is_one_line_naming_the_file(tmp_path):
    for specs, name, what in _error_cases(tmp_path):
        with pytest.raises(DataError) as err:
            load_sources(specs, TOK, seq_len=64)
        message = str(err.value)
        assert "\n" not in message and name in message and what in message and " - " in message, message


# ---------------------------------------------------------------------------------------------------------
# self:N on a tiny random model

def test_self_samples_are_full_length_seeded_and_cached(tmp_path, monkeypatch):
    from model import ModelArgs, Transformer
    torch.manual_seed(0)  # a random model.py Transformer is enough to sample from (and needs no transformers)
    teacher = Transformer(ModelArgs("llama", vocab_size=300, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    head_dim=16, ffn_dim=64, norm_eps=1e-6, rope_theta=10000.0)).eval()
    tok = ByteTokenizer(vocab_size=300)
    run_dir = str(tmp_path / "run")
    data = load_sources(["self:6"], tok, seq_len=16, teacher=teacher, run_dir=run_dir, seed=5, fingerprint="f" * 64)
    tokens = data.sources[0].tokens
    assert len(tokens) == 6 * 16 and tokens[0] == tok.bos_id
    assert (data.sources[0].n_train, data.sources[0].n_val) == (5, 1)
    # every document is [bos] + sample + [eos] (a sampled eos ends the sample), so each eos is followed by bos
    eos_at = np.flatnonzero(np.asarray(tokens[:-1]) == tok.eos_id)
    assert len(eos_at) > 1 and all(tokens[i + 1] == tok.bos_id for i in eos_at)
    cache = os.path.join(run_dir, "self-6-seq16-seed5-" + "f" * 16 + ".bin")  # named by the teacher's fingerprint
    assert os.path.isfile(cache) and json.load(open(cache + ".json"))["tokens"] == 96
    sampled = []
    monkeypatch.setattr("sources.sample_teacher", lambda *a, **k: sampled.append(1) or np.asarray(tokens))
    again = load_sources(["self:6"], tok, seq_len=16, teacher=teacher, run_dir=run_dir, seed=5, fingerprint="f" * 64)
    assert np.array_equal(again.sources[0].tokens, tokens) and not sampled  # the cache, not a new sample
    load_sources(["self:6"], tok, seq_len=16, teacher=teacher, run_dir=run_dir, seed=5, fingerprint="e" * 64)
    assert sampled == [1]  # another teacher never reuses those samples
    with open(cache, "r+b") as f:  # a cache cut short (a full disk, a kill outside our atomic write)
        f.truncate(10)
    with pytest.raises(DataError, match="holds 5 ids, its sidecar says 96"):
        load_sources(["self:6"], tok, seq_len=16, teacher=teacher, run_dir=run_dir, seed=5, fingerprint="f" * 64)


# ---------------------------------------------------------------------------------------------------------
# The command line (in-process, with the stand-in tokenizer in place of tokenizer.load_tokenizer)

def run_main(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """Run data.main() with these arguments; return (exit code, stdout, stderr)."""
    import data
    monkeypatch.setattr("tokenizer.load_tokenizer", lambda path: TOK)
    monkeypatch.setattr(sys, "argv", ["data.py", "--tokenizer", "unused", *argv])
    try:
        data.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_stats_and_writes_a_loadable_bin(tmp_path, monkeypatch, capsys):
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(50)]
    corpus = write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    out = str(tmp_path / "c.bin")
    code, stdout, _ = run_main(monkeypatch, capsys, "--data", f"{corpus}:2", "--seq-len", "32", "--out", out)
    assert code == 0 and "an epoch is" in stdout and "wrote" in stdout
    packed = load_sources([corpus], TOK, seq_len=32).sources[0].tokens
    reloaded = load_sources([out], TOK, seq_len=32).sources[0]
    assert np.array_equal(reloaded.tokens, packed) and reloaded.documents == 50
    code, _, stderr = run_main(monkeypatch, capsys, "--data", str(tmp_path / "nope.txt"))
    assert code == 2 and stderr.startswith("error: ") and "nope.txt: no such file" in stderr
    assert stderr.count("\n") == 1
    code, _, stderr = run_main(monkeypatch, capsys, "--data", corpus, "--seq-len", "32", "--out", corpus + ".bin")
    assert code == 0  # a token file may replace a token file ...
    code, _, stderr = run_main(monkeypatch, capsys, "--data", corpus, "--seq-len", "32", "--out",
                               str(tmp_path / "x.bin"))
    for target in (corpus, str(tmp_path)):  # ... but never its input, nor a directory
        code, _, stderr = run_main(monkeypatch, capsys, "--data", corpus, "--seq-len", "32", "--out", target)
        assert code == 2 and stderr.count("\n") == 1, stderr


# ---------------------------------------------------------------------------------------------------------
# The real tokenizer and teacher

@pytest.mark.slow
def test_real_tokenizer_and_self_sampling(example_teacher, tmp_path):
    from load_weights import load_model
    from tokenizer import load_tokenizer
    tok = load_tokenizer(example_teacher)
    gsm = write(tmp_path / "gsm.jsonl", "\n".join(json.dumps({"question": f"What is {i} + {i}?",
                                                              "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
                                                  for i in range(40)) + "\n")
    data = load_sources([gsm], tok, seq_len=32)
    assert tok.decode(data.sources[0].tokens[:40].tolist()).count("Question: What is 0 + 0?\nAnswer: 0 + 0 = 0") == 1
    assert (data.sources[0].tokens == tok.eos_id).sum() == 40
    teacher = load_model(example_teacher)
    run_dir = str(tmp_path / "run")
    kw = dict(teacher=teacher, run_dir=run_dir, seed=0, fingerprint="a" * 64)
    first = load_sources(["self:4"], tok, seq_len=32, **kw).sources[0].tokens
    second = load_sources(["self:4"], tok, seq_len=32, **kw).sources[0].tokens
    assert len(first) == 128 and np.array_equal(first, second) and isinstance(second, np.memmap)
