"""Reasoning collapse or under-training? Every arm trained to a plateau at its own learning rate, several seeds,
measured along the way, then compared at equal fit.

Within a short budget a random-init student fits the teacher worse than RED's, so its low accuracy may only
mean it has not learned yet. This harness separates the two (docs/METHOD.md §4.5):
  1. sweep: each arm (red_vs_lrc.RUNS) for --sweep-steps at every --sweep-lrs (seed 0); its best learning rate
     is the one with the lowest final validation loss (distill.py's held-out windows of the training data,
     the student's next-token loss: the same quantity for every arm, and no test problem is looked at); where
     the best is the grid's highest or lowest rate, the grid is extended on that side (--sweep-extend);
  2. long runs: each arm at its best learning rate for --steps, once per --seeds; each run is one distill.py
     run split by --stop-at into --points segments (the schedule is that of --steps throughout); after each
     segment its checkpoint is measured: solution perplexity, general-text perplexity (held-out documents of
     the teacher's general corpus), perplexity and per-layer residual eRank on held-out problem windows, eRank
     on the general text, greedy accuracy at each step count, and distill.py's own validation loss and
     projection spectra at that step;
  3. record and report: points.csv (a row per measured point), teacher.json and config.json, from which
     experiments/plateau_report.py writes plateau.md (the sweep, the end of the budget with mean and spread over
     seeds, the plateau criterion, equal fit, Table 6's factorial) and the figures, at every stop.
Everything is kept under --out; `--resume` continues after a stop (--max-minutes, Ctrl-C, a kill) without
redoing a finished segment, so a long experiment is split into commands of bounded length. Its record
(config.json with the teacher's sha256, teacher.json, points.csv) is enough to continue it elsewhere: copied into
a fresh --out, finished runs are skipped, and a teacher whose bytes differ is refused. --rates ARM=LR ... gives
the rates of an earlier sweep instead of running one; on --resume it may add an arm with its rate, never change one.
--device cuda (the default where a GPU is) trains the students there in bf16 autocast and measures every point
there in fp32: a record of another machine kind, not more seeds of a CPU one. config.json says on which kind its
runs trained ("trained_on"); training more on another kind, or joining runs of another kind, is refused.
--join DIR ... adds the finished runs of experiments made alike in other directories, e.g. arms run side by side
(a process, a thread and a --out each: OMP_NUM_THREADS=1), so that they are reported as one experiment; that
command only joins (--arms and --seeds are not trained). A partial run in --out that it cannot finish (no run
files: a record restored from docs/) is replaced by a finished run of the same arm and seed, and says so.
--report DIR rewrites a record's report from its files alone (no teacher; nothing trained or measured).
The data: the teacher's training problems (experiments/red_vs_lrc.py's synthetic corpus) and its general text
(experiments/reasoning_teacher.py writes text_train.jsonl / text_heldout.jsonl beside the checkpoint).

Builds on experiments/red_vs_lrc.py (arms, init files, measurement), experiments/plateau_report.py (tables, figures),
distill.py (run as a user runs it, with --stop-at and --resume), student.py, erank.py, data.py, checkpoint.py,
run_lock.py.
Run as:
    python experiments/plateau.py --teacher out/reasoning-teacher --out out/plateau [--resume] [--max-minutes 55]
    python experiments/plateau.py --report docs/records/teacher-b-3000-steps
"""
import argparse
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint as ckpt  # noqa: E402
import cli  # noqa: E402
import run_lock  # noqa: E402
from experiments import red_vs_lrc as rvl  # noqa: E402
from experiments.plateau_report import (arm_losses, by_run, read_rows, report, run_end, run_key,  # noqa: E402
                                        run_label, run_name, write_rows)
from data import load_windows  # noqa: E402
from erank import measure_model  # noqa: E402
from init_select import read_init  # noqa: E402
from load_weights import fingerprint, load_model  # noqa: E402
from student import Student  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

