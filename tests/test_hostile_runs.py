"""The run directory, checkpoints, resume and signals read as untrusted input: a table of hostile runs (user
folders and students as --run-dir, tampered state.json / config.json / tensors, absurd sizes and ranges), each of
which must end with exit status 2, exactly one `error:` line and not one file changed; every bit of a checkpoint
flipped in turn, detected; two runs started together on one --out, one refused; a signal in every phase, exit 130
with the last complete output untouched; a full disk as safetensors reports it, one line; moved, copied and
relative-path runs resumed where they are; data checked by content (other data refused, moved or packed data
named again accepted).

Builds on distill.py, checkpoint.py, run_config.py and cli.py, with conftest.py's tiny teachers and
test_cli.py's snapshot.
Run as: pytest tests/test_hostile_runs.py -q
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import checkpoint as ckpt
import data
import distill
import load_weights
import run_config
from conftest import make_tiny_teacher
from load_weights import load_model
from test_cli import TEXT, check_refusals, exit_status, snapshot

ROOT = Path(__file__).resolve().parents[1]
FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors on ENOSPC


def reseal(checkpoint: Path):
    """Rewrite checksums.json for the files as they are now: a tampering that knows the format."""
    sums = {p.name: ckpt.sha256(str(p)) for p in sorted(checkpoint.iterdir()) if p.name != ckpt.SUMS}
    (checkpoint / ckpt.SUMS).write_text(json.dumps({"sha256": sums}))


def edit_json(path: Path, change):
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(change(obj)))


def edit_tensors(path: Path, change):
    save_file(change(load_file(str(path))), str(path))


def run_main(argv) -> int:
    """distill.main in-process: its exit status (what it prints, the caller's capsys holds)."""
    return exit_status(distill.main, argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A teacher, a corpus, a finished run, a half-done run (checkpoint 2 of 4), copies of it tampered with."""
    t = tmp_path_factory.mktemp("hostile-runs")
    teacher = make_tiny_teacher(t / "teacher")
    (t / "corpus.txt").write_text(TEXT)
    base = ["--teacher", teacher, "--width", "32", "--data", str(t / "corpus.txt"), "--seq-len", "32",
            "--batch-size", "4", "--n-calib", "4", "--eval-problems", "0", "--eval-every", "1000"]
    distill.main(base + ["--steps", "2", "--out", str(t / "run")])
    distill.main(base + ["--steps", "4", "--stop-at", "2", "--out", str(t / "half")])
    (t / "other.txt").write_text(TEXT.swapcase())  # other text, a file of the same size
    for name in ("gone", "edited"):  # runs whose data file is then deleted, or rewritten in place
        shutil.copy(t / "corpus.txt", t / f"{name}.txt")
        distill.main([a if a != str(t / "corpus.txt") else str(t / f"{name}.txt") for a in base] + [
            "--steps", "4", "--stop-at", "2", "--out", str(t / name)])
    (t / "gone.txt").unlink()
    (t / "edited.txt").write_text(TEXT.swapcase())
    (t / "mine").mkdir()  # a user's folder that happens to hold files named like a run's
    (t / "mine" / "metrics.jsonl").write_text("my measurements\n")
    (t / "mine" / "lock").write_text("my lock\n")
    state = lambda change: lambda c: edit_json(c / "state.json", change)
    data = lambda change: state(lambda s: s | {"data": change(s["data"])})
    tensors = lambda name, change: lambda c: edit_tensors(c / name, change)
    tampered = {  # name -> change to the newest checkpoint, resealed
        "step-abc": state(lambda s: s | {"step": "abc"}),
        "step-negative": state(lambda s: s | {"step": -5}),
        "step-999": state(lambda s: s | {"step": 999}),
        "no-data": state(lambda s: {"step": s["step"]}),
        "epoch-string": data(lambda d: d | {"epoch": "x"}),
        "epoch-negative": data(lambda d: d | {"epoch": -1}),
        "cursor-past-epoch": data(lambda d: d | {"cursor": 10 ** 9}),
        "draws-changed": data(lambda d: d | {"draws": [d["draws"][0] + 1]}),
        "state-seed-changed": data(lambda d: d | {"seed": 7}),
        "optimizer-misshaped": tensors("optimizer.safetensors", lambda o: o | {"0.exp_avg": torch.zeros(3, 5)}),
        "optimizer-missing": tensors("optimizer.safetensors", lambda o: {k: v for k, v in o.items()
                                                                           if k != "1.exp_avg_sq"}),
        "student-extra": tensors("student.safetensors", lambda s: s | {"bogus": torch.zeros(2)}),
        "student-nan": tensors("student.safetensors", lambda s: s | {"norm": s["norm"] * float("nan")}),
    }
    unsealed = {
        "no-checksums": lambda c: (c / ckpt.SUMS).unlink(),
        "extra-file": lambda c: (c / "notes.txt").write_text("x"),
        "edited-unsealed": state(lambda s: s | {"step": 999}),
    }
    config = lambda change: lambda r: edit_json(r / "config.json", change)
    configs = {
        "config-string": config(lambda c: c | {"seq_len": "32"}),
        "config-seed-huge": config(lambda c: c | {"seed": 2 ** 70}),
        "config-width-48": config(lambda c: c | {"width": 48}),
        "config-lr-negative": config(lambda c: c | {"lr": -1.0}),
        "config-no-fingerprint": config(lambda c: {k: v for k, v in c.items() if k != "teacher_fingerprint"}),
        "config-a-list": config(lambda c: [c]),
        "config-unknown-preset": config(lambda c: c | {"preset": "fast"}),
        "config-data-empty": config(lambda c: c | {"data": []}),
        "config-data-sums": config(lambda c: c | {"data_fingerprints": ["a", "b"]}),
        "config-deleted": lambda r: (r / "config.json").unlink(),
    }
    for name, change in {**tampered, **unsealed, **configs}.items():
        shutil.copytree(t / "half.run", t / f"{name}.run")
        latest = Path(ckpt.latest_checkpoint(str(t / f"{name}.run")))
        change(t / f"{name}.run") if name in configs else change(latest)
        if name in tampered:
            reseal(latest)
    renamed = t / "renamed-999.run"  # a checkpoint past --steps, consistent in itself
    shutil.copytree(t / "half.run", renamed)
    latest = Path(ckpt.latest_checkpoint(str(renamed)))
    latest.rename(renamed / "checkpoint-00000999")
    edit_json(renamed / "checkpoint-00000999" / "state.json", lambda s: s | {"step": 999})
    reseal(renamed / "checkpoint-00000999")
    return dict(root=t, teacher=teacher, base=base)


def cases(w) -> list[tuple[str, list, str]]:
    """(name, argv, a fragment of the one error line)."""
    t, base = w["root"], w["base"]
    d = lambda *extra: base + ["--steps", "1", "--out", t / "fresh", *extra]  # a fresh run
    resume = lambda name, *extra: ["--out", t / name, "--resume", *extra]  # the run's own settings
    return [
        # 1. --run-dir: never a user's folder, never a student, even with --overwrite
        ("run-dir a user's folder", d("--run-dir", t / "mine"), "is not a red run directory"),
        ("run-dir a user's folder, --overwrite", d("--run-dir", t / "mine", "--overwrite"),
         "is not a red run directory"),
        ("run-dir a finished student, --overwrite", d("--run-dir", t / "run", "--overwrite"),
         "is not a red run directory"),
        ("run-dir the teacher, --overwrite", d("--run-dir", w["teacher"], "--overwrite"), "--teacher input"),
        ("--skip-damaged on a fresh run", d("--skip-damaged"), "add --resume"),
        ("--keep-checkpoints 0", d("--keep-checkpoints", "0"), "--keep-checkpoints"),
        # 2. --out on resume: never another model
        ("resume --out over another model", ["--run-dir", t / "half.run", "--out", t / "run", "--resume"],
         "holds a student this run did not write"),
        # 3, 13. state.json, field by field (resealed: the checksums agree)
        ("state step 'abc'", resume("step-abc"), "step 'abc' is not the folder's 2"),
        ("state step -5", resume("step-negative"), "step -5"),
        ("state without data", resume("no-data"), "no data position"),
        ("state epoch 'x'", resume("epoch-string"), "data epoch 'x' is not a count"),
        ("state epoch -1", resume("epoch-negative"), "data epoch -1"),
        ("state cursor past the epoch", resume("cursor-past-epoch"), "past the epoch"),
        ("state draws of other data", resume("draws-changed"), "data"),
        ("state seed changed", resume("state-seed-changed"), "seed"),
        ("optimizer tensor mis-shaped", resume("optimizer-misshaped"), "0.exp_avg has shape (3, 5)"),
        ("optimizer tensor missing", resume("optimizer-missing"), "1.exp_avg_sq missing"),
        ("student extra tensor", resume("student-extra"), "unexpected tensor bogus"),
        ("student NaN", resume("student-nan"), "NaN"),
        # 5. what the checksums catch
        ("checksums.json removed", resume("no-checksums"), "no checksums.json"),
        ("a file added to a checkpoint", resume("extra-file"), "not recorded"),
        ("state.json edited, not resealed", resume("edited-unsealed"), "state.json differs"),
        # 6. nothing written as finished before --steps
        ("state step 999", resume("step-999"), "not the folder's 2"),
        ("checkpoint past --steps", resume("renamed-999"), "past --steps 4"),
        ("resume --steps below the checkpoint", resume("half", "--steps", "1"), "past --steps 1"),
        # 10, 13. config.json, field by field, before any work
        ("config deleted", resume("config-deleted"), "config.json is missing"),
        ("config a string for an int", resume("config-string"), "seq_len '32' is not an integer"),
        ("config seed 2**70", resume("config-seed-huge"), "seed"),
        ("config width changed", resume("config-width-48"), "this run needs"),
        ("config lr negative", resume("config-lr-negative"), "lr -1.0"),
        ("config without fingerprint", resume("config-no-fingerprint"), "teacher_fingerprint"),
        ("config a list", resume("config-a-list"), "not a JSON object"),
        ("config unknown preset", resume("config-unknown-preset"), "preset 'fast'"),
        ("config no data", resume("config-data-empty"), "data []"),
        ("config two data fingerprints for one source", resume("config-data-sums"), "one fingerprint per --data"),
        # the data: checked by content, wherever it now is
        ("resume on other data", resume("half", "--data", t / "other.txt"), "not the data this run was started"),
        ("resume with the data weighted", resume("half", "--data", f"{t / 'corpus.txt'}:2"), "(the run has"),
        ("resume with a source added", resume("half", "--data", t / "corpus.txt", "pydoc"), "(the run has"),
        ("resume, the data file gone", resume("gone"), "the run's data is not there any more"),
        ("resume, the data file rewritten", resume("edited"), "not the data this run was started"),
        # 7, 8, 14. sizes and ranges, refused up front
        ("grad-accum 1e9", d("--grad-accum", "1000000000"), "--grad-accum"),
        ("batch-size 1e6", d("--batch-size", "1000000"), "--batch-size"),
        ("batch-size past the data", d("--batch-size", "60000"), "per epoch"),
        ("grad-accum past the data", d("--grad-accum", "5000"), "per epoch"),
        ("seed 2**70", d("--seed", str(2 ** 70)), "--seed"),
        ("device meta", d("--device", "meta"), "--device"),
        ("n-calib past the data", d("--n-calib", "100000"), "--n-calib"),
        ("alpha 1e308", d("--alpha", "1e308"), "--alpha"),
        ("kl-temperature 1e-300", d("--kl-temperature", "1e-300"), "--kl-temperature"),
        ("orth-reg 1e308", d("--orth-reg", "1e308"), "--orth-reg"),
        ("eval-problems 1e9", d("--eval-problems", "1000000000"), "--eval-problems"),
        ("out ''", base + ["--steps", "1", "--out", ""], "--out"),
        ("run-dir ''", d("--run-dir", ""), "--run-dir"),
        ("teacher ''", ["--teacher", ""] + base[2:] + ["--out", t / "fresh"], "--teacher"),
    ]


def test_hostile_runs_are_one_line_exit_2_and_change_nothing(world, capsys, monkeypatch):
    def no_example_teacher():
        raise AssertionError("the example teacher was built")
    monkeypatch.setattr(run_config, "example_teacher", no_example_teacher)  # refused before any expensive work
    table = [(name, distill.main, argv, fragment) for name, argv, fragment in cases(world)]

    def nothing_left(name):  # a refused run leaves neither its folders nor its lock behind
        assert not (world["root"] / "fresh").exists() and not (world["root"] / "fresh.run").exists(), name
        assert not (world["root"] / ".fresh.lock").exists(), name
    check_refusals(table, world["root"], capsys, after_each=nothing_left)
    print(f"\n{len(table)} hostile runs: every one exit 2, one line, nothing changed")


def test_every_bit_flip_in_a_checkpoint_is_refused(world, tmp_path, capsys):
    run = tmp_path / "flip.run"
    shutil.copytree(world["root"] / "half.run", run)
    latest = Path(ckpt.latest_checkpoint(str(run)))
    files = sorted(p for p in latest.iterdir())
    assert {p.name for p in files} == {"student.safetensors", "optimizer.safetensors", "state.json", ckpt.SUMS}
    before = snapshot(tmp_path)
    capsys.readouterr()
    flips = 0
    for path in files:
        good = path.read_bytes()
        for at in sorted({0, len(good) // 3, len(good) // 2, len(good) - 2}):
            bad = bytearray(good)
            bad[at] ^= 1 << (at % 8)
            path.write_bytes(bytes(bad))
            code = run_main(["--out", tmp_path / "flip", "--resume"])
            lines = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "damaged checkpoint" in lines[0], (path.name, at, lines)
            path.write_bytes(good)
            flips += 1
    assert snapshot(tmp_path) == before
    code = run_main(["--out", tmp_path / "flip", "--resume", "--stop-at", "3"])  # intact, it resumes
    assert code == 0 and ckpt.latest_checkpoint(str(run)).endswith("checkpoint-00000003")
    print(f"\n{flips} flipped bits in {len(files)} files: every one refused")


def test_skip_damaged_resumes_from_the_newest_sound_checkpoint(world, tmp_path, capsys):
    """--keep-checkpoints 2 keeps an older checkpoint: a damaged newest one is refused with the older one named;
    --skip-damaged sets it aside (kept, renamed) and resumes from the older, ending as the run that never broke."""
    base = world["base"] + ["--steps", "4", "--ckpt-every", "1", "--keep-checkpoints", "2"]
    assert run_main(base + ["--stop-at", "3", "--out", tmp_path / "broken"]) == 0
    run = tmp_path / "broken.run"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-00000002", "checkpoint-00000003"]  # the two newest
    weights = run / "checkpoint-00000003" / "student.safetensors"
    bad = bytearray(weights.read_bytes())
    bad[len(bad) // 2] ^= 1
    weights.write_bytes(bytes(bad))
    capsys.readouterr()
    assert run_main(["--out", tmp_path / "broken", "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "damaged checkpoint" in lines[0] and \
        "checkpoint-00000002 with --resume --skip-damaged" in lines[0], lines
    assert run_main(["--out", tmp_path / "broken", "--resume", "--skip-damaged"]) == 0
    assert (run / "damaged-checkpoint-00000003" / "student.safetensors").read_bytes() == bytes(bad)  # kept
    assert run_main(base + ["--out", tmp_path / "whole"]) == 0
    ends = [load_file(str(tmp_path / f"{name}.run" / "checkpoint-00000004" / "student.safetensors"))
            for name in ("broken", "whole")]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    steps = lambda name: [r["step"] for r in ckpt.read_metrics(str(tmp_path / f"{name}.run"))]
    assert steps("broken") == steps("whole")  # the metrics of steps 3-4 redone once, not twice
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-00000003", "checkpoint-00000004"]


def start(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "distill.py", *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


@pytest.mark.parametrize("run_dirs", ["same", "different"])
def test_two_runs_on_one_out_one_is_refused(world, tmp_path, run_dirs):
    out = tmp_path / "student"
    argv = lambda i: world["base"] + ["--steps", "30", "--out", out] + (
        ["--run-dir", tmp_path / f"run{i}"] if run_dirs == "different" else [])
    first = start(argv(1))
    time.sleep(0.3)
    second = start(argv(2))
    results = [(p.returncode, err) for p in (first, second) for _, err in [p.communicate(timeout=300)]]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    code, err = next(r for r in results if r[0] == 2)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("another distill.py" in last or "already" in last), err[-500:]
    winner = next(i for i, (c, _) in enumerate(results, 1) if c == 0)
    run_dir = str(out) + ".run" if run_dirs == "same" else str(tmp_path / f"run{winner}")
    assert ckpt.owns_output(run_dir, str(out)) and load_model(str(out)).args.dim == 32
    assert ckpt.latest_checkpoint(run_dir).endswith("checkpoint-00000030")
    if run_dirs == "different":  # the refused run left nothing behind
        assert not (tmp_path / f"run{3 - winner}").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["student", os.path.basename(run_dir)])


def test_a_held_out_lock_refuses_another_run_dir(world, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "import run_lock; run_lock.claim(sys.argv[2], sys.argv[3]); print('locked', "
                               "flush=True); time.sleep(60)", str(ROOT), str(tmp_path / "s"), str(tmp_path / "a")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        code = run_main(world["base"] + ["--steps", "1", "--out", tmp_path / "s", "--run-dir", tmp_path / "b"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "another distill.py is writing this student" in lines[0], lines
        assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()
    finally:
        holder.kill()
        holder.wait()


PHASES = {  # phase -> (function to patch, its owner, which call sends the signal)
    "teacher": ("load_model", distill, 1), "data": ("load_sources", distill, 1),
    "calibration": ("init_projections", distill, 1), "step-0 checkpoint": ("save_file", ckpt, 1),
    "step-0 validation": ("validate", distill, 1), "training": ("train_step", distill, 2),
    "final save": ("save_model", distill, 1), "summary": ("validate", distill, 3),
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_every_phase_is_exit_130_and_one_line(world, tmp_path, capsys, monkeypatch, sig):
    for phase, (name, owner, at) in PHASES.items():
        real, calls = getattr(owner, name), [0]

        def signalled(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), sig)  # delivered here, as from outside, in the middle of the phase
            return real(*args, **kwargs)
        out = tmp_path / f"{phase.replace(' ', '-')}-{sig}"
        with monkeypatch.context() as m:
            m.setattr(owner, name, signalled)
            capsys.readouterr()
            code = run_main(world["base"] + ["--steps", "3", "--out", out])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert code == 130 and "Traceback" not in err, (phase, err[-500:])
        if phase == "training":  # the step finishes and is checkpointed; --resume continues
            assert "continue with --resume" in last and not out.exists(), (phase, last)
            assert ckpt.verify_checkpoint(ckpt.latest_checkpoint(f"{out}.run"))["step"] == 2
        else:
            assert last.startswith("error: interrupted - "), (phase, err[-500:])
        run_exists = phase not in ("teacher", "data", "calibration", "step-0 checkpoint")
        assert os.path.isdir(f"{out}.run") == run_exists, phase  # a run that never started leaves nothing
        assert not (tmp_path / f".{out.name}.lock").exists(), phase
        if run_exists:
            ckpt.verify_checkpoint(ckpt.latest_checkpoint(f"{out}.run"))
        if phase in ("final save", "summary"):  # the student was complete before the signal was honoured
            assert ckpt.owns_output(f"{out}.run", str(out)) and load_model(str(out)).args.dim == 32
        if phase in ("step-0 validation", "training", "summary"):
            assert run_main(["--out", out, "--resume"]) == 0, phase
            assert ckpt.owns_output(f"{out}.run", str(out)), phase


def test_sigterm_while_starting_is_one_line(world, tmp_path):
    from test_distill import wait_for_torch_import
    proc = start(world["base"] + ["--steps", "1", "--out", tmp_path / "early"])
    wait_for_torch_import(proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip().splitlines() == [
        "error: interrupted while starting - nothing was written"], err[-500:]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["checkpoint 0", "mid-run checkpoint", "final save"])
def test_a_full_disk_is_one_line_and_keeps_the_last_complete_state(world, tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "full"
    if where == "final save":  # over an earlier student, which must survive
        run_main(world["base"] + ["--steps", "1", "--out", out])
    before = snapshot(out) if out.exists() else None
    owner, name, hit = {"checkpoint 0": (ckpt, "save_file", "checkpoint-00000000"),
                        "mid-run checkpoint": (ckpt, "save_file", "checkpoint-00000002"),
                        "final save": (load_weights, "save_file", "model.safetensors")}[where]
    real = getattr(owner, name)

    def disk_full(tensors, path, *args, **kwargs):
        if hit in path:
            raise SafetensorError(FULL)
        return real(tensors, path, *args, **kwargs)
    monkeypatch.setattr(owner, name, disk_full)
    capsys.readouterr()
    code = run_main(world["base"] + ["--steps", "3", "--ckpt-every", "1", "--out", out] +
                       (["--overwrite"] if before else []))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "No space left on device" in lines[-1], lines
    assert "free some space" in lines[-1] and not any("Traceback" in line for line in lines)
    run_dir = f"{out}.run"
    if where == "checkpoint 0":  # the run never started: nothing of it is left
        assert not os.path.exists(run_dir) and not out.exists()
        return
    assert ckpt.verify_checkpoint(ckpt.latest_checkpoint(run_dir))["step"] == {"mid-run checkpoint": 1,
                                                                               "final save": 3}[where]
    assert (snapshot(out) if out.exists() else None) == before  # the earlier student untouched, or none
    monkeypatch.setattr(owner, name, real)
    assert run_main(["--out", out, "--resume"]) == 0 and ckpt.owns_output(run_dir, str(out))


def test_moved_copied_and_relative_runs_resume_where_they_are(world, tmp_path, capsys, monkeypatch):
    half = world["root"] / "half.run"
    original = snapshot(world["root"])
    # a copy continues itself, never the original run directory
    shutil.copytree(half, tmp_path / "copy" / "half.run")
    assert run_main(["--out", tmp_path / "copy" / "half", "--resume"]) == 0
    assert ckpt.latest_checkpoint(str(tmp_path / "copy" / "half.run")).endswith("checkpoint-00000004")
    assert (tmp_path / "copy" / "half").is_dir() and snapshot(world["root"]) == original
    # its data moved, or packed into a .bin (the same ids): named again where it is now, checked by content
    sums = lambda run: json.loads((run / "config.json").read_text())["data_fingerprints"]
    shutil.copy(world["root"] / "corpus.txt", tmp_path / "renamed.txt")
    assert exit_status(data.main, ["--tokenizer", world["teacher"], "--data", tmp_path / "renamed.txt",
                                   "--seq-len", "32", "--out", tmp_path / "packed.bin"]) == 0
    for name, moved in [("data-moved", tmp_path / "renamed.txt"), ("data-packed", tmp_path / "packed.bin")]:
        shutil.copytree(half, tmp_path / f"{name}.run")
        assert run_main(["--out", tmp_path / name, "--resume", "--data", moved, "--stop-at", "3"]) == 0
        assert json.loads((tmp_path / f"{name}.run" / "config.json").read_text())["data"] == [str(moved)]
        assert sums(tmp_path / f"{name}.run") == sums(half)
    # a moved run, resumed by its run directory alone, from another folder, with a relative path
    shutil.copytree(half, tmp_path / "moved" / "elsewhere.run")
    monkeypatch.chdir(tmp_path / "moved")
    assert run_main(["--run-dir", "elsewhere.run", "--resume", "--stop-at", "3"]) == 0
    assert ckpt.latest_checkpoint(str(tmp_path / "moved" / "elsewhere.run")).endswith("checkpoint-00000003")
    # a run started with relative paths, resumed from another working directory (the data named again too)
    shutil.copytree(world["root"] / "teacher", tmp_path / "teacher")
    shutil.copy(world["root"] / "corpus.txt", tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    relative = ["--teacher", "teacher", "--width", "32", "--data", "corpus.txt"] + world["base"][6:]
    assert run_main(relative + ["--steps", "3", "--stop-at", "1", "--out", "rel"]) == 0
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert run_main(["--out", "../rel", "--resume", "--data", "../corpus.txt", "--stop-at", "2"]) == 0
    assert run_main(["--run-dir", "../rel.run", "--resume"]) == 0
    assert ckpt.owns_output(str(tmp_path / "rel.run"), str(tmp_path / "rel"))
    assert [r["step"] for r in ckpt.read_metrics(str(tmp_path / "rel.run"))] == [0, 1, 2, 3]
