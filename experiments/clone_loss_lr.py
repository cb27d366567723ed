"""The example teacher's learning-rate sensitivity, and whether a sink-aware clone loss removes it.

On SmolLM2-135M the first token's massive activations make LRC's `mlp_out` clone term orders of magnitude
larger than the others (docs/METHOD.md §3.9), so it sets the gradient's direction and, through the global
clip, its size. This runs RED (one selection init file, made once) at each --lrs under each --clone-losses
(LRC's mse, skip-first, relative) and each of --seeds (distill.py --seed: the order of the training windows and
the synthetic problems drawn; the init stays the same file), all with the same data and budget, and reports for
each run:
  - every clone term's scale at the start and the end of training (the mean of its first and last 10 steps of
    distill.py's metrics), and what share of the total loss the largest term is;
  - the validation perplexity (overall and on the pydoc documentation) and mean residual eRank that
    distill.py's own validation measured at step 0 and at the end.
Written to --out: results.md (with the mean ± sd over seeds of each cell's end figures when there are several),
results.csv. `--resume` skips the runs that have finished, so more seeds can be added to a record later.

Builds on experiments/red_vs_lrc.py (run_tool, make_init), distill.py and init_select.py (run as a user runs
them) and checkpoint.py (read_metrics). Run as:
    python experiments/clone_loss_lr.py [--lrs 1e-4 1e-3] [--seeds 0 1 2] [--steps 60] [--out out/clone_loss_lr]
        [--resume]
"""
import argparse
import itertools
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint as ckpt  # noqa: E402
import cli  # noqa: E402
from experiments import red_vs_lrc as rvl  # noqa: E402
from experiments.plateau import read_rows, write_rows  # noqa: E402
from kd_loss import CLONE_LOSSES, CLONE_TERMS  # noqa: E402
from load_weights import read_config  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from student import default_width  # noqa: E402


def term_scales(metrics: list[dict], first: bool) -> dict[str, float]:
    """The mean of each clone term (and of the whole loss) over the first or the last 10 training steps."""
    steps = [r for r in metrics if "loss" in r]
    window = steps[:10] if first else steps[-10:]
    return {term: float(np.mean([r[term] for r in window])) for term in (*CLONE_TERMS, "loss", "ce", "kl")}


def summarise(name: str, lr: float, kind: str, seed: int, run_dir: str, minutes: float) -> dict:
    """One results row from a finished run's metrics.jsonl."""
    metrics = ckpt.read_metrics(run_dir)
    vals = [r for r in metrics if "val_loss" in r]
    row = {"lr": lr, "clone_loss": kind, "seed": seed, "run": name, "minutes": round(minutes, 1)}
    for stage, record in (("step0", vals[0]), ("end", vals[-1])):
        row |= {f"{stage}_ppl": record["val_ppl"], f"{stage}_pydoc_ppl": record.get("val_ppl/pydoc", float("nan")),
                f"{stage}_erank": record["erank"]}
    for stage, first in (("start", True), ("end", False)):
        scales = term_scales(metrics, first)
        row |= {f"{stage}_{term}": value for term, value in scales.items()}
        clone = [scales[t] for t in CLONE_TERMS]
        row[f"{stage}_largest_share"] = 0.2 * max(clone) / scales["loss"]  # alpha 0.2 x term / total loss
    return row


