"""checkpoint.py: the checkpoint swap is safe at every instant (a crash forced before and after every file
operation of a save always leaves a complete checkpoint, bit-for-bit the previous or the new one), leftovers are
cleaned, metrics are cut back to the resumed step, and a run directory holds one process at a time.

Builds on checkpoint.py, run_lock.py, student.py and init_select.py, with conftest.py's tiny models.
Run as: pytest tests/test_checkpoint.py -q
"""
import json
import os
import shutil

import pytest
import torch

import checkpoint as ckpt
import run_lock
from init_select import init_projections
from load_weights import load_model
from student import Student


class Crash(Exception):
    """The process dies here."""


def trained_state(tiny_model):
    teacher = load_model(tiny_model("llama"))
    student = Student(teacher, 32, *init_projections("gaussian", teacher, 32)[:2])
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    return teacher, student, optimizer


def step(student, optimizer):
    loss = sum((p ** 2).sum() for p in student.parameters())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def snapshot(student, optimizer) -> dict:
    """Every tensor a checkpoint holds, copied."""
    out = {f"p.{k}": v.detach().clone() for k, v in student.state_dict().items()}
    for i, p in enumerate(student.parameters()):
        out |= {f"o.{i}.{k}": torch.as_tensor(v).clone() for k, v in optimizer.state[p].items()}
    return out


def loaded(teacher, path) -> tuple[dict, int]:
    """(snapshot, step) of what resuming from checkpoint `path` restores."""
    student = Student(teacher, 32, *init_projections("orthogonal", teacher, 32)[:2])  # different values
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    state = ckpt.load_checkpoint(path, student, optimizer)
    return snapshot(student, optimizer), state["step"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_at_any_instant_of_the_swap_leaves_a_complete_checkpoint(tiny_model, tmp_path, monkeypatch):
    teacher, student, optimizer = trained_state(tiny_model)
    step(student, optimizer)
    base, run = str(tmp_path / "base"), str(tmp_path / "run")
    os.makedirs(base)
    ckpt.save_checkpoint(base, 1, student, optimizer, {"data": {"cursor": 1}})  # the last good state
    old = snapshot(student, optimizer)
    step(student, optimizer)
    new = snapshot(student, optimizer)
    real = {"replace": os.replace, "rmtree": shutil.rmtree, "save_file": ckpt.save_file, "makedirs": os.makedirs}
    outcomes = []
    for crash_at in range(1, 100):  # crash before operation 1, 2, ...: i.e. after every one of them
        calls = [0]

        def fatal(name):
            def op(*args, **kwargs):
                calls[0] += 1
                if calls[0] == crash_at:
                    raise Crash(name)
                return real[name](*args, **kwargs)
            return op
        if os.path.isdir(run):
            shutil.rmtree(run)
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", fatal("replace"))
            m.setattr(shutil, "rmtree", fatal("rmtree"))
            m.setattr(os, "makedirs", fatal("makedirs"))
            m.setattr(ckpt, "save_file", fatal("save_file"))
            try:
                ckpt.save_checkpoint(run, 2, student, optimizer, {"data": {"cursor": 2}})
                finished = True
            except Crash:
                finished = False
        # a new process starts: cleans the leftovers, resumes from the newest complete checkpoint
        ckpt.clean(run)
        latest = ckpt.latest_checkpoint(run)
        assert latest is not None, f"crash at operation {crash_at} left no checkpoint"
        restored, at = loaded(teacher, latest)
        assert same(restored, {1: old, 2: new}[at]), f"crash at operation {crash_at}: checkpoint {at} is not exact"
        assert os.listdir(run) == [os.path.basename(latest)], os.listdir(run)  # nothing else left behind
        outcomes.append(at)
        if finished:
            break
    assert finished and outcomes[-1] == 2 and outcomes[0] == 1 and crash_at > 5  # every operation was hit
    print(f"{crash_at - 1} crash points: resumed from checkpoint {outcomes}")


def test_truncate_metrics_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(6))
    path.write_text(lines + '{"step": 6, "lo')  # the last line cut short by a kill
    ckpt.truncate_metrics(str(tmp_path), 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_a_run_directory_holds_one_process(tmp_path):
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "import run_lock; run_lock.lock(sys.argv[2]); print('locked', flush=True); "
                               "time.sleep(60)", os.path.dirname(os.path.dirname(__file__)), str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.RunError, match="another distill.py is using this run directory"):
            run_lock.lock(str(tmp_path / "run"))
    finally:
        holder.kill()
        holder.wait()
    run_lock.lock(str(tmp_path / "run"))  # free again once the other process is gone
    run_lock.release()


def test_a_damaged_checkpoint_is_one_line(tiny_model, tmp_path):
    teacher, student, optimizer = trained_state(tiny_model)
    run = str(tmp_path / "run")
    os.makedirs(run)
    ckpt.save_checkpoint(run, 3, student, optimizer, {})
    latest = ckpt.latest_checkpoint(run)
    with open(os.path.join(latest, "optimizer.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ckpt.RunError, match="damaged checkpoint") as err:
        ckpt.load_checkpoint(latest, student, optimizer)
    assert "\n" not in str(err.value)
