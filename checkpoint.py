"""The run directory of a distillation: checkpoints that survive a kill at any instant, and its metrics.

    RUN_DIR/red-run.json                 the marker: this folder is a red run (written when the run is created;
                                         later also the fingerprint of the student the run wrote)
    RUN_DIR/config.json                  the resolved configuration, the teacher's fingerprint, the init's info
    RUN_DIR/metrics.jsonl                one JSON line per optimizer step (and per validation)
    RUN_DIR/checkpoint-00000600/         student.safetensors (projections + gains), optimizer.safetensors
                                         (AdamW moments), state.json (step, data position), checksums.json (the
                                         sha256 of each of them, written last): safetensors + JSON, no pickle
    RUN_DIR/lock                         held (flock) by the process using the run directory (run_lock.py)

The swap: a checkpoint is written into `.checkpoint-N.tmp/` and renamed to `checkpoint-N/` in one atomic
rename; only then are older checkpoints deleted. A kill at any instant therefore leaves at least one complete
`checkpoint-*/`, and `latest_checkpoint` takes the newest; `clean` removes the leftovers of a kill on the next
start, and `truncate_metrics` drops metric lines written after the checkpoint a run resumes from. Nothing read
back is trusted: `verify_checkpoint` checks every file against checksums.json and every field of state.json,
`load_checkpoint` every tensor's name, shape and finiteness, before anything is changed.

distill.py's setup: `check_run_paths` and run_lock.claim (the locks, taken before the final check of the
outputs) open the run; `restore_run` continues it from its newest checkpoint (--resume, after `check_same_teacher`
and `check_same_data`),
`start_run` begins one afresh and writes config.json last, so a run exists only once its step-0 checkpoint does.

Builds on student.py (the state it saves), load_weights.py (fingerprints) and cli.py.
Run as: imported by distill.py.
"""
import hashlib
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

import cli
from load_weights import fingerprint
from student import gather_optimizer, optimizer_states, set_optimizer_states

CHECKPOINT = re.compile(r"checkpoint-(\d{8})")
MARKER, SUMS = "red-run.json", "checksums.json"
FORMAT = "red distill run"
NEW_MARKER = {"format": FORMAT, "version": 1}


class RunError(ValueError):
    """A run that cannot start or resume as asked (one line, says what to do)."""


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"checkpoint-{step:08d}")


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint directory of a run, or None. (A `checkpoint-N` exists only complete.)"""
    steps = checkpoint_steps(run_dir) if os.path.isdir(run_dir) else []
    return checkpoint_dir(run_dir, steps[0]) if steps else None


def checkpoint_steps(run_dir: str) -> list[int]:
    """The steps of a run's complete checkpoints, newest first."""
    return sorted((int(m.group(1)) for name in os.listdir(run_dir) if (m := CHECKPOINT.fullmatch(name))),
                  reverse=True)