def write_table(args, rows: list[dict]):
    head = ["lr", "clone loss", "seed", "val ppl 0 -> end", "pydoc ppl 0 -> end", "eRank 0 -> end",
            *[f"{t} start -> end" for t in CLONE_TERMS], "largest term's share start -> end", "min"]
    teacher = os.path.basename(os.path.normpath(args.teacher))
    lines = [f"{teacher} -> width {args.width}, RED (selection init, T = 1), {args.steps} steps x "
             f"{args.batch_size} x {args.seq_len} tokens, data {' '.join(args.data)}; clone terms as logged "
             "(before alpha = 0.2); share = alpha x largest clone term / total loss", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = lambda key: float(r[key])
        lines.append(f"| {g('lr'):g} | {r['clone_loss']} | {r['seed']} | {g('step0_ppl'):.1f} -> {g('end_ppl'):.2f} | "
                     f"{g('step0_pydoc_ppl'):.1f} -> {g('end_pydoc_ppl'):.2f} | "
                     f"{g('step0_erank'):.1f} -> {g('end_erank'):.1f} | "
                     + " | ".join(f"{g(f'start_{t}'):.3g} -> {g(f'end_{t}'):.3g}" for t in CLONE_TERMS)
                     + f" | {g('start_largest_share'):.2f} -> {g('end_largest_share'):.2f} | {g('minutes'):.1f} |")
    lines += over_seeds(rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def over_seeds(rows: list[dict]) -> list[str]:
    """Each (lr, clone loss) cell's end figures as mean ± sd over its seeds; nothing while every cell has one."""
    cells = {}
    for r in rows:
        cells.setdefault((float(r["lr"]), r["clone_loss"]), []).append(r)
    if all(len(runs) == 1 for runs in cells.values()):
        return []
    columns = {"val ppl": "end_ppl", "pydoc ppl": "end_pydoc_ppl", "eRank": "end_erank",
               "largest term's share": "end_largest_share"}
    lines = ["", "At the end, mean ± sd over seeds:", "", "| lr | clone loss | seeds | "
             + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    for (lr, kind), runs in cells.items():
        values = [[float(r[key]) for r in runs] for key in columns.values()]
        lines.append(f"| {lr:g} | {kind} | {len(runs)} | " + " | ".join(
            f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}" for v in values) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher directory (default: the example teacher, SmolLM2-135M)")
    parser.add_argument("--width", type=cli.int_at_least(1), help="student width (default: half the teacher's)")
    parser.add_argument("--lrs", nargs="+", type=cli.float_in(0, low_open=True), default=[1e-4, 1e-3])
    parser.add_argument("--clone-losses", nargs="+", choices=CLONE_LOSSES, default=list(CLONE_LOSSES))
    parser.add_argument("--seeds", nargs="+", type=cli.int_at_least(0), default=[0], help="distill.py --seed per run")
    parser.add_argument("--steps", type=cli.int_at_least(1), default=60)
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=4)
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=128)
    parser.add_argument("--data", nargs="+", default=["pydoc", "problems:2000:0.5"], help="distill.py --data")
    parser.add_argument("--out", default="out/clone_loss_lr")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs in --out")
    args = parser.parse_args()
    args.teacher = args.teacher or build_example_teacher()
    with cli.user_errors():
        cli.check_outputs({"--teacher": args.teacher}, [cli.Output("--out", args.out, "dir")])
        if os.path.isdir(args.out) and os.listdir(args.out) and not args.resume:
            cli.fail(f"--out {args.out} holds runs - keep them with --resume, or choose another --out")
    os.makedirs(args.out, exist_ok=True)
    args.width = args.width or default_width(read_config(args.teacher)[1])
    start = time.time()
    # one init file for every run: RED's selection, calibrated on the training data's first source
    init = rvl.make_init(SimpleNamespace(out=args.out, teacher=args.teacher, width=args.width, data=args.data[0],
                                         seq_len=args.seq_len), "select", 0)
    rows = read_rows(os.path.join(args.out, "results.csv"))
    done = {r["run"] for r in rows}
    for seed, lr, kind in itertools.product(args.seeds, args.lrs, args.clone_losses):
        name = f"lr{lr:g}-{kind}-s{seed}"
        if name in done:
            continue
        out = os.path.join(args.out, name)
        seconds = rvl.run_tool(args, "distill.py", [
            "--teacher", args.teacher, "--width", args.width, "--data", *args.data, "--init", init,
            "--clone-loss", kind, "--lr", lr, "--steps", args.steps, "--batch-size", args.batch_size,
            "--seq-len", args.seq_len, "--seed", seed, "--eval-every", max(1, args.steps // 3), "--ckpt-every",
            args.steps, "--eval-problems", 0, "--out", out, "--overwrite"], out + ".log", tolerate="error: loss is ")
        if seconds is None:
            print(f"{name}: the loss diverged (see {out}.log)")
            continue
        rows.append(summarise(name, lr, kind, seed, out + ".run", seconds / 60))
        write_rows(os.path.join(args.out, "results.csv"), rows)
        print(f"{name}: done in {seconds / 60:.1f} min ({(time.time() - start) / 60:.1f} min in all)", flush=True)
    write_table(args, rows)


if __name__ == "__main__":
    main()
