"""The run directory of a distillation: checkpoints that survive a kill at any instant, and its metrics.

    RUN_DIR/config.json                  the resolved configuration, the teacher's fingerprint, the init's info
    RUN_DIR/metrics.jsonl                one JSON line per optimizer step (and per validation)
    RUN_DIR/checkpoint-00000600/         student.safetensors (projections + gains), optimizer.safetensors
                                         (AdamW moments), state.json (step, data position): safetensors + JSON,
                                         no pickle
    RUN_DIR/lock                         held (flock) by the process using the run directory

The swap: a checkpoint is written into `.checkpoint-N.tmp/` and renamed to `checkpoint-N/` in one atomic
rename; only then are older checkpoints deleted. A kill at any instant therefore leaves at least one complete
`checkpoint-*/`, and `latest_checkpoint` takes the newest; `clean` removes the leftovers of a kill on the next
start, and `truncate_metrics` drops metric lines written after the checkpoint a run resumes from.

distill.py's setup ends here: `restore_run` continues a run from its newest checkpoint (--resume, after
`check_same_teacher`), `start_run` begins one afresh and writes config.json last, so a run exists only once
its step-0 checkpoint does.

Builds on student.py (the state it saves) and cli.py.
Run as: imported by distill.py.
"""
import fcntl
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

import cli

CHECKPOINT = re.compile(r"checkpoint-(\d{8})")


class RunError(ValueError):
    """A run that cannot start or resume as asked (one line, says what to do)."""


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"checkpoint-{step:08d}")


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint directory of a run, or None. (A `checkpoint-N` exists only complete.)"""
    if not os.path.isdir(run_dir):
        return None
    steps = [int(m.group(1)) for name in os.listdir(run_dir) if (m := CHECKPOINT.fullmatch(name))]
    return checkpoint_dir(run_dir, max(steps)) if steps else None


def clean(run_dir: str):
    """Remove what a kill left behind: unfinished `.checkpoint-*.tmp` and checkpoints older than the newest."""
    latest = latest_checkpoint(run_dir)
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if (name.startswith(".checkpoint-") and name.endswith(".tmp")) or (
                CHECKPOINT.fullmatch(name) and path != latest):
            shutil.rmtree(path)


def save_checkpoint(run_dir: str, step: int, student, optimizer, state: dict):
    """Projections + gains, AdamW state (safetensors) and state.json into checkpoint-<step>, atomically."""
    final = checkpoint_dir(run_dir, step)
    if os.path.isdir(final):  # this step is already saved, complete (e.g. stopped right after resuming)
        return
    tmp = os.path.join(run_dir, f".checkpoint-{step:08d}.tmp")
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    save_file({k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()},
              os.path.join(tmp, "student.safetensors"))
    opt = {}
    for i, p in enumerate(student.parameters()):
        for key, value in optimizer.state.get(p, {}).items():  # step, exp_avg, exp_avg_sq
            opt[f"{i}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    save_file(opt, os.path.join(tmp, "optimizer.safetensors"))
    cli.write_json(os.path.join(tmp, "state.json"), dict(state, step=step))  # last: its presence = complete
    os.replace(tmp, final)  # the one atomic moment: before it the old checkpoint is the newest, after it this one
    clean(run_dir)


def load_checkpoint(path: str, student, optimizer) -> dict:
    """Restore the projections, gains and AdamW state that save_checkpoint wrote; returns state.json."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        student.load_state_dict(load_file(os.path.join(path, "student.safetensors")))
        opt = load_file(os.path.join(path, "optimizer.safetensors"))
    except Exception as e:  # OSError, JSON, safetensors' own errors, a state dict of other shapes
        raise RunError(f"{path}: damaged checkpoint ({type(e).__name__}: {str(e)[:100]}) - start afresh with "
                       "--overwrite") from None
    for i, p in enumerate(student.parameters()):
        keys = [k for k in opt if k.startswith(f"{i}.")]
        optimizer.state[p] = {k.split(".", 1)[1]: opt[k].to(p.device) if opt[k].dim() else opt[k] for k in keys}
    return state


# ---------------------------------------------------------------------------------------------------------
# The run directory as a whole

