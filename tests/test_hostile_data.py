"""Trust nothing it reads, for data and evaluation files: a table of hostile token files, sidecars, JSONL rows,
source specs, generator sizes and outputs aimed at files red did not write, each run through a real CLI
(data.py, eval_reasoning.py, distill.py, erank.py) and each ending with exit status 2, exactly one `error:`
line and not one file changed; then the rules underneath, one by one: the training stream's saved position
checked field by field, a .bin's id count against its size, what data.py --out and --make-synthetic may
replace, the generator's bounds, and gold answers longer than Python's int() reads.

Builds on data.py, sources.py, eval_reasoning.py, problems.py, distill.py, erank.py and checkpoint.py, with
conftest.py's tiny teacher and test_cli.py's snapshot.
Run as: pytest tests/test_hostile_data.py -q
"""
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

import checkpoint as ckpt
import data
import distill
import erank
import eval_reasoning as er
from problems import MAX_PROBLEMS, is_synthetic, make_synthetic
from sources import DataError, is_token_file, is_token_sidecar, parse_spec, read_tokens, write_tokens
from test_cli import TEXT, check_refusals

GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                         "in May. How many clips did Natalia sell altogether in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"}
PREDICTION = {"prompt": "Question: 1 + 1?\nAnswer:", "gold": "2", "generation": " 2", "extracted": "2",
              "correct": True}


def put(path, content) -> str:
    """Write text, bytes or a JSON-able object (as one JSON document) to path; return it as a string."""
    if isinstance(content, (dict, list)):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def token_bin(path, ids, dtype, sidecar) -> str:
    """A raw .bin of `ids` stored as `dtype`, and the sidecar text or object given (None: no sidecar)."""
    path.write_bytes(np.asarray(ids, dtype=dtype).tobytes())
    if sidecar is not None:
        put(path.parent / (path.name + ".json"), sidecar)
    return str(path)


def npy(path, array) -> str:
    np.save(path, array)
    return str(path)


