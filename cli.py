"""What every command-line tool of red shares: one-line errors, outputs that never land on inputs, atomic writes.

The contract (every CLI: distill.py, init_select.py, erank.py, eval_reasoning.py, student.py, data.py):
  - a user error prints ONE line, `error: <what> - <what to do>`, exits with status 2 and writes nothing;
    Ctrl-C or SIGTERM prints one line and exits 130 (`user_errors`, `parse_args`, and the flag types below);
  - no output path may be, contain, or lie inside an input or another output of the same command, and an
    existing file is only ever replaced by one of its own kind (`check_outputs`, run before any work);
  - files and directories are written beside their final place and renamed into it (`atomic_write`,
    `replace_dir`), so a kill at any instant leaves either the old version or the new one.

Builds on nothing in red (floor 0: the standard library; torch only to parse --device).
Run as: imported by the command-line tools (nothing to run on its own).
"""
import argparse
import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import types
from dataclasses import dataclass
from typing import Callable


class OutputError(ValueError):
    """An output path that would destroy an input, another output, or a file of another kind."""


def fail(message: str, code: int = 2):
    """A user error: one line on stderr (whatever the message holds), then exit (status 2 unless said otherwise)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(code)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C and `kill`: honoured alike in every phase


def interrupt_while_starting():
    """Called by a CLI before its heavy imports (torch takes seconds): Ctrl-C or SIGTERM then exits at once with
    one line, instead of a traceback from deep inside an import. `user_errors` hands them back to Python."""
    def handler(sig, frame):
        os.write(2, b"error: interrupted while starting - nothing was written\n")
        os._exit(130)
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def _interrupt(sig, frame):
    raise KeyboardInterrupt


def os_error(e: BaseException, path: str | None = None) -> OSError | None:
    """`e` as an OSError when it is one, or safetensors' SafetensorError wrapping one ("... (os error 28)"):
    a full disk is a full disk whichever library met it. None for anything else."""
    if isinstance(e, OSError):
        return e
    found = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), path)


@contextlib.contextmanager
def writing(path: str):
    """Around a library's write of `path`: an I/O error it reports in its own way becomes an OSError naming
    `path` (so `user_errors` gives one line)."""
    try:
        yield
    except Exception as e:
        converted = os_error(e, path)
        if converted is None or converted is e:
            raise
        raise converted from None


@contextlib.contextmanager
def user_errors(*kinds: type):
    """Run a CLI's work: the given exception kinds, OSError (a full disk, a missing permission, also as
    safetensors reports it), Ctrl-C and SIGTERM become one line on stderr (SIGTERM, like Ctrl-C, exits 130);
    anything else is a bug and keeps its traceback."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except (OutputError, *kinds) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted - the last complete output is untouched", code=130)
    except Exception as e:
        io = os_error(e)
        if io is None:
            raise
        where = f"{io.filename}: " if io.filename else ""
        advice = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EACCES:
                  "fix the permissions", errno.EPERM: "fix the permissions"}.get(io.errno, "check the path")
        fail(f"{where}{io.strerror or io} - {advice}, then run again")
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def stop_requests():
    """Inside the block the first SIGINT / SIGTERM only sets `.signal` (a training loop then finishes its step,
    checkpoints and exits); a second one raises KeyboardInterrupt at once. Outside it, Ctrl-C interrupts."""
    state = types.SimpleNamespace(signal=None)

    def handler(sig, frame):
        if state.signal is not None:
            raise KeyboardInterrupt
        state.signal = sig
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred_signals():
    """A few file operations that must not be cut in two (renames that replace a finished output): a SIGINT or
    SIGTERM arriving inside waits, and is handed to the handler outside once the block is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {sig: signal.signal(sig, lambda sig, frame: arrived.append(sig)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for sig in arrived[:1]:
            signal.raise_signal(sig)


def changed_settings(saved: dict, now: dict) -> list[str]:
    """The settings of `now` that differ from those `saved` by the run or experiment being resumed, each as
    '--flag value (the run has value)'; values are compared as JSON stores them (tuples as lists)."""
    return [f"--{k.replace('_', '-')} {now[k]} (the run has {saved.get(k)})" for k in now
            if saved.get(k) != json.loads(json.dumps(now[k]))]


def read_json(path: str, what: str = "file") -> dict:
    """A JSON object from disk; a missing or damaged file is an OutputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise OutputError(f"{path}: unreadable {what} ({e}) - restore it, or start afresh") from None
    if not isinstance(obj, dict):
        raise OutputError(f"{path}: not a JSON object - restore it, or start afresh")
    return obj


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args, with argparse's usage block and error folded into the one-line form."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            raise
        message = captured.getvalue().strip().splitlines()[-1].partition(": error: ")[2]
        fail(f"{message} - see python {parser.prog} --help")