def clean(run_dir: str, keep: int = 1):
    """Remove what a kill left behind (unfinished `.checkpoint-*.tmp`) and all but the `keep` newest checkpoints."""
    kept = {checkpoint_dir(run_dir, step) for step in checkpoint_steps(run_dir)[:keep]}
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if (name.startswith(".checkpoint-") and name.endswith(".tmp")) or (
                CHECKPOINT.fullmatch(name) and path not in kept):
            shutil.rmtree(path)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(run_dir: str, step: int, student, optimizer, state: dict, keep: int = 1):
    """Projections + gains, AdamW state (safetensors), state.json and, last, checksums.json into
    checkpoint-<step>, atomically (a failed write removes its half-written folder); then only the `keep`
    newest checkpoints are kept."""
    final = checkpoint_dir(run_dir, step)
    if os.path.isdir(final):  # this step is already saved, complete (e.g. stopped right after resuming)
        return
    tmp = os.path.join(run_dir, f".checkpoint-{step:08d}.tmp")
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        with cli.writing(os.path.join(tmp, "student.safetensors")):
            save_file({k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()},
                      os.path.join(tmp, "student.safetensors"))
        opt = {f"{i}.{key}": torch.as_tensor(value).detach().contiguous().cpu()  # step, exp_avg, exp_avg_sq
               for i, per_param in optimizer_states(optimizer, list(student.parameters())).items()
               for key, value in per_param.items()}
        with cli.writing(os.path.join(tmp, "optimizer.safetensors")):
            save_file(opt, os.path.join(tmp, "optimizer.safetensors"))
        cli.write_json(os.path.join(tmp, "state.json"), dict(state, step=step))
        sums = {name: sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        cli.atomic_write(os.path.join(tmp, SUMS), json.dumps({"sha256": sums}, separators=(",", ":")).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)  # the one atomic moment: before it the old checkpoint is the newest, after it this one
    clean(run_dir, keep)


def damaged(path: str, what: str) -> RunError:
    return RunError(f"{path}: damaged checkpoint ({what}) - restore the run directory from a copy, or start "
                    "afresh with --overwrite")


def verify_files(path: str):
    """RunError unless every file of checkpoint `path` has the sha256 its checksums.json recorded, and no file
    is missing or extra."""
    try:
        with open(os.path.join(path, SUMS), "rb") as f:
            sums = json.loads(f.read())["sha256"]
        assert isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())
    except FileNotFoundError:
        raise damaged(path, f"no {SUMS}: incomplete, or written by an older red") from None
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise damaged(path, f"{SUMS} unreadable") from None
    files = set(os.listdir(path)) - {SUMS}
    needed = {"student.safetensors", "optimizer.safetensors", "state.json"}
    if files != set(sums) or not needed <= files:
        odd = sorted(files ^ set(sums) or needed - files)
        raise damaged(path, f"files {odd} missing or not recorded in {SUMS}")
    for name in sorted(sums):
        if sha256(os.path.join(path, name)) != sums[name]:
            raise damaged(path, f"{name} differs from its recorded sha256")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_checkpoint(path: str) -> dict:
    """A checkpoint of a distill.py run checked before anything is built from it: its files (`verify_files`),
    then state.json field by field (the step its folder names, a well-formed data position). Returns state."""
    verify_files(path)
    state = cli.read_json(os.path.join(path, "state.json"), "checkpoint state")  # (verified: it parses)
    step = int(CHECKPOINT.fullmatch(os.path.basename(path)).group(1))
    data = state.get("data") if isinstance(state, dict) else None
    problems = []
    if not isinstance(state, dict) or state.get("step") != step or not _count(state.get("step")):
        found = state.get("step") if isinstance(state, dict) else state
        problems.append(f"step {found!r:.40} is not the folder's {step}")
    elif not isinstance(data, dict):
        problems.append("no data position")
    else:
        for key in ("seed", "epoch", "cursor"):
            if not _count(data.get(key)):
                problems.append(f"data {key} {data.get(key)!r:.40} is not a count")
        draws = data.get("draws")
        if not (isinstance(draws, list) and draws and all(_count(d) for d in draws) and sum(draws) > 0):
            problems.append(f"data draws {draws!r:.60} are not counts per source")
        elif _count(data.get("cursor")) and data["cursor"] >= sum(draws):
            problems.append(f"data cursor {data['cursor']} is past the epoch of {sum(draws)} windows")
    if problems:
        raise damaged(path, "state.json: " + "; ".join(problems)[:300])
    return state


def sound_checkpoint(run_dir: str, skip_damaged: bool, set_aside: bool) -> dict:
    """--resume: the state of the newest checkpoint that verifies (`verify_checkpoint`). A damaged newest one
    is refused, naming the older checkpoint --skip-damaged would resume from; with --skip-damaged each damaged
    one is passed over and, where `set_aside` (rank 0), renamed damaged-checkpoint-N: kept, never deleted."""
    steps = checkpoint_steps(run_dir)
    for n, step in enumerate(steps):
        path = checkpoint_dir(run_dir, step)
        try:
            return verify_checkpoint(path)
        except (RunError, OSError) as e:  # OSError: another rank set it aside meanwhile
            if not skip_damaged:
                advice = ""
                if n + 1 < len(steps):  # an older checkpoint is kept (--keep-checkpoints)
                    advice = f"; or resume from its checkpoint-{steps[n + 1]:08d} with --resume --skip-damaged"
                raise RunError(str(e) + advice) from None
            if set_aside and os.path.isdir(path):
                os.replace(path, os.path.join(run_dir, "damaged-" + os.path.basename(path)))
    raise RunError(f"{run_dir}: no checkpoint that verifies - restore the run directory from a copy, or start "
                   "afresh with --overwrite")


def _check_tensors(path: str, name: str, found: dict, expected: dict):
    """RunError naming the first missing, extra, mis-shaped or non-finite tensor of `found`."""
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shaped = [k for k in sorted(expected.keys() & found.keys()) if tuple(found[k].shape) != expected[k]]
    if missing or extra or shaped:
        what = (f"tensor {missing[0]} missing" if missing else f"unexpected tensor {extra[0]}" if extra else
                f"{shaped[0]} has shape {tuple(found[shaped[0]].shape)}, this run needs {expected[shaped[0]]}")
        raise RunError(f"{path}/{name}: {what} - the checkpoint does not fit this run (another width or teacher?); "
                       "start afresh with --overwrite")
    for key, t in found.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise RunError(f"{path}/{name}: {key} holds NaN, inf or no floats - the run diverged before this "
                           "checkpoint or the file is damaged; start afresh with --overwrite (and a lower --lr)")