ARMS = ["red", "lrc", "select@T40", "red+gaussian", "red+orthogonal", "red+orthreg"]  # Tables 6 and 7
FIXED = ("teacher", "width", "steps", "points", "batch_size", "seq_len", "sweep_steps", "sweep_lrs", "sweep_extend",
         "rates", "text_weight", "corpus_per_step", "eval_per_step", "steps_list", "orth_reg")  # fixed on --resume


class OutOfTime(Exception):
    """--max-minutes reached: stop between segments; the same command with --resume continues."""


# ---------------------------------------------------------------------------------------------------------
# Runs

def distill_flags(args, name: str, seed: int, lr: float, steps: int, every: int) -> list:
    """distill.py's flags for one run of arm `name` (its init file made once per init kind and seed)."""
    kind, flags = rvl.RUNS[name]
    flags = [str(args.orth_reg) if f == "ORTH_REG" else f for f in flags]
    init = rvl.make_init(args, kind, seed)
    return ["--teacher", args.teacher, "--width", args.width, "--data", args.data,
            f"{args.text_train}:{args.text_weight}", "--init", init, "--steps", steps, "--seq-len", args.seq_len,
            "--batch-size", args.batch_size, "--lr", lr, "--eval-every", every, "--ckpt-every", every,
            "--seed", seed, "--eval-problems", 0, "--device", args.device, *flags]


def continue_run(args, out: str, flags: list, stop_at: int) -> float | None:
    """distill.py up to step `stop_at` (a fresh run, or --resume of one with a checkpoint); wall seconds, or
    None when the loss diverged."""
    if torch.device(args.device).type != args.trained_on:  # bf16 GPU runs and fp32 CPU runs are not seeds of one record
        cli.fail(f"--out {args.out}: its runs trained on {args.trained_on}, --device {args.device} would add a run "
                 f"of another kind - use --device {args.trained_on} here, or train in a --out of its own")
    again = ["--resume"] if ckpt.latest_checkpoint(out + ".run") else ["--overwrite"]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return rvl.run_tool(args, "distill.py", [*flags, "--stop-at", stop_at, "--out", out, *again], out + ".log",
                        append=again == ["--resume"], tolerate="error: loss is ")


def trained_on(config: dict) -> str:
    """The device kind an experiment's runs trained on; records written before config.json said so are cpu ones."""
    return config.get("trained_on", "cpu")


def final_val_loss(run_dir: str) -> float:
    return [r for r in ckpt.read_metrics(run_dir) if "val_loss" in r][-1]["val_loss"]


def next_rate(args, loss: dict[float, float]) -> float | None:
    """The next learning rate to try for an arm, given its {lr: final validation loss} so far, or None when its
    sweep is complete. First every --sweep-lrs; then, while the best rate is the highest (lowest) tried and
    fewer than --sweep-extend rates were added on that side, one more step of the grid's ratio beyond it: a
    best rate at the grid's edge is not known to be the best. A diverged rate (inf) is never best, which ends
    that side."""
    missing = [lr for lr in args.sweep_lrs if lr not in loss]
    if missing:
        return missing[0]
    grid, tried = sorted(args.sweep_lrs), sorted(loss)
    best = min(loss, key=loss.get)
    if len(grid) < 2 or not math.isfinite(loss[best]):
        return None
    if best == tried[-1] and sum(lr > grid[-1] for lr in tried) < args.sweep_extend:
        return float(f"{best * grid[-1] / grid[-2]:.2g}")  # 3e-4, 1e-3, 3e-3 -> 9e-3, 2.7e-2
    if best == tried[0] and sum(lr < grid[0] for lr in tried) < args.sweep_extend:
        return float(f"{best * grid[0] / grid[1]:.2g}")  # -> 9e-5, 2.7e-5
    return None


def arm_rate(text: str) -> tuple[str, float]:
    """argparse type of --rates: ARM=LR."""
    name, _, lr = text.rpartition("=")
    if name not in rvl.RUNS:
        raise argparse.ArgumentTypeError(f"{text}: not ARM=LR with ARM one of {', '.join(rvl.RUNS)}")
    return name, cli.float_in(0, low_open=True)(lr)