def damage_state(run_dir: str, **fields):
    """Set fields of the newest checkpoint's data position, its checksums recomputed: a state.json that is
    internally consistent and wrong, as a hand edit or a bug would leave it."""
    path = ckpt.latest_checkpoint(run_dir)
    state = json.loads(open(os.path.join(path, "state.json")).read())
    state["data"].update(fields)
    with open(os.path.join(path, "state.json"), "w") as f:
        json.dump(state, f)
    sums = os.path.join(path, getattr(ckpt, "SUMS", "checksums.json"))
    if os.path.exists(sums):
        names = sorted(set(os.listdir(path)) - {os.path.basename(sums)})
        with open(sums, "w") as f:
            json.dump({"sha256": {n: ckpt.sha256(os.path.join(path, n)) for n in names}}, f)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny teacher, a corpus, a finished one-step run and every hostile file the table aims at."""
    from conftest import make_tiny_teacher
    t = tmp_path_factory.mktemp("hostile-data")
    teacher = make_tiny_teacher(t / "teacher")
    corpus = put(t / "corpus.txt", TEXT)
    ids = np.arange(3, 403) % 250 + 3  # 400 ids inside the tiny vocab
    f = dict(corpus=corpus, teacher=teacher)
    f["notes_sidecar"] = put(t / "notes.bin.json", {"mine": True})                   # not red's sidecar
    f["hand"] = token_bin(t / "hand.bin", ids, np.uint16, {"dtype": "uint16"})       # the user's .bin
    f["tok"] = put(t / "tok.bin.json", (t / "teacher" / "tokenizer.json").read_bytes())
    f["wide"] = token_bin(t / "wide.bin", ids, np.uint32, {"dtype": "uint16", "tokens": 400})
    f["not_json"] = token_bin(t / "notjson.bin", ids, np.uint16, "{dtype: uint16")
    f["float_dtype"] = token_bin(t / "f32.bin", ids, np.uint16, {"dtype": "float32", "tokens": 400})
    f["count_string"] = token_bin(t / "count.bin", ids, np.uint16, {"dtype": "uint16", "tokens": "400"})
    f["deep_sidecar"] = token_bin(t / "deep.bin", ids, np.uint16, "[" * 100_000)
    f["long_count"] = token_bin(t / "long.bin", ids, np.uint16, '{"dtype": "uint16", "tokens": 4' + "0" * 5000 + "}")
    f["docs_string"] = token_bin(t / "docs.bin", ids, np.uint16, {"dtype": "uint16", "tokens": 400,
                                                                  "documents": "many"})
    f["other_vocab"] = token_bin(t / "vocab.bin", ids, np.uint16, {"dtype": "uint16", "tokens": 400,
                                                                   "vocab_size": 50_000})
    f["float_npy"] = npy(t / "float.npy", ids.astype(np.float32))
    f["matrix_npy"] = npy(t / "matrix.npy", ids.reshape(20, 20).astype(np.int32))
    f["negative_npy"] = npy(t / "negative.npy", np.concatenate([ids, [-5]]).astype(np.int32))
    archive = io.BytesIO()
    np.savez(archive, ids=ids)
    f["npz"] = put(t / "archive.npy", archive.getvalue())
    f["empty"] = put(t / "empty.jsonl", "")
    f["blank"] = put(t / "blank.jsonl", "\n  \n\n")
    f["array_row"] = put(t / "array.jsonl", "[1, 2]\n")
    f["deep_row"] = put(t / "deep.jsonl", "[" * 100_000 + "\n")
    f["small"] = put(t / "small.txt", "a few words")
    f["gsm8k"] = put(t / "gsm8k_test.jsonl", json.dumps(GSM8K_ROW) + "\n")
    f["preds"] = put(t / "preds.jsonl", json.dumps(PREDICTION) + "\n")
    f["lookalike"] = put(t / "lookalike.jsonl", json.dumps({"generation": "mine", "note": 1}) + "\n")
    f["zero_gold"] = put(t / "zero.jsonl", json.dumps({"question": "q", "answer": "#### 1/0"}) + "\n")
    f["string_row"] = put(t / "string.jsonl", '"just a string"\n')
    f["surrogate"] = put(t / "surrogate.jsonl", '{"question": "a \\ud800 b?", "answer": "#### 3", "text": "x"}\n')
    base = ["--teacher", teacher, "--width", "32", "--data", corpus, "--seq-len", "32", "--batch-size", "4",
            "--n-calib", "4", "--eval-problems", "0"]
    distill.main(base + ["--steps", "1", "--out", str(t / "run")])
    shutil.copytree(t / "run.run", t / "past.run")
    shutil.copytree(t / "run", t / "past")
    damage_state(str(t / "past.run"), cursor=10 ** 6)  # beyond the epoch: next() used to wait forever
    return dict(root=t, base=base, **f)


def cases(w) -> list[tuple[str, object, list[str], str]]:
    """(name, main, argv, a fragment of the one error line)."""
    t, T = w["root"], w["teacher"]
    dd = lambda *specs, seq="32": ["--tokenizer", T, "--data", *specs, "--seq-len", seq]       # data.py
    out = lambda path, *specs: dd(*(specs or [w["corpus"]])) + ["--out", str(path)]            # data.py --out
    ds = lambda spec, *extra: [a if a != w["corpus"] else spec for a in w["base"]] + [          # distill.py
        "--steps", "1", "--out", str(t / "fresh"), *extra]
    rk = lambda spec, seq="32": ["--model", T, "--data", spec, "--seq-len", seq]               # erank.py
    syn = lambda path, *extra: ["--make-synthetic", "3", "--out", str(path), *extra]           # eval_reasoning
    ev = lambda data, *extra: ["--model", T, "--data", data, "--max-new-tokens", "2", *extra]
    dm, em, rm, vm = data.main, erank.main, distill.main, er.main
    return [
        # 1. data.py --out replaces only a .bin and sidecar it wrote, and never an input
        ("out over a user's sidecar", dm, out(t / "notes.bin"), "not a sidecar written by data.py"),
        ("out over a user's .bin", dm, out(w["hand"]), "not a token file written by data.py"),
        ("out's sidecar is the tokenizer", dm, ["--tokenizer", w["tok"], "--data", w["corpus"], "--seq-len", "32",
                                                "--out", str(t / "tok.bin")], "is the --tokenizer input"),
        ("out is a token input", dm, out(w["wide"], w["wide"]), "is the --data input"),
        # 2. --make-synthetic replaces only a set it generated
        ("synthetic over a GSM8K file", vm, syn(w["gsm8k"]), "not a problem set written by --make-synthetic"),
        ("synthetic over predictions", vm, syn(w["preds"]), "not a problem set"),
        ("synthetic over an empty file", vm, syn(w["empty"]), "not a problem set"),
        ("synthetic over deep nesting", vm, syn(w["deep_row"]), "not a problem set"),
        ("predictions over a look-alike", vm, ev(w["gsm8k"], "--out", w["lookalike"]), "not a predictions file"),
        # 3. a saved stream position beyond the epoch
        ("resume a cursor past the epoch", rm, w["base"] + ["--steps", "2", "--out", str(t / "past"), "--resume"],
         "cursor"),
        # 4. generator sizes bounded before any work
        ("data problems:2e9", dm, dd("problems:2000000000"), "at most problems:1,000,000"),
        ("distill problems:2e9", rm, ds("problems:2000000000"), "at most problems:1,000,000"),
        ("distill self:5e6", rm, ds("self:5000000"), "at most self:1,000,000"),
        ("erank problems:2e9", em, rk("problems:2000000000"), "at most problems:1,000,000"),
        ("eval ppl problems:2e9", vm, ["--model", T, "--ppl", "problems:2000000000"], "at most problems"),
        ("eval ops 1e6", vm, syn(t / "s.jsonl", "--ops", "1000000"), "--ops: must be at most 100"),
        ("eval max-value 1e10", vm, syn(t / "s.jsonl", "--max-value", "10000000000"), "--max-value"),
        ("eval make-synthetic 1e9", vm, ["--make-synthetic", "1000000000", "--out", str(t / "s.jsonl")],
         "--make-synthetic: must be at most 100,000"),
        ("problems:N in 5000 digits", dm, dd("problems:" + "9" * 5000), "needs a positive integer N"),
        ("problems:N not ASCII", dm, dd("problems:\u00b2"), "needs a positive integer N"),
        ("problems:N underscored", dm, dd("problems:1_000"), "needs a positive integer N"),
        ("problems:N two weights", dm, dd("problems:5:2:3"), "expected problems:N or problems:N:WEIGHT"),
        ("problems:N empty weight", dm, dd("problems:5:"), "expected problems:N or problems:N:WEIGHT"),
        # 5. a .bin's dtype and id count against its size; every sidecar field
        ("uint32 ids, uint16 sidecar", dm, dd(w["wide"]), "holds 800 ids, its sidecar says 400"),
        ("distill uint32 as uint16", rm, ds(w["wide"]), "holds 800 ids, its sidecar says 400"),
        ("erank uint32 as uint16", em, rk(w["wide"]), "holds 800 ids"),
        ("eval ppl uint32 as uint16", vm, ["--model", T, "--ppl", w["wide"], "--seq-len", "32"], "holds 800 ids"),
        ("sidecar without a count", dm, dd(w["hand"]), "not how many ids"),
        ("sidecar not JSON", dm, dd(w["not_json"]), "not a JSON object"),
        ("sidecar nested deep", dm, dd(w["deep_sidecar"]), "not a JSON object"),
        ("sidecar dtype float32", dm, dd(w["float_dtype"]), "not a token dtype"),
        ("sidecar count a string", dm, dd(w["count_string"]), "tokens '400' is not a count"),
        ("sidecar count 5000 digits", dm, dd(w["long_count"]), "is not a count"),
        ("sidecar documents a string", dm, dd(w["docs_string"]), "documents 'many' is not a count"),
        ("sidecar another vocab", dm, dd(w["other_vocab"]), "tokenised with a vocab of 50000"),
        # .npy files
        ("npy of floats", dm, dd(w["float_npy"]), "holds a float32 array"),
        ("erank npy of floats", em, rk(w["float_npy"]), "holds a float32 array"),
        ("npy of 2 dimensions", dm, dd(w["matrix_npy"]), "of shape (20, 20)"),
        ("npy negative id", dm, dd(w["negative_npy"]), "token id -5 is outside the vocab"),
        ("npz named npy", dm, dd(w["npz"]), "an .npz archive"),
        # .jsonl files
        ("jsonl empty", dm, dd(w["empty"]), "empty file"),
        ("jsonl blank lines", dm, dd(w["blank"]), "no documents"),
        ("jsonl row an array", dm, dd(w["array_row"]), "needs a string \"text\" field"),
        ("jsonl row nested deep", dm, dd(w["deep_row"]), "nested too deeply"),
        ("erank row nested deep", em, rk(w["deep_row"]), "nested too deeply"),
        ("eval data empty", vm, ev(w["empty"]), "no items"),
        ("eval data blank lines", vm, ev(w["blank"]), "no items"),
        ("eval row an array", vm, ev(w["array_row"]), "needs a 'question' string"),
        ("eval row a string", vm, ev(w["string_row"]), "needs a 'question' string"),
        ("eval row nested deep", vm, ev(w["deep_row"]), "nested too deeply"),
        ("eval gold divides by 0", vm, ev(w["zero_gold"]), "no numeric gold answer"),
        ("eval lone surrogate", vm, ev(w["surrogate"], "--out", str(t / "p.jsonl")), "lone surrogate"),
        ("data lone surrogate", dm, dd(w["surrogate"]), "lone surrogate"),
        # SOURCE:WEIGHT
        ("weight 0", dm, dd(w["corpus"] + ":0"), "weight must be a number in (0, 100]"),
        ("weight -1", dm, dd(w["corpus"] + ":-1"), "weight must be"),
        ("weight nan", dm, dd(w["corpus"] + ":nan"), "weight must be"),
        ("weight inf", dm, dd(w["corpus"] + ":inf"), "weight must be"),
        ("weight 101", dm, dd(w["corpus"] + ":101"), "weight must be"),
        ("weight underflows to 0", rm, ds(w["corpus"] + ":1e-400"), "weight must be"),
        ("weight empty", dm, dd(w["corpus"] + ":"), "unknown source"),
        ("weight twice", dm, dd("pydoc:2:3"), "unknown source"),
        ("problems weight 0", dm, dd("problems:5:0"), "weight must be"),
        # --seq-len larger than the data
        ("data seq-len past the data", dm, dd(w["small"]), "needs at least 32 tokens for one window"),
        ("distill seq-len past the data", rm, ds(w["small"]), "needs at least 32 tokens"),
        ("erank seq-len past the data", em, rk(w["small"]), "needs at least 32 tokens"),
        ("eval ppl seq-len past the data", vm, ["--model", T, "--ppl", w["small"], "--seq-len", "32"],
         "needs at least 32 tokens"),
    ]


def test_hostile_data_is_one_line_exit_2_and_changes_nothing(world, capsys):
    table = cases(world)
    assert len(table) >= 60
    check_refusals(table, world["root"], capsys, seconds=30)
    print(f"\n{len(table)} hostile data inputs: every one exit 2, one line, nothing changed")


# ---------------------------------------------------------------------------------------------------------
# The training stream's saved position

class Ids:
    """Stand-in tokenizer for token files (read_tokens needs only the vocab size)."""
    bos_id, eos_id, eos_ids, vocab_size = None, 2, [2], 5000


@pytest.fixture
def stream_data(tmp_path):
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    write_tokens(a, 3 + np.arange(200), vocab_size=5000)
    write_tokens(b, 1000 + np.arange(120), vocab_size=5000)
    return data.load_sources([a, b], Ids(), seq_len=4, val_fraction=0.1)


def test_load_state_dict_checks_every_field_before_changing_anything(stream_data):
    stream = data.Batches(stream_data, 5, seed=1)
    for _ in range(3):
        stream.next()
    good = stream.state_dict()
    assert good == {"seed": 1, "epoch": 0, "cursor": 15, "draws": [45, 27]}
    n = stream.epoch_len
    damaged = {
        "not a dict": [1, 2], "none": None, "no cursor": {k: v for k, v in good.items() if k != "cursor"},
        "cursor at the epoch's end": good | {"cursor": n}, "cursor far past": good | {"cursor": 10 ** 9},
        "cursor negative": good | {"cursor": -1}, "cursor a float": good | {"cursor": 15.0},
        "cursor a bool": good | {"cursor": True}, "cursor a string": good | {"cursor": "15"},
        "epoch negative": good | {"epoch": -1}, "epoch a float": good | {"epoch": 0.5},
        "epoch a string": good | {"epoch": "0"}, "seed another": good | {"seed": 2},
        "seed a string": good | {"seed": "1"}, "draws another": good | {"draws": [45, 28]},
        "draws floats": good | {"draws": [45.0, 27.0]}, "draws not a list": good | {"draws": 72},
    }
    resumed = data.Batches(stream_data, 5, seed=1)
    for name, state in damaged.items():
        with pytest.raises(DataError) as err:
            resumed.load_state_dict(state)
        message = str(err.value)
        assert "\n" not in message and " - " in message, (name, message)
        assert (resumed.epoch, resumed.cursor) == (0, 0), f"{name}: the stream moved"
    assert "within the epoch's 72 windows" in str(pytest.raises(DataError, resumed.load_state_dict,
                                                                good | {"cursor": n}).value)
    resumed.load_state_dict(json.loads(json.dumps(good)))  # the saved position, through a state.json
    assert torch.equal(resumed.next(), stream.next())
    resumed.load_state_dict(good | {"epoch": 7, "cursor": n - 1})  # any epoch, the epoch's last window
    resumed.next()
    assert resumed.epoch == 8


# ---------------------------------------------------------------------------------------------------------
# A .bin's count and size; what data.py --out may replace

def test_bin_needs_a_count_that_matches_its_size(tmp_path):
    ids = 3 + np.arange(100)
    wide = token_bin(tmp_path / "wide.bin", ids, np.uint32, {"dtype": "uint16", "tokens": 100})
    with pytest.raises(DataError, match=r"holds 200 ids, its sidecar says 100 \(400 bytes as uint16\)"):
        read_tokens(wide, 5000)
    token_bin(tmp_path / "wide.bin", ids, np.uint32, {"dtype": "uint16"})  # no count: refused, never guessed
    with pytest.raises(DataError, match=r"says dtype uint16 but not how many ids"):
        read_tokens(wide, 5000)
    token_bin(tmp_path / "wide.bin", ids, np.uint32, {"dtype": "uint32", "tokens": 100})  # told right: read
    assert read_tokens(wide, 5000)[0].tolist() == ids.tolist()
    # a sidecar red wrote before these checks (dtype, vocab_size, tokens: every version had them) still reads
    old = token_bin(tmp_path / "old.bin", ids, np.uint16, {"documents": 1, "sources": ["x.txt"], "dtype": "uint16",
                                                           "vocab_size": 5000, "tokens": 100})
    tokens, meta = read_tokens(old, 5000)
    assert tokens.tolist() == ids.tolist() and meta["documents"] == 1 and is_token_file(old)
    assert read_tokens(old, 5000)[1]["sources"] == ["x.txt"]  # fields red does not check are kept


def test_only_red_token_files_and_sidecars_are_replaceable(tmp_path):
    ids = 3 + np.arange(100)
    red = str(tmp_path / "red.bin")
    write_tokens(red, ids, vocab_size=5000, documents=1)
    assert is_token_file(red) and is_token_sidecar(red + ".json")
    hand = token_bin(tmp_path / "hand.bin", ids, np.uint16, {"dtype": "uint16", "tokens": 100})
    assert not is_token_file(hand) and not is_token_sidecar(hand + ".json")  # no vocab_size: written by hand
    lied = token_bin(tmp_path / "lied.bin", ids, np.uint32, {"dtype": "uint16", "tokens": 100, "vocab_size": 5000})
    assert not is_token_file(lied)  # its size is not its count
    for name, sidecar in {"notjson": "{x", "list": [1], "deep": "[" * 100_000, "float": {"dtype": "float32",
                          "tokens": 100, "vocab_size": 5000}}.items():
        path = token_bin(tmp_path / f"{name}.bin", ids, np.uint16, sidecar)
        assert not is_token_file(path) and not is_token_sidecar(path + ".json"), name
    assert not is_token_file(token_bin(tmp_path / "bare.bin", ids, np.uint16, None))


def test_data_out_writes_the_same_bytes_and_replaces_its_own(world, tmp_path, capsys):
    """data.py --out: the .bin and sidecar byte for byte as before this rule (the sidecar's fields in their
    order), and a second run replaces both."""
    from tokenizer import load_tokenizer
    out = str(tmp_path / "c.bin")
    argv = ["--tokenizer", world["teacher"], "--data", world["corpus"], "--seq-len", "32", "--out", out]
    data.main(argv)
    tok = load_tokenizer(world["teacher"])
    tokens = data.tokenize_documents([TEXT], tok)
    assert open(out, "rb").read() == tokens.astype(np.uint16).tobytes()
    expected = dict(documents=1, sources=[world["corpus"]], dtype="uint16", vocab_size=tok.vocab_size,
                    tokens=len(tokens))
    assert open(out + ".json").read() == json.dumps(expected, indent=1) + "\n"
    before = os.stat(out).st_mtime_ns
    data.main(argv)  # its own output: replaced
    assert open(out, "rb").read() == tokens.astype(np.uint16).tobytes() and os.stat(out).st_mtime_ns >= before
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------
# Generator bounds, red's own problem sets, long gold answers

def test_problem_specs_are_bounded_and_exact():
    assert parse_spec(f"problems:{MAX_PROBLEMS}") == (f"problems:{MAX_PROBLEMS}", 1.0)
    assert parse_spec(f"problems:{MAX_PROBLEMS}:0.5") == (f"problems:{MAX_PROBLEMS}", 0.5)
    assert parse_spec("problems:0007") == ("problems:7", 1.0)
    for bad in (f"problems:{MAX_PROBLEMS + 1}", "self:1000001", "problems:\u0663", "problems:1e3", "problems:-5",
                "problems:5:", "problems:5:1:1", "self:4::", "problems:" + "1" * 21):
        with pytest.raises(DataError):
            parse_spec(bad)
    started = time.perf_counter()  # numbers up to the largest --max-value cost no more than small ones
    huge = make_synthetic(50, 100, seed=0, max_value=10 ** 9)
    assert time.perf_counter() - started < 2 and all(map(is_synthetic, huge))


def test_make_synthetic_recognises_only_its_own_sets(tmp_path, capsys):
    sets = [make_synthetic(20, k, seed=k, max_value=v) for k in (1, 3, 7) for v in (10, 99, 1000)]
    assert all(is_synthetic(row) for rows in sets for row in rows)
    row = sets[1][0]
    for name, other in {"GSM8K": GSM8K_ROW, "prediction": PREDICTION, "extra field": row | {"id": 1},
                        "wrong arithmetic": row | {"answer": row["answer"].replace("#### ", "#### 1")},
                        "another name": row | {"answer": row["answer"].replace(row["answer"].split()[0], "Bob")},
                        "huge number": row | {"answer": row["answer"].replace("#### ", "#### " + "9" * 5000)},
                        "not a dict": [row], "numbers": {"question": 1, "answer": 2}}.items():
        assert not is_synthetic(other), name
    out = tmp_path / "set.jsonl"
    er.main(["--make-synthetic", "4", "--ops", "3", "--out", str(out)])
    er.main(["--make-synthetic", "5", "--ops", "2", "--seed", "1", "--out", str(out)])  # its own set: replaced
    assert [json.loads(line) for line in out.read_text().splitlines()] == make_synthetic(5, 2, seed=1)
    capsys.readouterr()


def test_gold_answers_past_int_limit_evaluate_exactly(world, tmp_path, capsys):
    big = "9" * 5000
    path = put(tmp_path / "big.jsonl", json.dumps({"question": "q?", "answer": f"so\n#### {big}"}) + "\n"
               + '{"question": "r?", "answer": ' + big + "}\n")  # a JSON number int() will not read
    items = er.read_items(path)
    assert [it["gold"] for it in items] == [big, big]
    assert er.is_correct(f"{big[:-1]}9", items[0]["gold"]) and not er.is_correct(big[:-1], items[1]["gold"])
    assert er.is_correct(er.extract_answer(f"The answer is {big}."), items[1]["gold"])
    preds = tmp_path / "preds.jsonl"
    er.main(["--model", world["teacher"], "--data", path, "--max-new-tokens", "2", "--out", str(preds)])
    assert [json.loads(line)["gold"] for line in preds.read_text().splitlines()] == [big, big]
    assert "accuracy 0.000 (0/2)" in capsys.readouterr().out