# ---------------------------------------------------------------------------------------------------------
# Flag types: a range check where the flag is declared, so a bad value is an argparse error (one line)

def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def path_name(text: str) -> str:
    """argparse type: a non-empty path (an empty one would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty - name a path")
    return text


def float_in(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] (or (low, high] with low_open)."""
    def parse(text: str) -> float:
        value = float(text)
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """argparse type: a torch device that exists here and computes ("cpu", "cuda", "cuda:1", "mps"; not
    "meta", which holds no values)."""
    import torch
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device - use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device that computes - use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda is not available on this machine - use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPUs - use cuda")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("mps is not available on this machine - use --device cpu")
    return text


def default_device() -> str:
    """cuda when this machine has a GPU, else cpu: the same default for every tool."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------------
# The one rule for output paths

@dataclass
class Output:
    flag: str                                   # how the user named it, e.g. "--out"
    path: str
    kind: str                                   # "dir" or "file"
    replaceable: Callable[[str], bool] | None = None  # an existing path may be replaced only if this says so
    what: str = "output"                        # what it holds, for the message ("student checkpoint")


def _inside(child: str, parent: str) -> bool:
    return os.path.commonpath([child, parent]) == parent


def check_outputs(inputs: dict[str, str | list[str] | None], outputs: list[Output]):
    """Refuse (OutputError) any output that is, contains or lies inside an input or another output, has the
    wrong kind, or would replace something that is not a previous output of its own kind. Paths are compared
    after resolving symlinks, so a link to the teacher is the teacher. Run before any work is done."""
    real = lambda p: os.path.realpath(os.path.expanduser(p))
    named_inputs = [(flag, p) for flag, ps in inputs.items() if ps
                    for p in ([ps] if isinstance(ps, str) else ps)]
    for i, out in enumerate(outputs):
        o = real(out.path)
        if out.kind == "dir" and os.path.exists(o) and not os.path.isdir(o):
            raise OutputError(f"{out.flag} {out.path} is an existing file - {out.flag} names a directory")
        if out.kind == "file" and os.path.isdir(o):
            raise OutputError(f"{out.flag} {out.path} is a directory - {out.flag} names a file")
        for flag, path in named_inputs:
            p = real(path)
            if o == p:
                raise OutputError(f"{out.flag} {out.path} is the {flag} input - writing it would destroy it; "
                                  f"choose another {out.flag}")
            if _inside(o, p):
                raise OutputError(f"{out.flag} {out.path} lies inside the {flag} input {path} - choose a path "
                                  "outside it")
            if _inside(p, o):
                raise OutputError(f"{out.flag} {out.path} contains the {flag} input {path} - replacing it would "
                                  f"delete that input; choose another {out.flag}")
        for other in outputs[i + 1:]:
            q = real(other.path)
            if _inside(o, q) or _inside(q, o):
                raise OutputError(f"{out.flag} {out.path} and {other.flag} {other.path} overlap - one would "
                                  "overwrite the other; give them separate paths")
        if os.path.exists(o) and out.replaceable is not None and not out.replaceable(o):
            raise OutputError(f"{out.flag} {out.path} exists and is not a {out.what} - remove it yourself "
                              f"or choose another {out.flag}")
        _check_writable(o, out.flag)


def _check_writable(path: str, flag: str):
    """Refuse a location no file can be created in (probe the nearest existing folder; leaves nothing)."""
    probe = path if os.path.isdir(path) else os.path.dirname(path)
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".red-probe-"))
    except OSError as e:
        raise OutputError(f"{flag} {path}: not writable ({e.strerror}) - choose another {flag}") from None


def is_checkpoint_dir(path: str) -> bool:
    """A Hugging Face checkpoint directory (config.json beside safetensors weights)."""
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path))


# ---------------------------------------------------------------------------------------------------------
# Atomic writes

@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary file name beside `path`; when the block ends the file is synced and renamed onto
    `path` (an error or a kill inside the block leaves `path` as it was)."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the final file gets the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, payload: bytes):
    """Write a file via a temporary one in the same folder, synced, then renamed: never half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)


def write_json(path: str, obj):
    """JSON, atomically."""
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def replace_dir(tmp: str, path: str):
    """Move the finished directory `tmp` to `path`; an existing `path` is deleted only once the new one is
    in place, and Ctrl-C / SIGTERM wait until it is (deferred_signals). NOTE: a kill -9 between the two renames
    leaves the previous version as `.<name>.old` beside it."""
    old = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(os.path.abspath(path))}.old")
    with deferred_signals():
        if os.path.exists(old):
            shutil.rmtree(old)  # a leftover of an earlier kill
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        if os.path.exists(old):
            shutil.rmtree(old)