def sweep(args, check_time) -> dict[str, float]:
    """arm -> best learning rate; every (arm, lr) run's final validation loss in sweep.csv. With --rates the
    rates are given (an earlier sweep's) and nothing runs."""
    if args.rates:
        return args.rates
    rows = read_rows(os.path.join(args.out, "sweep.csv"))
    for name in args.arms:
        while (lr := next_rate(args, arm_losses(rows, name))) is not None:
            check_time()
            out = os.path.join(args.out, "sweep", f"{name}-lr{lr:g}")
            flags = distill_flags(args, name, 0, lr, args.sweep_steps, args.sweep_steps)
            t0 = time.time()
            diverged = continue_run(args, out, flags, args.sweep_steps) is None
            loss = math.inf if diverged else final_val_loss(out + ".run")
            rows.append({"arm": name, "lr": lr, "val_loss": loss if math.isfinite(loss) else math.inf,
                         "minutes": round((time.time() - t0) / 60, 2)})
            write_rows(os.path.join(args.out, "sweep.csv"), rows)
            print(f"sweep {name:15s} lr {lr:g}: val loss {loss:.4f} ({(time.time() - t0) / 60:.1f} min)", flush=True)
    return best_rates(args, rows)


def best_rates(args, rows: list[dict]) -> dict[str, float]:
    """arm -> the swept rate with the lowest final validation loss, for the arms whose sweep is complete."""
    best = {}
    for name in args.arms:
        loss = arm_losses(rows, name)
        if next_rate(args, loss) is None:
            best[name] = min(loss, key=loss.get)
    return best


def long_run(args, name: str, seed: int, lr: float, teacher, tok, held, check_time):
    """One arm and seed to --steps in --points segments; step 0 (its init file) and each segment's checkpoint
    measured, one points.csv row each."""
    out = os.path.join(args.out, "runs", f"{name}-s{seed}")
    done = {int(r["step"]) for r in read_rows(os.path.join(args.out, "points.csv"))
            if r["arm"] == name and int(r["seed"]) == seed}
    every = args.steps // args.points
    todo = [every * k for k in range(1, args.points + 1) if every * k not in done]
    if not todo:  # finished (here, or in the record this --out was started from)
        return
    flags = distill_flags(args, name, seed, lr, args.steps, every)
    for step in todo:
        check_time()
        seconds = continue_run(args, out, flags, step)
        if seconds is None:
            cli.fail(f"{name} seed {seed}: the loss diverged at lr {lr:g} (see {out}.log) - drop that rate from "
                     "--sweep-lrs and rerun with --resume")
        if 0 not in done:  # the step-0 student is the init file; its validation record is the run's first line
            init, _ = read_init(flags[flags.index("--init") + 1], teacher, args.fingerprint)
            measure_point(args, name, seed, lr, 0, init.merge(), tok, held, 0.0)
            done.add(0)
        state = load_file(os.path.join(ckpt.checkpoint_dir(out + ".run", step), "student.safetensors"))
        measure_point(args, name, seed, lr, step, Student.from_state_dict(teacher, state).merge(), tok, held, seconds)