def load_checkpoint(path: str, student, optimizer) -> dict:
    """Restore the projections, gains and AdamW state that save_checkpoint wrote, every file checked against
    its checksum and every tensor against the model and optimizer it goes into first; returns state.json."""
    verify_files(path)
    try:
        state = cli.read_json(os.path.join(path, "state.json"), "checkpoint state")
        weights = load_file(os.path.join(path, "student.safetensors"))
        opt = load_file(os.path.join(path, "optimizer.safetensors"))
    except Exception as e:  # OSError, JSON, safetensors' own errors
        raise damaged(path, f"{type(e).__name__}: {str(e)[:100]}") from None
    _check_tensors(path, "student.safetensors", weights, {k: tuple(v.shape) for k, v in student.state_dict().items()})
    params = list(student.parameters())
    expected = {f"{i}.{k}": shape for i, p in enumerate(params)
                for k, shape in (("step", ()), ("exp_avg", tuple(p.shape)), ("exp_avg_sq", tuple(p.shape)))}
    _check_tensors(path, "optimizer.safetensors", opt, expected if opt else {})  # none before the first step
    student.load_state_dict(weights)
    states = {i: {k.split(".", 1)[1]: opt[k].to(p.device) if opt[k].dim() else opt[k]
                  for k in opt if k.startswith(f"{i}.")} for i, p in enumerate(params)}
    set_optimizer_states(optimizer, params, {i: s for i, s in states.items() if s})
    return state


# ---------------------------------------------------------------------------------------------------------
# The run directory as a whole

