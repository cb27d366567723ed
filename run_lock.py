"""One process per run directory and per --out: exclusive locks (flock) held for the life of the process.

    RUN_DIR/lock                         held by the process using the run directory
    <out's folder>/.<out's name>.lock    held by the process writing the student --out

`claim` is rank 0's first act on the file system (both locks, and the run directory marked as a red run), taken
before the final check of the outputs, so that of two runs started together on one --out the second is refused;
`release` lets go and removes what a run that never started made. experiments/plateau.py and
reasoning_teacher.py hold a run directory with `lock` alone.

Builds on checkpoint.py (the run directory's marker) and cli.py.
Run as: imported by run_config.py and distill.py.
"""
import fcntl
import os

import cli
from checkpoint import MARKER, NEW_MARKER, RunError, may_hold_run, read_marker


_held: dict[str, object] = {}  # lock file -> the open lock file of this process
_made: list[tuple[str, str]] = []  # (kind, path) this process created to hold its locks, in order: "dir", "file"
                                   # (a run directory's lock and marker) or "out-lock" (the lock beside --out)


def _take(path: str, message: str, kind: str = "file"):
    """flock `path` (created if missing, never truncated); RunError(message) if another process holds it. A
    lock file another process removed while we opened it is taken again (the inode must be the path's)."""
    key = os.path.realpath(path)
    if key in _held:  # a lock this process took for an earlier run is let go first
        _held.pop(key).close()
    for _ in range(20):
        existed = os.path.exists(path)
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunError(message) from None
        ours = os.fstat(handle.fileno())
        if os.path.exists(path) and os.path.samestat(os.stat(path), ours):
            if not existed or kind == "out-lock":
                _made.append((kind, path))
            _held[key] = handle  # the lock lasts as long as this open file
            return handle
        handle.close()
        _make_dirs(os.path.dirname(path))
    raise RunError(message)


def _make_dirs(path: str):
    """os.makedirs, remembering the folders this process made."""
    path, missing = os.path.abspath(path), []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            _made.append(("dir", folder))
        except FileExistsError:
            pass


def lock(run_dir: str):
    """Hold an exclusive lock on the run directory for the life of this process (RunError if another process
    has it). A lock this process took for an earlier run on the same directory is let go first."""
    _make_dirs(run_dir)
    return _take(os.path.join(run_dir, "lock"), f"{run_dir}: another distill.py is using this run directory - "
                 "wait for it, or use another --out / --run-dir")


def claim(out: str, run_dir: str):
    """Rank 0's first act on the file system: lock --out (a lock file beside it) and the run directory (made if
    missing, and marked as a red run), so that a second distill.py on either is refused before it checks or
    writes anything. `release` undoes what a run that never started made."""
    out = os.path.abspath(out)
    _make_dirs(os.path.dirname(out))
    _take(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock"),
          f"--out {out}: another distill.py is writing this student - wait for it, or choose another --out",
          "out-lock")
    handle = lock(run_dir)
    if read_marker(run_dir) is None and may_hold_run(run_dir):
        marker = os.path.join(run_dir, MARKER)
        cli.write_json(marker, NEW_MARKER)
        _made.append(("file", marker))
    return handle


def release():
    """Let go of every lock this process holds (distill.main's last act; exiting does it too). The lock beside
    --out goes; so does what `claim` made for a run that never started (no config.json, nothing else in it)."""
    made = [path for _, path in _made]
    for kind, path in reversed(_made):
        if kind == "dir":
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
            continue
        folder = os.path.dirname(path)
        unused = os.path.isdir(folder) and all(os.path.join(folder, name) in made for name in os.listdir(folder))
        if os.path.exists(path) and (kind == "out-lock" or unused):
            os.remove(path)  # before its lock is let go: a process that opened it meanwhile takes it again
    _made.clear()
    while _held:
        _held.popitem()[1].close()