def join(args, other: str, fixed=FIXED):
    """Add the finished runs of the experiment in `other` to --out: the same settings and teacher, arms and seeds
    --out does not have (a run joined before is passed over, so `other` may be joined again as it grows). Arms
    run side by side (one process and one thread each, a --out each) are so reported as one experiment. Their
    points, logs and run directories are copied; `other` is left as it was. A run is (arm, seed), or in a ladder
    (experiments/ladder.py) (arm, budget, seed), ending at its budget; `fixed`: the settings that must agree."""
    saved = cli.read_json(os.path.join(other, "config.json"), "experiment config")
    changed = cli.changed_settings(saved, {k: getattr(args, k) for k in fixed if k != "rates"})
    if changed or saved.get("teacher_sha256") != args.fingerprint:
        cli.fail(f"--join {other}: not an experiment of this one's settings and teacher "
                 f"({'; '.join(changed) or 'other teacher weights'}) - join only experiments made alike")
    if not saved.get("rates"):
        cli.fail(f"--join {other}: its rates came from its own sweep - join experiments run with --rates")
    rows = read_rows(os.path.join(args.out, "points.csv"))
    if not os.path.exists(os.path.join(args.out, "config.json")):  # a new record: of the kind of the runs it joins
        args.trained_on = trained_on(saved)
    if trained_on(saved) != args.trained_on:
        cli.fail(f"--join {other}: its runs trained on {trained_on(saved)}, those of --out {args.out} on "
                 f"{args.trained_on} - join runs of one device kind")
    mine, theirs = by_run(rows), by_run(read_rows(os.path.join(other, "points.csv")))
    runs = [run for run, points in sorted(theirs.items()) if mine.get(run) != points]  # joined before: passed over
    reached_end = lambda points: str(run_end(points, args.steps)) in {r["step"] for r in points}  # noqa: E731
    for run in runs:
        arm, what, files = run[0], run_label(run), os.path.join(args.out, "runs", run_name(run))
        if run in mine:  # only a partial run that --out can never finish is replaced
            if reached_end(mine[run]):
                cli.fail(f"--join {other}: {what} is in --out {args.out} already, with other points - "
                         "join other arms or seeds")
            if os.path.exists(files + ".run"):
                cli.fail(f"--join {other}: {what} is a partial run of --out {args.out} - finish it there "
                         f"with --resume, or remove {files}.run to have the join replace it")
        if not reached_end(theirs[run]):
            cli.fail(f"--join {other}: {what} has not reached step {run_end(theirs[run], args.steps)} - finish it "
                     "there with --resume first")
        if args.rates.get(arm, saved["rates"][arm]) != saved["rates"][arm]:
            cli.fail(f"--join {other}: {arm} ran at lr {saved['rates'][arm]:g}, --out has {args.rates[arm]:g}")
        if os.path.exists(files):
            cli.fail(f"--join {other}: --out {args.out} has an unmeasured run of {what} - finish it "
                     "there (--resume) or remove its runs/ files")
    for run in runs:  # a record (its points only, as docs/ keeps them) has no run files to copy
        base = os.path.join("runs", run_name(run))
        for suffix in ("", ".run", ".log"):
            source, target = os.path.join(other, base + suffix), os.path.join(args.out, base + suffix)
            if os.path.isdir(source):
                shutil.copytree(source, target)
            elif os.path.isfile(source):
                shutil.copyfile(source, target)
    if not os.path.exists(os.path.join(args.out, "teacher.json")):  # the same teacher on the same held-out data
        shutil.copyfile(os.path.join(other, "teacher.json"), os.path.join(args.out, "teacher.json"))
    args.rates |= {run[0]: saved["rates"][run[0]] for run in runs}
    stranded = [run for run in runs if run in mine]  # partial runs (a record's, its run files on a lost machine)
    kept = [r for r in rows if run_key(r) not in stranded]
    write_rows(os.path.join(args.out, "points.csv"), kept + [r for run in runs for r in theirs[run]])
    for run in stranded:
        print(f"replaced the partial run of {run_label(run)} in --out (steps 0-{mine[run][-1]['step']}, "
              "no run files to finish it) by the finished one", flush=True)
    print(f"joined from {other}: " + (", ".join(run_label(run) for run in runs) or "nothing new"), flush=True)


def measure_held(model, tok, held, args) -> tuple[dict, list[dict]]:
    """One model on every held-out set, the same for the teacher and each point: red_vs_lrc's row (problem
    windows, solutions, accuracy) with the general text's perplexity and eRank added, and the per-layer eRank."""
    row, layers = rvl.measure(model, tok, held[:3], args)
    text = measure_model(model, held[3])
    return {**row, "general_ppl": text["ppl"], "erank_general": text["erank_sq"]}, layers