def read_marker(run_dir: str) -> dict | None:
    """red-run.json of `run_dir` when it is a red run's marker, else None."""
    try:
        with open(os.path.join(run_dir, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def is_run_dir(path: str) -> bool:
    """A red run directory: its marker, or (written before markers) a config.json with the teacher's
    fingerprint beside a checkpoint."""
    if read_marker(path) is not None:
        return True
    try:
        legacy = cli.read_json(os.path.join(path, "config.json"))
    except cli.OutputError:
        return False
    return "teacher_fingerprint" in legacy and latest_checkpoint(path) is not None


def may_hold_run(path: str) -> bool:
    """--run-dir may be an empty folder (a lock file aside) or a red run, never a user's folder or a model."""
    return set(os.listdir(path)) <= {"lock"} or is_run_dir(path)


def owns_output(run_dir: str, out: str) -> bool:
    """Whether the student in `out` is this run's: the one it wrote last, or the one --overwrite gave it to
    replace (its fingerprint, as the marker recorded)."""
    recorded = (read_marker(run_dir) or {}).get("student")
    try:
        return recorded is not None and recorded == fingerprint(out)
    except Exception:  # not a checkpoint directory: not this run's output either
        return False


def record_output(run_dir: str, out: str):
    """After the student is written: the marker records its fingerprint (`owns_output`)."""
    cli.write_json(os.path.join(run_dir, MARKER), NEW_MARKER | {"student": fingerprint(out)})


def check_run_paths(out: str, run_dir: str, inputs: dict, resume: bool, overwrite: bool):
    """distill.py's outputs under the one output rule (cli.check_outputs), and the run-directory rules: --run-dir
    is absent, empty or a red run; an existing run is continued (--resume) or replaced (--overwrite), never
    silently; --resume replaces only the student this run wrote. Read-only; run before and under the locks."""
    cli.check_outputs(inputs, [cli.Output("--out", out, "dir", cli.is_checkpoint_dir, "checkpoint directory"),
                               cli.Output("--run-dir", run_dir, "dir", may_hold_run, "red run directory")])
    if resume and latest_checkpoint(run_dir) is None:
        raise RunError(f"{run_dir}: no checkpoint to resume - drop --resume, or pass the run's --out / --run-dir")
    if os.path.isdir(out) and not overwrite and not (resume and owns_output(run_dir, out)):
        if resume:
            raise RunError(f"--out {out} holds a student this run did not write - choose another --out, or remove "
                           "it yourself")
        raise RunError(f"--out {out} holds a student already - pass --overwrite to replace it (and its run), "
                       "--resume to continue its run, or another --out")
    if not resume and holds_run(run_dir) and not overwrite:
        raise RunError(f"{run_dir}: holds a run already - continue it with --resume, or replace it with "
                       "--overwrite")


def holds_run(run_dir: str) -> bool:
    """Whether a run has started in `run_dir` (its config.json is written once setup succeeded)."""
    return os.path.isfile(os.path.join(run_dir, "config.json"))


def read_run(run_dir: str) -> dict:
    """--resume: the run's saved config.json, refused in one line (before any work) when the directory holds no
    checkpoint, is not a red run, or lost its config."""
    if latest_checkpoint(run_dir) is None:
        raise RunError(f"{run_dir}: no checkpoint to resume - drop --resume, or pass the run's --out / --run-dir")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir}: not a red run directory (no {MARKER}) - pass the run's --out / --run-dir")
    if not holds_run(run_dir):
        raise RunError(f"{run_dir}: config.json is missing (deleted, or the run never finished starting) - "
                       "restore it, or start afresh with --overwrite")
    return cli.read_json(os.path.join(run_dir, "config.json"), "run config")


# ---------------------------------------------------------------------------------------------------------
# Starting and continuing

def start_afresh(run_dir: str, out: str):
    """--overwrite: forget a previous run (checkpoints, metrics, config); sample caches are kept. The marker
    records the student already in --out, if any (the one --overwrite lets this run replace: `owns_output`)."""
    for name in os.listdir(run_dir):
        if CHECKPOINT.fullmatch(name) or name.startswith(".checkpoint-") or name in ("config.json", "metrics.jsonl"):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    existing = {"student": fingerprint(out)} if os.path.isdir(out) and cli.is_checkpoint_dir(out) else {}
    cli.write_json(os.path.join(run_dir, MARKER), NEW_MARKER | existing)


def check_same_teacher(run_dir: str, teacher: str, teacher_fp: str):
    """--resume: RunError unless `teacher` has the fingerprint the run's config.json recorded when it started
    (checked before the teacher's weights are loaded)."""
    if cli.read_json(os.path.join(run_dir, "config.json")).get("teacher_fingerprint") != teacher_fp:
        raise RunError(f"{teacher}: not the teacher this run was started with (its weights differ) - resume "
                       "with the run's teacher, or start a new run")


def check_same_data(run_dir: str, specs: list[str], data_fps: list[str]):
    """--resume: RunError unless every --data source holds the windows the run's config.json recorded when it
    started (data.fingerprints: its ids, wherever the file now is). A run from before the record: not checked."""
    recorded = cli.read_json(os.path.join(run_dir, "config.json")).get("data_fingerprints")
    if recorded is None:
        return
    for spec, was, now in zip(specs, recorded, data_fps):
        if was != now:
            raise RunError(f"{spec}: not the data this run was started with (its token windows differ) - resume "
                           "with the run's data, or start a new run")


def locations(config: dict) -> dict:
    """config.json records where the run and its student are, as absolute paths (informative: a resumed run
    is where the command names it, never where it was)."""
    return config | {k: os.path.abspath(config[k]) for k in ("out", "run_dir") if config.get(k)}


def restore_run(run_dir: str, student, optimizer, stream, config: dict, rank: int) -> int:
    """--resume: the student, AdamW state and data position of the newest checkpoint, each checked before
    anything changes; then rank 0 removes what a kill left, drops the metric lines after the checkpoint and writes
    `config` over config.json (only the settings run_config.MAY_CHANGE lists can differ). Returns its step."""
    state = load_checkpoint(latest_checkpoint(run_dir), student, optimizer)
    stream.load_state_dict(state["data"])  # data.DataError when the position does not fit this data
    if rank == 0:
        clean(run_dir, config["keep_checkpoints"])
        truncate_metrics(run_dir, state["step"])
        saved = cli.read_json(os.path.join(run_dir, "config.json"))
        cli.write_json(os.path.join(run_dir, "config.json"), saved | locations(config))
    return state["step"]


def start_run(run_dir: str, student, optimizer, stream, config: dict, rank: int) -> int:
    """A fresh run, written by rank 0: nothing of an earlier one survives but sample caches (start_afresh, which
    removes a kill's leftovers too), then the step-0 checkpoint, then `config` as config.json, last: from here
    on, a run exists. Returns step 0."""
    gather_optimizer(optimizer)
    if rank == 0:
        start_afresh(run_dir, config["out"])
        save_checkpoint(run_dir, 0, student, optimizer, {"data": stream.state_dict()})
        cli.write_json(os.path.join(run_dir, "config.json"), locations(config))
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
