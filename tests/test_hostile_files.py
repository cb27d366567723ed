"""Trust nothing it reads, for model, tokenizer and init files: a table of hostile checkpoints (configs whose
sizes the weights do not hold, indexes naming devices, pipes and other models' shards, tokenizer and
generation files of the wrong kind, links to secrets, NaN states and init files), each run through a real CLI
(distill.py, erank.py, init_select.py, eval_reasoning.py, student.py, load_weights.py) and each ending with exit
status 2, exactly one `error:` line and not one file changed; then the rules underneath: a million claimed
layers are refused before a block is built, an empty added token is ignored as Hugging Face ignores it, a
regex that backtracks without end is one line even from a subprocess, and a Hugging Face hub cache snapshot
(files linked to ../../blobs) still loads and saves.

Builds on load_weights.py, tokenizer.py, init_select.py, student.py and the CLIs above, with conftest.py's tiny
teachers, test_cli.py's snapshot and broken_teacher, and `tokenizers` as the reference.
Run as: pytest tests/test_hostile_files.py -q
"""
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import distill
import erank
import eval_reasoning
import init_select
import load_weights
import model
import student
from load_weights import LoadError
from test_cli import TEXT, broken_teacher, check_refusals
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PATHOLOGICAL = r"(?:(?=\w)\w+)+$"  # a lookahead inside nested repeats: tiktoken's engine gives up on "aaa...!"
LATE = r"(?:(?=q)q+)+$|."  # the same trap on "qqq...!" only: it passes the probes made at load


