"""Tests for real corpora: chat rows (messages and ShareGPT conversations) rendered with the teacher's chat
template, the same text as Hugging Face's apply_chat_template renders; parquet shards (a folder, a glob, row
groups smaller than a batch) read as the same documents as .jsonl; the work items of text_sources.py encoded
by tokenize_corpus.py's forked processes, byte for byte the serial packing, a .txt in pieces included;
data.py --out streamed, its sidecar written last; --text-column on every tool that reads sources; and every bad
row, shard and column one line, exit 2, nothing written.

Builds on data.py, sources.py, text_sources.py, chat_docs.py, parquet_source.py, tokenize_corpus.py and the
CLIs erank.py, eval_reasoning.py, init_select.py and distill.py, with conftest.py's tiny teacher, test_cli.py's
check_refusals, transformers (apply_chat_template, the reference) and pyarrow.
Run as: pytest tests/test_corpus_sources.py -q
"""
import json
import os
import sys

import numpy as np
import pytest

import data
import distill
import erank
import eval_reasoning as er
import init_select
import parquet_source
import text_sources
from chat_docs import chat_messages, row_document
from sources import DataError
from test_cli import check_refusals
from tokenizer import load_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MESSAGES = [[{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"},
             {"role": "assistant", "content": "2 + 3 = 5. #### 5"}],
            [{"role": "user", "content": "Name a fox."}, {"role": "assistant", "content": "The quick brown fox."}]]
SHAREGPT = [[{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
             for m in chat] for chat in MESSAGES]
TEXTS = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs.\n" * (1 + i % 3) for i in range(40)]


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def shard(path, columns: dict, row_group_size: int = 5) -> str:
    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny teacher with a ChatML template, one without any, and small files that look like real corpora."""
    from conftest import make_tiny_teacher
    t = tmp_path_factory.mktemp("corpora")
    teacher = make_tiny_teacher(t / "teacher")
    with open(os.path.join(teacher, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "bos_token": None, "chat_template": CHATML}, f)
    plain = make_tiny_teacher(t / "plain")  # no chat template
    (t / "shards").mkdir()
    for k in range(3):  # a multi-shard folder, as a Hugging Face dataset's data/ folder holds
        rows = TEXTS[k::3]
        shard(t / "shards" / f"train-{k:05d}-of-00003.parquet", {"text": rows, "id": list(range(len(rows)))})
    f = dict(root=t, teacher=teacher, plain=plain, shards=str(t / "shards"))
    f["texts"] = jsonl(t / "texts.jsonl", [{"text": x} for x in TEXTS[0::3] + TEXTS[1::3] + TEXTS[2::3]])
    f["messages"] = jsonl(t / "messages.jsonl", [{"messages": m} for m in MESSAGES] * 10)
    f["sharegpt"] = jsonl(t / "sharegpt.jsonl", [{"id": i, "conversations": c} for i, c in enumerate(SHAREGPT * 10)])
    f["messages_pq"] = shard(t / "messages.parquet", {"messages": MESSAGES * 10})
    f["sharegpt_pq"] = shard(t / "sharegpt.parquet", {"conversations": SHAREGPT * 10})
    f["body_pq"] = shard(t / "body.parquet", {"body": TEXTS})
    f["unknown_role"] = jsonl(t / "tool.jsonl", [{"messages": MESSAGES[0]},
                                                 {"messages": MESSAGES[1] + [{"role": "tool", "content": "x"}]}])
    f["empty_chat"] = jsonl(t / "empty.jsonl", [{"conversations": []}])
    f["unknown_role_pq"] = shard(t / "tool.parquet",
                                 {"conversations": SHAREGPT * 3 + [[{"from": "bing", "value": "x"}]]})
    f["null_text_pq"] = shard(t / "null.parquet", {"text": TEXTS[:7] + [None]})
    good = (t / "shards" / "train-00000-of-00003.parquet").read_bytes()
    (t / "broken").mkdir()
    f["cut_shard"] = str(t / "broken" / "train-00001.parquet")
    (t / "broken" / "train-00000.parquet").write_bytes(good)
    (t / "broken" / "train-00001.parquet").write_bytes(good[:len(good) // 2])  # a download cut short
    (t / "nothing").mkdir()
    (t / "nothing" / "README.md").write_text("no shards here")
    return f


def stream(spec, tok, **kwargs) -> list[int]:
    return data.read_source(spec, tok, 2, **kwargs)[0].tolist()


# ---------------------------------------------------------------------------------------------------------
# Chat rows

def test_chat_rows_render_as_hugging_face_renders_them(world):
    """messages and ShareGPT conversations, .jsonl and parquet: one document per row, the template's text (HF's
    apply_chat_template, no generation prompt), packed as any document."""
    import transformers
    tok = load_tokenizer(world["teacher"])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(world["teacher"], "tokenizer.json"))
    texts = [hf.apply_chat_template(m, tokenize=False, chat_template=CHATML) for m in MESSAGES]
    assert texts[0].startswith("<|im_start|>system\nYou add numbers.<|im_end|>\n")
    assert texts[0].endswith("<|im_end|>\n")
    assert [row_document({"messages": m}, render=lambda ms: tok.chat(ms, add_generation_prompt=False))
            for m in MESSAGES] == texts
    expected = data.tokenize_documents(texts * 10, tok).tolist()
    for name in ("messages", "sharegpt", "messages_pq", "sharegpt_pq"):
        tokens, documents = data.read_source(world[name], tok, 8)
        assert tokens.tolist() == expected and documents == 20, name
    assert chat_messages(SHAREGPT[0], "conversations") == MESSAGES[0]  # human/gpt/system -> user/assistant/system


def test_parquet_shards_read_as_the_same_documents_as_jsonl(world, monkeypatch):
    """A folder of shards, a glob of them and the rows as .jsonl pack alike; batches smaller than a row group
    and row groups smaller than a batch change nothing; another column is named with --text-column."""
    tok = load_tokenizer(world["teacher"])
    expected = stream(world["texts"], tok)
    assert stream(world["shards"], tok) == expected
    assert stream(os.path.join(world["shards"], "train-*.parquet"), tok) == expected
    monkeypatch.setattr(parquet_source, "ROWS_PER_BATCH", 2)
    assert stream(world["shards"], tok) == expected
    assert stream(world["body_pq"], tok, text_column="body") == data.tokenize_documents(TEXTS, tok).tolist()


def test_forked_workers_pack_byte_for_byte_as_one_process(world, tmp_path, monkeypatch):
    """Work items of a few hundred bytes (many per source, so the process pool runs): the packed ids equal the
    serial packing of the same documents, for .jsonl rows, chats, parquet and a .txt cut in pieces."""
    tok = load_tokenizer(world["teacher"])
    text = "".join(f"Line {i}: caf\u00e9 na\u00efve \u2014 <|endoftext|> {'x' * (i % 7)}  tabs\t\tand\n"
                   for i in range(300))
    txt = tmp_path / "one.txt"
    txt.write_text("\ufeff" + text)
    rows = TEXTS[0::3] + TEXTS[1::3] + TEXTS[2::3]
    serial = {world["texts"]: rows, world["shards"]: rows, world["sharegpt"]: None, str(txt): [text]}
    whole = {name: stream(name, tok, workers=1) for name in serial}
    monkeypatch.setattr(text_sources, "WORK_BYTES", 300)
    monkeypatch.setattr(text_sources, "TXT_BLOCK", 256)
    monkeypatch.setattr(parquet_source, "ROWS_PER_BATCH", 3)
    assert all(len(list(text_sources.source_work(name, tok))) > 5 for name in serial)  # the pool's path
    pieces = list(text_sources.source_pieces(str(txt), tok))
    assert len(pieces) > 10 and "".join(p[0] for p in pieces) == text  # cut into pieces, nothing lost
    for name, docs in serial.items():
        assert stream(name, tok, workers=2) == whole[name], name
        if docs is not None:
            assert whole[name] == data.tokenize_documents(docs, tok).tolist(), name


# ---------------------------------------------------------------------------------------------------------
# data.py --out: streamed, the sidecar last

def test_data_out_streams_every_kind_and_commits_with_the_sidecar(world, tmp_path, monkeypatch, capsys):
    tok = load_tokenizer(world["teacher"])
    monkeypatch.setattr(text_sources, "WORK_BYTES", 500)
    specs = [world["shards"], world["messages"], world["sharegpt_pq"], world["texts"] + ":2"]
    out = str(tmp_path / "corpus.bin")
    data.main(["--tokenizer", world["teacher"], "--data", *specs, "--seq-len", "16", "--out", out])
    expected = np.concatenate([data.read_source(data.parse_spec(s)[0], tok, 16, workers=1)[0] for s in specs])
    assert open(out, "rb").read() == expected.astype(np.uint16).tobytes()
    side = json.loads(open(out + ".json").read())
    assert list(side) == ["documents", "sources", "dtype", "vocab_size", "tokens"]
    assert side["documents"] == 40 + 20 + 20 + 40 and side["tokens"] == len(expected) and side["sources"] == specs
    # a bad row after a good one: the previous .bin and sidecar stay, no temporary file is left
    before = {p: open(p, "rb").read() for p in (out, out + ".json")}
    code = exit_status(data.main, ["--tokenizer", world["teacher"], "--data", world["texts"], world["unknown_role"],
                                   "--seq-len", "16", "--out", out])
    assert code == 2 and "unknown role 'tool'" in capsys.readouterr().err
    assert {p: open(p, "rb").read() for p in before} == before and sorted(os.listdir(tmp_path)) == [
        "corpus.bin", "corpus.bin.json"]


def exit_status(main, argv) -> int:
    try:
        main(argv)
        return 0
    except SystemExit as e:
        return e.code


# ---------------------------------------------------------------------------------------------------------
# --text-column on every tool, and every bad input one line

def test_text_column_reaches_every_tool(world, capsys):
    T, body = world["teacher"], world["body_pq"]
    erank.main(["--model", T, "--data", body, "--text-column", "body", "--seq-len", "16", "--windows", "2",
                "--json"])
    assert json.loads(capsys.readouterr().out)["models"][0]["windows"] == 2
    er.main(["--model", T, "--ppl", body, "--text-column", "body", "--seq-len", "16"])
    assert f"{body}: perplexity" in capsys.readouterr().out


def test_bad_rows_shards_and_columns_are_one_line_and_write_nothing(world, tmp_path, capsys, monkeypatch):
    w, T = world, world["teacher"]
    out = str(tmp_path / "c.bin")
    dd = lambda *specs, col="text": ["--tokenizer", T, "--data", *specs, "--seq-len", "8", "--text-column", col]
    table = [
        ("unknown role", data.main, dd(w["unknown_role"]), f"{w['unknown_role']}:2: unknown role 'tool' in turn 3"),
        ("unknown role, --out", data.main, dd(w["texts"], w["unknown_role"]) + ["--out", out], "unknown role"),
        ("unknown role in a shard", data.main, dd(w["unknown_role_pq"]),
         f"{w['unknown_role_pq']}: row 7: unknown role"),
        ("empty conversation", data.main, dd(w["empty_chat"]), f"{w['empty_chat']}:1: an empty conversation"),
        ("no chat template", data.main, ["--tokenizer", w["plain"], "--data", w["sharegpt"], "--seq-len", "8"],
         f"{w['sharegpt']}:1: a chat row, but"),
        ("null text", data.main, dd(w["null_text_pq"]), "row 8: needs a string \"text\" field"),
        ("missing column", data.main, dd(w["shards"], col="body"), "no \"body\" column (it has text, id)"),
        ("corrupt shard", data.main, dd(os.path.dirname(w["cut_shard"])), f"{w['cut_shard']}: not a readable parquet"),
        ("no shards", data.main, dd(str(w["root"] / "nothing")), "a directory without .parquet files"),
        ("glob matches nothing", data.main, dd(str(w["root"] / "shards" / "test-*.parquet")), "no file matches"),
        ("erank missing column", erank.main, ["--model", T, "--data", w["shards"], "--text-column", "body"],
         "no \"body\" column"),
        ("eval ppl corrupt shard", er.main, ["--model", T, "--ppl", w["cut_shard"]], "not a readable parquet"),
        ("init_select missing column", init_select.main, ["--teacher", T, "--width", "32", "--calib", w["body_pq"],
                                                          "--out", str(tmp_path / "i.safetensors")],
         "no \"text\" column"),
        ("distill missing column", distill.main, ["--teacher", T, "--width", "32", "--data", w["shards"],
                                                  "--text-column", "body", "--steps", "1", "--out",
                                                  str(tmp_path / "s")], "no \"body\" column"),
    ]
    check_refusals(table, w["root"], capsys, seconds=30)
    assert not os.listdir(tmp_path)  # nothing written, no temporary file left
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # pyarrow not installed
    check_refusals([("no pyarrow", data.main, dd(w["shards"]), "reading parquet needs pyarrow, which is not "
                     "installed - pip install pyarrow")], w["root"], capsys)


def test_row_documents_and_their_errors():
    assert row_document({"text": "a", "messages": []}) == "a"  # the text column first
    assert row_document({"question": "q", "answer": "a"}) == "Question: q\nAnswer: a"
    for row, fragment in [({"messages": "hi"}, "not a list of turns"), ({"messages": [{"role": "user"}]},
                          "needs a string \"role\" and a string \"content\""), ([1], "needs a string \"text\" field"),
                          ({"conversations": [{"from": "human", "value": 3}]}, "needs a string \"from\"")]:
        with pytest.raises(ValueError, match=fragment):
            row_document(row, render=lambda m: "")
    with pytest.raises(DataError, match="no such file"):
        data.read_source("missing.parquet", None, 8)


def test_bench_tokenize_runs_on_a_tiny_corpus(world, tmp_path):
    """bench/bench_tokenize.py end to end at a tiny size: its tables and the flat-memory line (no timing checked)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "bench/bench_tokenize.py", "--tokenizer", world["teacher"], "--mb", "2",
                             "--sample-mb", "0.2", "--rounds", "1", "--dir", str(tmp_path)], cwd=root,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:7]] == ["| tiktoken loop", "| red Tokenizer.encode loop",
                                                      "| tiktoken loop, a process per core",
                                                      "| red packed_chunks", "| tiktoken encode_ordinary_batch",
                                                      "| HF tokenizers encode_batch_fast"]
    assert "MB jsonl" in rows[-1] and "peak RSS of data.py" in result.stdout and not os.listdir(tmp_path)