def measure_teacher(args, teacher, tok, held):
    """The teacher on the same held-out data as every point, once (teacher.json): the tables' reference row."""
    path = os.path.join(args.out, "teacher.json")
    if not os.path.exists(path):
        cli.write_json(path, measure_held(teacher, tok, held, args)[0])


def measure_point(args, name: str, seed: int, lr: float, step: int, model, tok, held, train_s: float):
    """One points.csv row: the student at `step` measured on the held-out data (its residual eRank per layer
    too), with distill.py's own validation loss and the median s_max / s_min of its projections at that step."""
    t0 = time.time()
    row, layers = measure_held(model, tok, held, args)
    run_dir = os.path.join(args.out, "runs", f"{name}-s{seed}.run")
    record = [r for r in ckpt.read_metrics(run_dir) if r["step"] == step and "val_loss" in r][-1]
    path = os.path.join(args.out, "points.csv")
    rows = read_rows(path)
    rows.append({"arm": name, "seed": seed, "lr": lr, "step": step, "tokens": step * args.batch_size * args.seq_len,
                 **{k: row[k] for k in ("solution_ppl", "val_ppl", "erank_sq", "erank_rv")},
                 **{f"erank_l{r['layer']}": r["erank_sq"] for r in layers},  # per layer, held-out problems
                 **{k: row[k] for k in ("general_ppl", "erank_general")}, "val_loss": record["val_loss"],
                 "spectrum_ratio": float(np.median([s[0] / s[2] for s in record["spectrum"].values()])),  # max / min
                 **{f"acc_{k}": row[f"acc_{k}"] for k in args.steps_list},
                 "train_s": round(train_s, 1), "measure_s": round(time.time() - t0, 1)})
    write_rows(path, rows)
    print(f"{name:15s} seed {seed} step {step:5d}: sol ppl {row['solution_ppl']:.3f} "
          f"general ppl {row['general_ppl']:.2f} "
          f"eRank {row['erank_sq']:.1f} acc " + " ".join(f"{row[f'acc_{k}']:.2f}" for k in args.steps_list), flush=True)


def write_report(args):
    """plateau.md and the figures of --out (experiments/plateau_report.py), with the best rate of each finished sweep."""
    report(args, best_rates(args, read_rows(os.path.join(args.out, "sweep.csv"))))


def report_only(out: str):
    """The report of a record (as docs/ keeps them) rewritten from its files alone: after a change to the report,
    or for a record whose teacher lives on another machine. Its settings are config.json's, its arms those of its
    points (and sweep), in the tables' order."""
    saved = cli.read_json(os.path.join(out, "config.json"), "experiment config")
    rows = read_rows(os.path.join(out, "points.csv")) + read_rows(os.path.join(out, "sweep.csv"))
    if not rows:
        cli.fail(f"--report {out}: no points.csv or sweep.csv there - pass a plateau.py --out or a record of one")
    arms = {r["arm"] for r in rows}
    write_report(argparse.Namespace(**saved, out=out, arms=[a for a in rvl.RUNS if a in arms]))


# ---------------------------------------------------------------------------------------------------------