def split_pre_tokenizer(pattern: str) -> dict:
    """Llama 3's pre-tokenizer shape, Split(pattern) + ByteLevel(use_regex=false), with another regex."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def edit_json(path: Path, fn):
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def sharded(src: str, dst: Path, shard: str) -> str:
    """A copy of `src` whose weights are named by an index, every tensor in the shard `shard` (nothing copied)."""
    shutil.copytree(src, dst)
    names = list(load_file(str(dst / "model.safetensors")))
    os.remove(dst / "model.safetensors")
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    return str(dst)


def nan_file(src: Path, dst: Path, name: str, value) -> str:
    """A copy of the safetensors file `src` (metadata kept) with tensor `name` replaced by `value`."""
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    tensors[name] = value(tensors[name])
    save_file(tensors, str(dst), metadata=meta)
    return str(dst)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Llama and a Qwen3 teacher, an init file, a student state, a secret, and broken copies of the teachers."""
    from conftest import make_tiny_teacher
    t = tmp_path_factory.mktemp("files")
    T, Q = make_tiny_teacher(t / "teacher"), make_tiny_teacher(t / "qwen", "qwen3")
    (t / "corpus.txt").write_text(TEXT)
    (t / "test.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    (t / "secret.txt").write_text("the user's password")
    init_select.main(["--teacher", T, "--width", "32", "--calib", str(t / "corpus.txt"), "--seq-len", "32",
                      "--out", str(t / "init.safetensors")])
    nan = lambda x: torch.full_like(x, float("nan"))
    nan_file(t / "init.safetensors", t / "nan-init.safetensors", "layers.0.q", nan)
    nan_file(t / "init.safetensors", t / "int-init.safetensors", "norm", lambda x: x.long())
    shutil.copytree(T, t / "victim")  # a checkpoint of the user's that an index reaches out to
    cfg = lambda **kw: dict(config=lambda c: c | kw)
    weights = lambda fn: dict(weights=fn)
    tok = lambda fn: dict(tokenizer=fn)
    pre = lambda p: tok(lambda j: j | {"pre_tokenizer": p})
    broken = {  # name -> (source teacher, what broken_teacher breaks)
        "million-layers": (T, cfg(num_hidden_layers=1_000_000)),
        "qwen-million-layers": (Q, cfg(num_hidden_layers=1_000_000)),
        "zero-heads": (T, cfg(num_attention_heads=0)),
        "zero-kv-heads": (T, cfg(num_key_value_heads=0)),
        "odd-head-dim": (Q, cfg(head_dim=15)),
        "heads-split-nothing": (T, dict(config=lambda c: {k: v for k, v in c.items() if k != "head_dim"}
                                        | {"num_attention_heads": 3})),
        "huge-vocab": (T, cfg(vocab_size=10 ** 9)),
        "width-past-int64": (Q, cfg(hidden_size=10 ** 30)),
        "huge-context": (Q, cfg(max_position_embeddings=10 ** 12)),
        "tie-a-string": (Q, cfg(tie_word_embeddings="false")),
        "rope-a-string": (T, cfg(rope_parameters="llama3")),
        "no-hidden-size": (T, dict(config=lambda c: {k: v for k, v in c.items() if k != "hidden_size"})),
        "int-weights": (T, weights(lambda w: w | {"model.norm.weight": w["model.norm.weight"].long()})),
        "bad-regex": (T, pre(split_pre_tokenizer("(unclosed"))),
        "pathological-regex": (Q, pre(split_pre_tokenizer(PATHOLOGICAL))),
        "late-pathological-regex": (Q, pre(split_pre_tokenizer(LATE))),
        "pre-without-type": (T, pre({"add_prefix_space": False, "use_regex": True})),
        "step-without-type": (T, pre({"type": "Sequence", "pretokenizers": [{"add_prefix_space": False}]})),
        "string-added-id": (T, tok(lambda j: j | {"added_tokens": [j["added_tokens"][0] | {"id": "0"}]})),
        "float-vocab-id": (Q, tok(lambda j: j | {"model": j["model"] | {"vocab": j["model"]["vocab"] | {"a": 5.0}}})),
        "merge-not-a-pair": (T, tok(lambda j: j | {"model": j["model"] | {"merges": ["a b c"]}})),
    }
    teachers = {name: broken_teacher(src, t / name, **kw) for name, (src, kw) in broken.items()}
    for name, file, fn in [("eos-object", "tokenizer_config.json", lambda c: c | {"eos_token": {"special": True}}),
                           ("string-eos-id", "generation_config.json", lambda c: c | {"eos_token_id": "2"}),
                           ("float-bos-id", "generation_config.json", lambda c: c | {"bos_token_id": 1.5}),
                           ("eos-past-vocab", "generation_config.json", lambda c: c | {"eos_token_id": 99999}),
                           ("config-a-device", None, None), ("secret-side-file", None, None)]:
        teachers[name] = broken_teacher(T, t / name)
        if file:
            edit_json(t / name / file, fn)
    (t / "eos-past-vocab" / "tokenizer_config.json").write_text('{"bos_token": null}')  # the eos comes from there
    os.remove(t / "config-a-device" / "config.json")
    os.symlink("/dev/zero", t / "config-a-device" / "config.json")
    os.symlink(t / "secret.txt", t / "secret-side-file" / "special_tokens_map.json")  # copied by save_model
    teachers["dev-zero-shard"] = sharded(T, t / "dev-zero-shard", "/dev/zero")
    teachers["shard-of-another"] = sharded(T, t / "shard-of-another", "../victim/model.safetensors")
    teachers["linked-shard"] = sharded(T, t / "linked-shard", "weights.safetensors")
    os.symlink(t / "victim" / "model.safetensors", t / "linked-shard" / "weights.safetensors")
    teachers["fifo-shard"] = sharded(T, t / "fifo-shard", "pipe.safetensors")
    os.mkfifo(t / "fifo-shard" / "pipe.safetensors")
    # a hub cache snapshot whose shard is a blob that is also the user's checkpoint: --out there must be refused
    hub = t / "models--me--tiny"
    shutil.copytree(T, hub / "blobs")
    shutil.copytree(T, hub / "snapshots" / "abc", ignore=lambda d, names: ["model.safetensors", "tokenizer.json"])
    for name in ("model.safetensors", "tokenizer.json"):
        os.symlink(f"../../blobs/{name}", hub / "snapshots" / "abc" / name)
    return dict(root=t, teacher=T, hub=str(hub), **teachers)


def cases(w) -> list[tuple[str, object, list[str], str]]:
    """(name, main, argv, a fragment of the one error line)."""
    t, T = w["root"], w["teacher"]
    corpus, out, init = str(t / "corpus.txt"), str(t / "fresh"), str(t / "init.safetensors")
    d = lambda teacher, *extra, to=out: ["--teacher", teacher, "--width", "32", "--data", corpus, "--seq-len",
                                         "32", "--batch-size", "4", "--n-calib", "4", "--eval-problems", "0",
                                         "--steps", "1", "--out", to, *extra]
    i = lambda teacher: ["--teacher", teacher, "--width", "32", "--calib", corpus, "--seq-len", "32",
                         "--out", str(t / "new-init.safetensors")]
    e = lambda model: ["--model", model, "--data", corpus, "--seq-len", "32"]
    ev = lambda model: ["--model", model, "--data", str(t / "test.jsonl")]
    m = lambda teacher, state=init, to=str(t / "merged"): ["--teacher", teacher, "--state", state, "--out", to]
    dm, im, em, evm, sm, lm = (distill.main, init_select.main, erank.main, eval_reasoning.main, student.main,
                               load_weights.main)
    return [
        # security: sizes the files do not hold, files outside the checkpoint, links to secrets
        ("distill: a million layers", dm, d(w["million-layers"]), "num_hidden_layers is 1000000"),
        ("erank: a million layers", em, e(w["million-layers"]), "num_hidden_layers is 1000000"),
        ("init_select: a million layers", im, i(w["million-layers"]), "num_hidden_layers is 1000000"),
        ("eval: a million layers (qwen3)", evm, ev(w["qwen-million-layers"]), "num_hidden_layers is 1000000"),
        ("merge: a million layers (qwen3)", sm, m(w["qwen-million-layers"]), "num_hidden_layers is 1000000"),
        ("load: a million layers", lm, ["--model", w["million-layers"]], "but the weights hold 2 layers"),
        ("distill: vocab 10^9", dm, d(w["huge-vocab"]), "embed_tokens.weight (320, 64) != config's"),
        ("erank: hidden_size 10^30 (qwen3)", em, e(w["width-past-int64"]), "hidden_size is 10000000000"),
        ("distill: a shard named /dev/zero", dm, d(w["dev-zero-shard"]), "weight_map entry '/dev/zero'"),
        ("distill: another model's shard, --out over it", dm, d(w["shard-of-another"], "--overwrite",
                                                                to=str(t / "victim")),
         "weight_map entry '../victim/model.safetensors': leads outside"),
        ("merge: a shard linked out of the checkpoint", sm, m(w["linked-shard"]), "leads outside"),
        ("erank: a shard that is a pipe", em, e(w["fifo-shard"]), "not a regular file"),
        ("load: config.json linked to /dev/zero", lm, ["--model", w["config-a-device"]], "config.json: leads outside"),
        ("merge: special_tokens_map.json linked to a secret", sm, m(w["secret-side-file"]),
         "special_tokens_map.json: leads outside"),
        ("distill: special_tokens_map.json linked to a secret", dm, d(w["secret-side-file"]),
         "special_tokens_map.json: leads outside"),
        ("merge: --out over the teacher's hub blobs", sm, m(w["hub"] + "/snapshots/abc", to=w["hub"] + "/blobs"),
         "contains the --teacher input"),
        # wrong: NaN or integer states merged or trained from
        ("merge: a NaN state", sm, m(T, str(t / "nan-init.safetensors")), "layers.0.q holds NaN"),
        ("merge: an integer state", sm, m(T, str(t / "int-init.safetensors")), "tensor norm is torch.int64"),
        ("distill: a NaN init file", dm, d(T, "--init", str(t / "nan-init.safetensors")), "layers.0.q holds NaN"),
        # tracebacks before: sizes that do not fit together, weights of the wrong dtype
        ("distill: zero heads", dm, d(w["zero-heads"]), "num_attention_heads is 0"),
        ("init_select: zero kv heads", im, i(w["zero-kv-heads"]), "num_key_value_heads is 0"),
        ("erank: an odd head_dim (qwen3)", em, e(w["odd-head-dim"]), "head_dim is 15"),
        ("load: heads that do not split the width", lm, ["--model", w["heads-split-nothing"]],
         "hidden_size 64 does not split into 3 num_attention_heads"),
        ("eval: context 10^12 (qwen3)", evm, ev(w["huge-context"]), "max_position_embeddings is 1000000000000"),
        ("merge: tie_word_embeddings a string", sm, m(w["tie-a-string"]), "tie_word_embeddings is 'false'"),
        ("distill: rope_parameters a string", dm, d(w["rope-a-string"]), "rope_parameters is 'llama3'"),
        ("init_select: no hidden_size", im, i(w["no-hidden-size"]), "hidden_size is missing"),
        ("distill: integer weights", dm, d(w["int-weights"]), "model.norm.weight is I64"),
        # tracebacks before: tokenizer and generation files
        ("distill: a regex that does not compile", dm, d(w["bad-regex"]), "pre_tokenizer regex"),
        ("eval: a regex that backtracks without end", evm, ev(w["pathological-regex"]), "backtracks without end"),
        ("erank: a pre-tokenizer without its type", em, e(w["pre-without-type"]), "pre_tokenizer has a step"),
        ("init_select: a sequence step without its type", im, i(w["step-without-type"]), "pre_tokenizer has a step"),
        ("distill: an added token's id a string", dm, d(w["string-added-id"]), "added_tokens[0]"),
        ("eval: a vocab id a float (qwen3)", evm, ev(w["float-vocab-id"]), "model.vocab holds an id"),
        ("erank: a merge that is no pair", em, e(w["merge-not-a-pair"]), "model.merges holds an entry"),
        ("distill: eos_token an object without content", dm, d(w["eos-object"]),
         "tokenizer_config.json: bos_token / eos_token"),
        ("eval: eos_token_id a string", evm, ev(w["string-eos-id"]), "generation_config.json: eos_token_id is '2'"),
        ("init_select: bos_token_id a float", im, i(w["float-bos-id"]), "generation_config.json: bos_token_id is 1.5"),
        ("distill: an eos id past the vocabulary", dm, d(w["eos-past-vocab"]), "reaches past its 300 ids"),
    ]


def test_hostile_files_are_one_line_exit_2_and_change_nothing(world, capsys):
    table = cases(world)
    assert len(table) >= 35
    check_refusals(table, world["root"], capsys, after_each=lambda name: (  # no run directory made either
        not (world["root"] / "fresh").exists() and not (world["root"] / "fresh.run").exists()) or pytest.fail(name))
    print(f"\n{len(table)} hostile model, tokenizer and init files: every one exit 2, one line, nothing changed")


def test_a_million_claimed_layers_are_refused_before_a_block_is_built(world, monkeypatch):
    """Bounded before allocated: the layer count is checked against the safetensors headers first."""
    built = []
    block_init = model.Block.__init__
    monkeypatch.setattr(model.Block, "__init__", lambda self, *a: built.append(1) or block_init(self, *a))
    tracemalloc.start()
    try:
        for path in (world["million-layers"], world["qwen-million-layers"]):
            with pytest.raises(LoadError, match="num_hidden_layers is 1000000 but the weights hold 2 layers"):
                load_weights.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert built == [] and peak < 20e6, (len(built), peak)
    load_weights.load_model(world["teacher"])  # and the patched Block still builds a real model
    assert len(built) == 2 + 2  # the shape check's weightless model, then the loaded one


def test_empty_added_token_is_ignored_as_in_hf(world, tmp_path):
    """Hugging Face never matches an empty added token; it used to land between every character."""
    from tokenizers import Tokenizer as HFTokenizer
    spec = json.loads((Path(world["teacher"]) / "tokenizer.json").read_text())
    spec["added_tokens"].append(dict(spec["added_tokens"][0], id=300, content=""))
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    ours, hf = load_tokenizer(tmp_path / "tokenizer.json"), HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in [TEXT[:2000], "hello world", "", "<|endoftext|>a<|endoftext|>", "x" * 50 + " 12 3"]:
        assert ours.encode(text) == hf.encode(text).ids, text
    assert 300 not in ours.encode(TEXT)


@pytest.mark.parametrize("regex, text", [("pathological-regex", "text"), ("late-pathological-regex", "q" * 300 + "!")])
def test_pathological_regex_is_one_line_from_a_subprocess(world, regex, text):
    """tiktoken's regex engine gives up with a Rust panic that prints lines of its own: silenced, one line, whether
    the probes at load find the trap or the text does."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "encode.py"), "--model", world[regex], text],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr[-600:]
    assert len(result.stderr.strip().splitlines()) == 1 and "backtracks without end" in result.stderr


def test_hub_cache_snapshot_loads_and_saves(world, tmp_path):
    """The one way out of a checkpoint directory that is allowed: a hub snapshot's links into ../../blobs."""
    snapshot_dir = Path(world["hub"]) / "snapshots" / "abc"
    teacher = load_weights.load_model(str(snapshot_dir))
    assert load_weights.checkpoint_files(str(snapshot_dir))[1].endswith("snapshots/abc/model.safetensors")
    load_weights.save_model(teacher, str(tmp_path / "copy"), like=str(snapshot_dir))
    assert (tmp_path / "copy" / "tokenizer.json").is_file() and not (tmp_path / "copy" / "tokenizer.json").is_symlink()
    with pytest.raises(LoadError, match="leads outside"):  # any other link out is refused
        load_weights.checked_file(str(snapshot_dir), "../../blobs/config.json")