def check_run_paths(out: str, run_dir: str, inputs: dict, resume: bool, overwrite: bool):
    """distill.py's outputs under the one output rule (cli.check_outputs), and the run-directory rule: an existing
    run is continued (--resume) or replaced (--overwrite), never silently; run before anything is loaded."""
    cli.check_outputs(inputs, [cli.Output("--out", out, "dir", cli.is_checkpoint_dir, "checkpoint directory"),
                               cli.Output("--run-dir", run_dir, "dir")])
    if os.path.isdir(out) and not (resume or overwrite):
        raise RunError(f"--out {out} holds a student already - pass --overwrite to replace it (and its run), "
                       "--resume to continue its run, or another --out")
    if resume and latest_checkpoint(run_dir) is None:
        raise RunError(f"{run_dir}: no checkpoint to resume - drop --resume, or pass the run's --out / --run-dir")
    if not resume and holds_run(run_dir) and not overwrite:
        raise RunError(f"{run_dir}: holds a run already - continue it with --resume, or replace it with "
                       "--overwrite")


def holds_run(run_dir: str) -> bool:
    """Whether a run has started in `run_dir` (its config.json is written once setup succeeded)."""
    return os.path.isfile(os.path.join(run_dir, "config.json"))


_held: dict[str, object] = {}  # run directory -> the open lock file of this process


def lock(run_dir: str):
    """Hold an exclusive lock on the run directory for the life of this process (RunError if another process
    has it). A lock this process took for an earlier run on the same directory is let go first."""
    os.makedirs(run_dir, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _held:
        _held.pop(key).close()
    handle = open(os.path.join(run_dir, "lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError(f"{run_dir}: another distill.py is using this run directory - wait for it, or use "
                       "another --out / --run-dir") from None
    _held[key] = handle  # the lock lasts as long as this open file
    return handle


def release():
    """Let go of every run-directory lock this process holds (distill.main's last act; exiting does it too)."""
    while _held:
        _held.popitem()[1].close()


def start_afresh(run_dir: str):
    """--overwrite: forget a previous run (checkpoints, metrics, config); sample caches are kept."""
    for name in os.listdir(run_dir):
        if CHECKPOINT.fullmatch(name) or name.startswith(".checkpoint-") or name in ("config.json", "metrics.jsonl"):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def check_same_teacher(run_dir: str, teacher: str, teacher_fp: str):
    """--resume: RunError unless `teacher` has the fingerprint the run's config.json recorded when it started
    (checked before the teacher's weights are loaded)."""
    if cli.read_json(os.path.join(run_dir, "config.json")).get("teacher_fingerprint") != teacher_fp:
        raise RunError(f"{teacher}: not the teacher this run was started with (its weights differ) - resume "
                       "with the run's teacher, or start a new run")


def restore_run(run_dir: str, student, optimizer, stream, config: dict, rank: int) -> int:
    """--resume: the student, AdamW state and data position of the newest checkpoint (rank 0 removes what a kill
    left first); then rank 0 drops the metric lines after it and writes `config` over config.json (only the
    settings run_config.MAY_CHANGE lists can differ). Returns the step to continue from."""
    if rank == 0:
        clean(run_dir)
    state = load_checkpoint(latest_checkpoint(run_dir), student, optimizer)
    stream.load_state_dict(state["data"])
    if rank == 0:
        truncate_metrics(run_dir, state["step"])
        saved = cli.read_json(os.path.join(run_dir, "config.json"))
        cli.write_json(os.path.join(run_dir, "config.json"), saved | config)
    return state["step"]


def start_run(run_dir: str, student, optimizer, stream, config: dict, rank: int) -> int:
    """A fresh run, written by rank 0: nothing of an earlier one survives but sample caches (start_afresh, which
    removes a kill's leftovers too), then the step-0 checkpoint, then `config` as config.json, last: from here
    on, a run exists. Returns step 0."""
    if rank == 0:
        start_afresh(run_dir)
        save_checkpoint(run_dir, 0, student, optimizer, {"data": stream.state_dict()})
        cli.write_json(os.path.join(run_dir, "config.json"), config)
    return 0


def truncate_metrics(run_dir: str, step: int):
    """Keep only the metric lines of steps <= `step` (those after the resumed checkpoint will be redone)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill
    cli.atomic_write(path, "".join(kept).encode())


def read_metrics(run_dir: str) -> list[dict]:
    """Every line of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
