"""cli.py's contract, held by every command-line tool: a table of hostile inputs (bad flags and ranges, broken
teachers and data, outputs aimed at inputs or at files of another kind, runs that must not be resumed as asked),
each of which must end with exit status 2, exactly one `error:` line on stderr, and not one file changed.

Builds on cli.py and every CLI (distill.py, init_select.py, erank.py, eval_reasoning.py, student.py, data.py,
load_weights.py, scripts/generate.py), run in-process, with conftest.py's tiny teachers.
Run as: pytest tests/test_cli.py -q
"""
import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import cli
import data
import distill
import erank
import eval_reasoning
import init_select
import load_weights
import student

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"Question: Ann has {a} pens and buys {b} more. How many pens now?\nAnswer: {a} + {b} = {a + b}.\n"
               for a in range(2, 30) for b in range(3, 9))


def script_main(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(root: Path) -> dict:
    """Every file under root with the sha256 of its bytes (lock files aside: opening one is not a change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "lock"}


def broken_teacher(src: str, dst: Path, *, config=None, weights=None, tokenizer=None) -> str:
    """A copy of the teacher with one thing broken."""
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config(json.loads((dst / "config.json").read_text()))))
    if weights is not None:
        tensors = load_file(str(dst / "model.safetensors"))
        save_file(weights(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        (dst / "tokenizer.json").write_text(json.dumps(tokenizer(json.loads((dst / "tokenizer.json").read_text()))))
    return str(dst)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Teachers, data, a finished run, an init file and a student: everything the hostile inputs aim at."""
    from conftest import make_tiny_teacher
    t = tmp_path_factory.mktemp("world")
    teacher = make_tiny_teacher(t / "teacher")
    other = make_tiny_teacher(t / "other-teacher", seed=1)  # same config, other weights
    (t / "corpus.txt").write_text(TEXT)
    (t / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 60)
    (t / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    (t / "nan.jsonl").write_text('{"question": "how many?", "answer": NaN}\n')
    (t / "test.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    (t / "raw.bin").write_bytes(np.arange(400, dtype=np.uint32).tobytes())  # no sidecar: dtype unknown
    (t / "notes.json").write_text('{"mine": true}')
    (t / "plain.txt").write_text("a file of the user's")
    base = ["--teacher", teacher, "--width", "32", "--data", str(t / "corpus.txt"), "--seq-len", "32",
            "--batch-size", "4", "--n-calib", "4", "--eval-problems", "0"]
    distill.main(base + ["--steps", "1", "--out", str(t / "run")])
    init_select.main(["--teacher", teacher, "--width", "32", "--calib", str(t / "corpus.txt"), "--seq-len", "32",
                      "--out", str(t / "init.safetensors")])
    broken = {
        "list-config": dict(config=lambda c: [c]),
        "string-size": dict(config=lambda c: c | {"hidden_size": "64"}),
        "zero-theta": dict(config=lambda c: c | {"rope_theta": 0.0, "rope_parameters": dict(
            c.get("rope_parameters") or {}, rope_theta=0.0)}),
        "negative-eps": dict(config=lambda c: c | {"rms_norm_eps": -1e-6}),
        "nan-weights": dict(weights=lambda w: w | {"model.norm.weight": torch.full_like(w["model.norm.weight"],
                                                                                       float("nan"))}),
        "no-vocab": dict(tokenizer=lambda j: j | {"model": {k: v for k, v in j["model"].items() if k != "vocab"}}),
    }
    teachers = {name: broken_teacher(teacher, t / name, **kw) for name, kw in broken.items()}
    return dict(root=t, teacher=teacher, other=other, base=base, **teachers)


def cases(w) -> list[tuple[str, object, list[str], str]]:
    """(name, main, argv, a fragment of the one error line)."""
    t, T, base = w["root"], w["teacher"], w["base"]
    corpus, out = str(t / "corpus.txt"), str(t / "fresh")
    d = lambda *extra: base + ["--steps", "1", "--out", out, *extra]  # distill, fresh output
    with_flag = lambda flag, value: [a if prev != flag else value for prev, a in zip([None] + base, base)] + [
        "--steps", "1"]
    run = lambda *extra: base + ["--steps", "2", "--out", str(t / "run"), *extra]  # the finished run
    i = lambda *extra: ["--teacher", T, "--width", "32", "--calib", corpus, "--seq-len", "32",
                        "--out", str(t / "new-init.safetensors"), *extra]
    e = lambda *extra: ["--model", T, "--data", corpus, "--seq-len", "32", *extra]
    dm, im, em, ev = distill.main, init_select.main, erank.main, eval_reasoning.main
    return [
        # distill.py: flags and ranges
        ("eval-every 0", dm, d("--eval-every", "0"), "--eval-every"),
        ("ckpt-every 0", dm, d("--ckpt-every", "0"), "--ckpt-every"),
        ("seed -1", dm, d("--seed", "-1"), "--seed"),
        ("lr nan", dm, d("--lr", "nan"), "--lr"),
        ("lr 0", dm, d("--lr", "0"), "--lr"),
        ("lr negative", dm, d("--lr", "-1e-4"), "--lr"),
        ("device bogus", dm, d("--device", "bogus"), "--device"),
        ("grad-clip negative", dm, d("--grad-clip", "-1"), "--grad-clip"),
        ("temperature negative", dm, d("--kl-temperature", "-2"), "--kl-temperature"),
        ("temperature 0", dm, d("--kl-temperature", "0"), "--kl-temperature"),
        ("alpha negative", dm, d("--alpha", "-0.1"), "--alpha"),
        ("alpha inf", dm, d("--alpha", "inf"), "--alpha"),
        ("warmup negative", dm, d("--warmup", "-5"), "--warmup"),
        ("steps negative", dm, d("--steps", "-1"), "--steps"),
        ("batch 0", dm, d("--batch-size", "0"), "--batch-size"),
        ("seq-len 1", dm, d("--seq-len", "1"), "--seq-len"),
        ("val-fraction 0.9", dm, d("--val-fraction", "0.9"), "--val-fraction"),
        ("width 0", dm, d("--width", "0"), "--width"),
        ("width not a multiple", dm, d("--width", "30"), "use 28 or 32"),
        ("unknown preset", dm, d("--preset", "fast"), "invalid choice"),
        ("unknown init", dm, d("--init", "svd"), "unknown init 'svd'"),
        ("init not an init file", dm, d("--init", str(t / "notes.safetensors")), "not an init file"),
        ("init for another width", dm, d("--init", str(t / "init.safetensors"), "--width", "48"), "width-32"),
        ("init for another width, self:N data", dm, with_flag("--data", "self:16") + [
            "--out", out, "--init", str(t / "init.safetensors"), "--width", "48"], "width-32"),  # before sampling
        ("init for another teacher, self:N data", dm, [a if a != T else w["other"] for a in with_flag(
            "--data", "self:16")] + ["--out", out, "--init", str(t / "init.safetensors")], "made for another teacher"),
        ("unknown clone term", dm, d("--clone-terms", "q,zz"), "unknown terms"),
        ("unknown reduction", dm, d("--kl-reduction", "mean"), "invalid choice"),
        ("unknown flag", dm, d("--bogus"), "unrecognized arguments"),
        ("seq-len past the positions", dm, d("--seq-len", "100000"), "exceeds the teacher's"),
        ("fsdp in one process", dm, d("--fsdp"), "torchrun"),
        # distill.py: data
        ("weight 1e15", dm, with_flag("--data", corpus + ":1e15") + ["--out", out], "weight must be"),
        ("data missing", dm, with_flag("--data", str(t / "nope.txt")) + ["--out", out], "no such file"),
        ("data latin-1", dm, with_flag("--data", str(t / "latin1.txt")) + ["--out", out], "not UTF-8"),
        ("bin without sidecar", dm, with_flag("--data", str(t / "raw.bin")) + ["--out", out], "saying its dtype"),
        # distill.py: broken teachers
        ("teacher missing", dm, with_flag("--teacher", str(t / "none")) + ["--out", out], "no such directory"),
        ("config a list", dm, with_flag("--teacher", w["list-config"]) + ["--out", out], "not an object"),
        ("size a string", dm, with_flag("--teacher", w["string-size"]) + ["--out", out], "hidden_size"),
        ("rope_theta 0", dm, with_flag("--teacher", w["zero-theta"]) + ["--out", out], "rope_theta"),
        ("eps negative", dm, with_flag("--teacher", w["negative-eps"]) + ["--out", out], "rms_norm_eps"),
        ("NaN weights", dm, with_flag("--teacher", w["nan-weights"]) + ["--out", out], "model.norm.weight"),
        ("tokenizer without vocab", dm, with_flag("--teacher", w["no-vocab"]) + ["--out", out], "tokenizer"),
        # distill.py: outputs over inputs and runs
        ("out is the teacher", dm, base + ["--out", T], "is the --teacher input"),
        ("run-dir is the teacher", dm, d("--run-dir", T), "is the --teacher input"),
        ("out is a file", dm, base + ["--out", str(t / "plain.txt")], "is an existing file"),
        ("out contains the inputs", dm, base + ["--out", str(t)], "contains the --teacher input"),
        ("run-dir inside out", dm, d("--run-dir", os.path.join(out, "run")), "overlap"),
        ("out over a non-model folder", dm, base + ["--out", str(t / "other-teacher" / ".."), "--overwrite"],
         "contains the --teacher input"),
        ("resume without a run", dm, d("--resume"), "no checkpoint to resume"),
        ("resume and overwrite", dm, run("--resume", "--overwrite"), "pass one of them"),
        ("a run exists", dm, run(), "holds a student already"),
        ("resume with another preset", dm, run("--resume", "--preset", "lrc"), "--preset lrc (the run has red)"),
        ("resume with another seed", dm, run("--resume", "--seed", "3"), "--seed 3 (the run has 0)"),
        ("resume another teacher", dm, [a if a != T else w["other"] for a in run("--resume")],
         "not the teacher this run was started with"),
        # init_select.py
        ("init out a json", im, i()[:-1] + [str(t / "x.json")], "not a .safetensors name"),
        ("init out into the teacher", im, i()[:-1] + [os.path.join(T, "model.safetensors")], "inside the --teacher"),
        ("init out over a run's checkpoint", im, i()[:-1] + [os.path.join(t / "run", "model.safetensors")],
         "is not a init file"),
        ("init calib latin-1", im, ["--teacher", T, "--width", "32", "--calib", str(t / "latin1.txt"), "--seq-len",
                                    "32", "--out", str(t / "n.safetensors")], "not UTF-8"),
        ("init calib missing", im, i("--calib", str(t / "nope.txt")), "no such file"),
        ("init importance unknown", im, i("--importance", "wanda"), "invalid choice"),
        ("init n-calib 0", im, i("--n-calib", "0"), "--n-calib"),
        ("init width too wide", im, i("--width", "96"), "outside 1..64"),
        ("init seq-len past the positions", im, i("--seq-len", "5000"), "exceeds the teacher's"),
        ("init NaN teacher", im, ["--teacher", w["nan-weights"]] + i()[2:], "NaN"),
        # erank.py
        ("erank model missing", em, ["--model", str(t / "none"), "--data", corpus], "none"),
        ("erank data missing", em, ["--model", T, "--data", str(t / "nope.txt")], "no such file"),
        ("erank windows 0", em, e("--windows", "0"), "--windows"),
        ("erank seq-len 1", em, ["--model", T, "--data", corpus, "--seq-len", "1"], "--seq-len"),
        ("erank kind unknown", em, e("--kind", "xx"), "invalid choice"),
        ("erank device bogus", em, e("--device", "bogus"), "--device"),
        ("erank data latin-1", em, ["--model", T, "--data", str(t / "latin1.txt"), "--seq-len", "32"], "UTF-8"),
        ("erank seq-len past the positions", em, ["--model", T, "--data", corpus, "--seq-len", "2000"], "exceeds"),
        ("erank broken config", em, ["--model", w["list-config"], "--data", corpus], "not an object"),
        # eval_reasoning.py
        ("eval out over the test set", ev, ["--model", T, "--data", str(t / "test.jsonl"), "--out",
                                            str(t / "test.jsonl")], "is the --data input"),
        ("eval out a folder", ev, ["--model", T, "--data", str(t / "test.jsonl"), "--out", str(t)], "is a directory"),
        ("eval out over a user file", ev, ["--model", T, "--data", str(t / "test.jsonl"), "--out",
                                           str(t / "nan.jsonl")], "not a predictions file"),
        ("eval data latin-1", ev, ["--model", T, "--data", str(t / "latin1.jsonl")], "not UTF-8"),
        ("eval gold NaN", ev, ["--model", T, "--data", str(t / "nan.jsonl")], "no numeric gold answer"),
        ("eval limit 0", ev, ["--model", T, "--data", str(t / "test.jsonl"), "--limit", "0"], "--limit"),
        ("eval shots negative", ev, ["--model", T, "--data", str(t / "test.jsonl"), "--shots", "-1"], "--shots"),
        ("eval ops 0", ev, ["--make-synthetic", "5", "--ops", "0", "--out", str(t / "s.jsonl")], "--ops"),
        ("eval max-value 5", ev, ["--make-synthetic", "5", "--max-value", "5", "--out", str(t / "s.jsonl")],
         "--max-value"),
        ("eval synthetic over a user file", ev, ["--make-synthetic", "5", "--out", str(t / "plain.txt")],
         "not a problem set"),
        ("eval ppl latin-1", ev, ["--model", T, "--ppl", str(t / "latin1.txt"), "--seq-len", "32"], "not UTF-8"),
        ("eval ppl past the positions", ev, ["--model", T, "--ppl", corpus, "--seq-len", "5000"], "exceeds"),
        # student.py, data.py, load_weights.py, scripts/generate.py
        ("merge out is the teacher", student.main, ["--teacher", T, "--state", str(t / "init.safetensors"),
                                                    "--out", T], "is the --teacher input"),
        ("merge state missing", student.main, ["--teacher", T, "--state", str(t / "none.safetensors"), "--out",
                                               str(t / "m")], "unreadable"),
        ("merge state not safetensors", student.main, ["--teacher", T, "--state", corpus, "--out", str(t / "m")],
         "unreadable"),
        ("merge out a file", student.main, ["--teacher", T, "--state", str(t / "init.safetensors"), "--out",
                                            str(t / "plain.txt")], "is an existing file"),
        ("data out not a .bin", data.main, ["--tokenizer", T, "--data", corpus, "--seq-len", "32", "--out",
                                            str(t / "plain.txt")], "not a .bin name"),
        ("data out over a raw .bin", data.main, ["--tokenizer", T, "--data", corpus, "--seq-len", "32", "--out",
                                                 str(t / "raw.bin")], "not a token file"),
        ("data self:N outside a run", data.main, ["--tokenizer", T, "--data", "self:4"], "only inside a distill"),
        ("data seq-len 0", data.main, ["--tokenizer", T, "--data", corpus, "--seq-len", "0"], "--seq-len"),
        ("load missing", load_weights.main, ["--model", str(t / "none")], "no such directory"),
        ("load NaN weights", load_weights.main, ["--model", w["nan-weights"]], "NaN"),
        ("generate empty prompt", script_main("generate"), ["--model", T, ""], "prompt is empty"),
        ("generate max-new-tokens 0", script_main("generate"), ["--model", T, "hi", "--max-new-tokens", "0"],
         "--max-new-tokens"),
        ("generate past the positions", script_main("generate"), ["--model", T, "hi", "--max-new-tokens", "5000"],
         "exceeds the model's"),
    ]


def exit_status(main, argv) -> int:
    """main(argv) in-process: its exit status (what it prints, the caller's capsys holds). Any exception other
    than SystemExit fails the test that called it."""
    try:
        main([str(a) for a in argv])
        return 0
    except SystemExit as e:
        return e.code


def check_refusals(table, root, capsys, *, after_each=None, seconds: float = 60) -> int:
    """Every (name, main, argv, fragment) of the table: exit 2, exactly one `error: <what> - <what to do>` line
    naming the fragment, within `seconds`, and not one file under root changed. Returns the table's length."""
    before = snapshot(root)
    capsys.readouterr()
    for name, main, argv, fragment in table:
        started = time.perf_counter()
        code = exit_status(main, argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (name, code, err[-400:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and " - " in lines[0], (name, err[-400:])
        assert fragment in lines[0], (name, lines[0])
        assert time.perf_counter() - started < seconds, f"{name}: took {time.perf_counter() - started:.0f} s"
        assert snapshot(root) == before, f"{name}: a file changed"
        if after_each is not None:
            after_each(name)
    return len(table)


def test_hostile_inputs_are_one_line_exit_2_and_change_nothing(world, capsys):
    table = cases(world)
    assert len(table) >= 60
    check_refusals(table, world["root"], capsys)
    print(f"\n{len(table)} hostile inputs: every one exit 2, one line, nothing changed")


def test_check_outputs_rules(tmp_path):
    """The rule itself: equal, inside, containing, overlapping outputs, kinds, and what may be replaced."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "w.bin").write_bytes(b"x")
    (tmp_path / "f.txt").write_text("x")
    ok = cli.Output("--out", str(tmp_path / "new"), "dir")
    cli.check_outputs({"--in": str(tmp_path / "in")}, [ok])
    bad = {
        "is the --in input": [cli.Output("--out", str(tmp_path / "in"), "dir")],
        "lies inside the --in input": [cli.Output("--out", str(tmp_path / "in" / "x"), "dir")],
        "contains the --in input": [cli.Output("--out", str(tmp_path), "dir")],
        "overlap": [ok, cli.Output("--run-dir", str(tmp_path / "new" / "run"), "dir")],
        "is an existing file": [cli.Output("--out", str(tmp_path / "f.txt"), "dir")],
        "is a directory": [cli.Output("--out", str(tmp_path / "in"), "file")],
        "is not a report": [cli.Output("--out", str(tmp_path / "f.txt"), "file", lambda p: False, "report")],
    }
    for fragment, outputs in bad.items():
        inputs = {"--in": str(tmp_path / "in")} if "--in" in fragment else {}
        with pytest.raises(cli.OutputError, match=fragment):
            cli.check_outputs(inputs, outputs)
    os.symlink(tmp_path / "in", tmp_path / "link")  # a link to an input is that input
    with pytest.raises(cli.OutputError, match="is the --in input"):
        cli.check_outputs({"--in": str(tmp_path / "in")}, [cli.Output("--out", str(tmp_path / "link"), "dir")])