def add_experiment_arguments(parser, out: str):
    """The flags of an experiment on the reasoning teacher, plateau.py's and experiments/ladder.py's alike."""
    parser.add_argument("--teacher", help="teacher directory (experiments/reasoning_teacher.py's); needed except with "
                        "--report")
    parser.add_argument("--width", type=cli.int_at_least(1), default=128)
    parser.add_argument("--arms", nargs="+", choices=list(rvl.RUNS), default=ARMS)
    parser.add_argument("--seeds", nargs="+", type=cli.int_at_least(0), default=[0, 1, 2])
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=8)
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=256)
    parser.add_argument("--orth-reg", type=cli.float_in(0), default=1e-3, help="lambda of the red+orthreg arm")
    parser.add_argument("--corpus-per-step", type=cli.int_at_least(1), default=3000, help="training problems per "
                                                                                          "step count")
    parser.add_argument("--steps-list", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6], help="problem step counts")
    parser.add_argument("--eval-per-step", type=cli.int_at_least(1), default=100, help="accuracy problems per step "
                                                                                       "count, every point")
    parser.add_argument("--text-train", help="general text to train on (default: the teacher's text_train.jsonl)")
    parser.add_argument("--text-heldout", help="general text to measure (default: the teacher's text_heldout.jsonl)")
    parser.add_argument("--text-weight", type=cli.float_in(0, low_open=True), default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="+ 24 per problem step")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--windows", type=int, default=64, help="held-out problem windows for perplexity, eRank")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="where the students train "
                        "(bf16 autocast on a GPU) and every point is measured (fp32): cuda when available")
    parser.add_argument("--max-minutes", type=cli.float_in(0, low_open=True), default=math.inf,
                        help="stop between segments after this long; continue with --resume")
    parser.add_argument("--out", default=out)
    parser.add_argument("--resume", action="store_true", help="continue the experiment in --out")
    parser.add_argument("--rates", nargs="+", type=arm_rate, metavar="ARM=LR", help="each arm's learning rate, "
                        "from an earlier sweep (e.g. red=3e-3): no sweep runs")
    parser.add_argument("--join", nargs="+", default=[], metavar="DIR", help="only add the finished runs "
                        "of experiments made alike in other --out directories (e.g. arms run side by side)")
    parser.add_argument("--report", metavar="DIR", help="only rewrite the report of the record in DIR from its "
                        "files (config.json, points.csv): no teacher needed, nothing trained or measured")


def open_experiment(args, fixed=FIXED, script="experiments/plateau.py"):
    """Before any work: the inputs exist, --out is new or (with --resume) this experiment of this very teacher, one
    process holds it, --join's runs are added; then config.json: the `fixed` settings, teacher sha256, device kind."""
    if not args.teacher:
        cli.fail("--teacher is required (the teacher directory) - or pass --report DIR to rewrite a record's report")
    args.rates = dict(args.rates) if args.rates else None
    args.text_train = args.text_train or os.path.join(args.teacher, "text_train.jsonl")
    args.text_heldout = args.text_heldout or os.path.join(args.teacher, "text_heldout.jsonl")
    args.chat, args.seed = False, 0
    config_path = os.path.join(args.out, "config.json")
    with cli.user_errors():  # before any work: inputs exist, --out is new or (with --resume) this experiment
        cli.check_outputs({"--teacher": args.teacher, "--text-train": args.text_train,
                           "--text-heldout": args.text_heldout}, [cli.Output("--out", args.out, "dir")])
        for flag, path in (("--text-train", args.text_train), ("--text-heldout", args.text_heldout)):
            if not os.path.isfile(path):
                cli.fail(f"{flag} {path}: no such file - train the teacher with experiments/reasoning_teacher.py "
                         f"(--text-fraction > 0) or pass {flag}")
        args.fingerprint = fingerprint(args.teacher)  # the experiment's points are of this teacher only
        args.trained_on = torch.device(args.device).type  # "cuda:1" -> "cuda"
        if os.path.isdir(args.out) and set(os.listdir(args.out)) - {"lock"}:
            if not args.resume:
                cli.fail(f"--out {args.out} holds an experiment - continue it with --resume, or choose another --out")
            saved = cli.read_json(config_path)
            args.trained_on = trained_on(saved)
            old_rates = saved.get("rates") or {}  # an arm's rate is fixed; a new arm may bring its own
            if old_rates and args.rates and all(old_rates.get(arm, lr) == lr for arm, lr in args.rates.items()):
                args.rates = old_rates | args.rates
                saved["rates"] = args.rates  # what the experiment has, with the new arms
            changed = cli.changed_settings(saved, {k: getattr(args, k) for k in fixed})
            if changed:
                cli.fail(f"--out {args.out}: --resume with {'; '.join(changed)} - use the experiment's settings, "
                         "or choose another --out")
            if saved.get("teacher_sha256") != args.fingerprint:
                cli.fail(f"--teacher {args.teacher} is not the teacher of the experiment in --out {args.out} (its "
                         "weights differ) - retrain it with the command the experiment was started with, or choose "
                         "another --out")
        if args.rates and set(args.arms) - set(args.rates) and not args.join:
            cli.fail(f"--rates gives no rate for {', '.join(sorted(set(args.arms) - set(args.rates)))} - add ARM=LR "
                     "for each arm of --arms")
        try:  # one process per experiment: two would write the same points.csv
            run_lock.lock(args.out)
        except ckpt.RunError:
            cli.fail(f"--out {args.out}: another {script} is running this experiment - wait for it, or stop it "
                     "(the same command with --resume continues)")
        if args.join and not args.rates:
            cli.fail("--join needs --rates: it joins experiments of given learning rates, not of a sweep")
        for other in args.join:
            join(args, other, fixed)
    cli.write_json(config_path, {k: getattr(args, k) for k in fixed} | {"teacher_sha256": args.fingerprint,
                                                                         "trained_on": args.trained_on})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_experiment_arguments(parser, "out/plateau")
    parser.add_argument("--steps", type=cli.int_at_least(1), default=3000, help="steps per long run")
    parser.add_argument("--points", type=cli.int_at_least(1), default=10, help="measured segments per long run")
    parser.add_argument("--sweep-steps", type=cli.int_at_least(1), default=300)
    parser.add_argument("--sweep-lrs", nargs="+", type=cli.float_in(0, low_open=True), default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--sweep-extend", type=cli.int_at_least(0), default=2, help="rates tried beyond the grid's "
                        "edge, per side, while an arm's best is there")
    parser.add_argument("--sweep-only", action="store_true", help="stop after the learning-rate sweep")
    args = cli.parse_args(parser)
    if args.report:
        with cli.user_errors():
            report_only(args.report)
        return
    if args.steps % args.points:
        cli.fail(f"--steps {args.steps} does not split into --points {args.points} equal segments - pick a multiple")
    open_experiment(args)
    if args.join:  # joining is bookkeeping only: the record gains the runs, and nothing is trained here
        write_report(args)
        print(f"tables in {args.out}/plateau.md")
        return
    start = time.time()

    def check_time():
        if time.time() - start > args.max_minutes * 60:
            raise OutOfTime

    args.data = os.path.join(args.out, "problems.jsonl")  # the training problems; also the calibration data
    if not os.path.exists(args.data):
        rvl.write_corpus(args.data, args.corpus_per_step, args.steps_list, 0)
    teacher, tok = load_model(args.teacher, device=args.device), load_tokenizer(args.teacher)  # fp32 on any device
    held = (*rvl.held_out(tok, args), load_windows(args.text_heldout, tok, args.seq_len))
    measure_teacher(args, teacher, tok, held)
    interrupted = False
    try:
        best = sweep(args, check_time)
        if not args.sweep_only:
            for seed in args.seeds:  # seed by seed: a partial experiment has every arm at equal seeds
                for name in args.arms:
                    long_run(args, name, seed, best[name], teacher, tok, held, check_time)
    except OutOfTime:
        print(f"--max-minutes {args.max_minutes:g} reached after {(time.time() - start) / 60:.1f} min: continue "
              "with the same command and --resume", flush=True)
    except KeyboardInterrupt:  # Ctrl-C during a measurement: the points so far are kept, and reported
        interrupted = True
    write_report(args)
    if interrupted:
        cli.fail("interrupted - the finished points are kept; continue with the same command and --resume", code=130)
    print(f"{(time.time() - start) / 60:.1f} min; tables in {args.out}/plateau.md")


if __name__ == "__main__":
    main()
