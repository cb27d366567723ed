"""The plateau experiment's report: plateau.md and its figures from the record's files alone (points.csv,
teacher.json, sweep.csv), and the criterion that says whether a run has reached a plateau.

What the report holds: the sweep's final validation losses (when there was a sweep); the end of the budget, mean
and spread over seeds, with the teacher measured alike as its first row and the plateau criterion per run; the
comparison at equal fit (each arm's best solution and general-text perplexity against RED's first point that fits
as well, same seed, and RED's accuracy interpolated to exactly that fit; both again averaged over the arm's last
three points, each at its own fit); Table 6's factorial; the latest point of each run still under way; and three
figures (accuracy against fit along training, eRank over steps, eRank per layer). Everything is read from the
record, so a record kept in docs/ is reported again without its teacher.

Builds on experiments/figures.py (matplotlib, optional) and cli.py; experiments/plateau.py writes the record and calls report.
Run as: python experiments/plateau.py --report docs/records/teacher-b-3000-steps   (and at every stop of a plateau.py run)
"""
import csv
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.figures import pyplot, save  # noqa: E402
import cli  # noqa: E402


def plateau(points: list[tuple[int, float]], tail: float = 0.2, tol: float = 0.01) -> tuple[bool, float]:
    """(flattened, relative change) of a loss curve [(step, loss), ...] in step order: the change from the
    last point at or before step (1 - tail) * final step to the final point, relative to the former. The
    curve has flattened when that change is below `tol` (1 % over the last 20 % of the steps)."""
    last_step, last = points[-1]
    before = [loss for step, loss in points if step <= (1 - tail) * last_step]
    if not before:
        return False, math.inf
    change = abs(last - before[-1]) / abs(before[-1])
    return change < tol, change


# ---------------------------------------------------------------------------------------------------------
# The record's files

def read_rows(path: str) -> list[dict]:
    """A CSV of the record (points.csv, sweep.csv) as dicts of strings; none when it does not exist yet."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_key(row: dict) -> tuple[str, ...]:
    """The run a points.csv row belongs to: (arm, seed), or (arm, budget, seed) in a ladder's record."""
    return tuple(row[k] for k in ("arm", "budget", "seed") if k in row)


def run_name(run: tuple) -> str:
    """A run's files under runs/: 'red-s0', or in a ladder's record 'red-b600-s0'."""
    return "-".join([run[0], *(f"b{b}" for b in run[1:-1]), f"s{run[-1]}"])


def run_label(run: tuple) -> str:
    """A run in a message: 'red seed 0', or 'red budget 600 seed 0'."""
    return " ".join([run[0], *(f"budget {b}" for b in run[1:-1]), f"seed {run[-1]}"])


def run_end(points: list[dict], steps: int) -> int:
    """The last step of a run: its budget in a ladder's record, the experiment's --steps in a plateau record."""
    return int(points[0].get("budget") or steps)


def by_run(rows: list[dict]) -> dict[tuple[str, ...], list[dict]]:
    """points.csv rows grouped by run (run_key), in their order."""
    runs = {}
    for r in rows:
        runs.setdefault(run_key(r), []).append(r)
    return runs


def write_rows(path: str, rows: list[dict]):
    """CSV written to a temporary file and renamed: a kill never leaves half a table."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def arm_losses(rows: list[dict], name: str) -> dict[float, float]:
    """One arm's sweep: {learning rate: final validation loss} from sweep.csv's rows."""
    return {float(r["lr"]): float(r["val_loss"]) for r in rows if r["arm"] == name}


# ---------------------------------------------------------------------------------------------------------
# Tables and figures

def curves(args) -> dict[str, dict[int, list[dict]]]:
    """arm -> seed -> its points in step order (values as floats)."""
    out = {}
    for r in read_rows(os.path.join(args.out, "points.csv")):
        r = {k: (v if k == "arm" else float(v)) for k, v in r.items()}
        out.setdefault(r["arm"], {}).setdefault(int(r["seed"]), []).append(r)
    return {arm: {seed: sorted(pts, key=lambda r: r["step"]) for seed, pts in seeds.items()}
            for arm, seeds in out.items()}


def hard_steps(args) -> list[int]:
    """The three longest step counts (4-6 by default): where collapse shows first."""
    return sorted(args.steps_list)[-3:]


def hard_accuracy(point: dict, args) -> float:
    """Mean accuracy over the hard_steps problems."""
    return float(np.mean([point[f"acc_{k}"] for k in hard_steps(args)]))


def spread(values: list[float], digits: int = 2) -> str:
    """'mean ± sd' over seeds (sample sd); a single seed prints its value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def report(args, best: dict[str, float]):
    """plateau.md (and the figures) from sweep.csv and points.csv, whatever of them exists; `best`: each arm's
    rate from a finished sweep (experiments/plateau.py's best_rates)."""
    if args.rates:
        rates = "learning rates given: " + ", ".join(f"{arm} {lr:g}" for arm, lr in args.rates.items()) + " (no sweep)"
    else:
        rates = f"sweep {args.sweep_steps} steps at lr " + ", ".join(f"{lr:g}" for lr in args.sweep_lrs) + " (seed 0)"
    lines = [f"# Plateau runs: {os.path.basename(os.path.normpath(args.teacher))} -> width {args.width}", "",
             f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens per run in {args.points} segments; "
             f"data: the teacher's problems and general text (weight {args.text_weight}); accuracy on "
             f"{args.eval_per_step} held-out problems per step count; {rates}", ""]
    sweep_rows = read_rows(os.path.join(args.out, "sweep.csv"))
    if sweep_rows:
        rates = sorted({float(r["lr"]) for r in sweep_rows})  # the grid and its extensions
        lines += ["## Learning-rate sweep: final validation loss", "",
                  "| arm | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | best |",
                  "|---|" + "---|" * (len(rates) + 1)]
        for name in args.arms:
            loss = arm_losses(sweep_rows, name)
            lines.append(f"| {name} | " + " | ".join(f"{loss[lr]:.4f}" if lr in loss else "" for lr in rates)
                         + (f" | {best[name]:g} |" if name in best else " | (sweep unfinished) |"))
        lines += ["", f"Rates beyond the grid were tried where an arm's best was at its edge (up to "
                  f"{args.sweep_extend} per side).", ""]
    runs = curves(args)
    finished = {arm: {seed: pts for seed, pts in seeds.items() if pts[-1]["step"] == args.steps}
                for arm, seeds in runs.items()}
    if any(finished.values()):
        head = ["arm", "seeds", "lr", *[f"acc {k}" for k in args.steps_list], "solution ppl", "general ppl",
                "eRank", "eRank general", "s_max/s_min", "flat", "tokens", "train min"]
        lines += ["## At the end of the budget (mean ± sd over seeds)", "", *table_head(head)]
        if os.path.exists(os.path.join(args.out, "teacher.json")):
            t = cli.read_json(os.path.join(args.out, "teacher.json"))
            cells = ["teacher", "", "", *[f"{t[f'acc_{k}']:.2f}" for k in args.steps_list], f"{t['solution_ppl']:.3f}",
                     f"{t['general_ppl']:.2f}", f"{t['erank_sq']:.1f}", f"{t['erank_general']:.1f}"]
            cells += [""] * (len(head) - len(cells))  # the training columns stay empty
            lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
        for arm, seeds in finished.items():
            if not seeds:
                continue
            ends = [pts[-1] for pts in seeds.values()]
            col = lambda key, d=2: spread([e[key] for e in ends], d)
            flat = [plateau([(p["step"], p["val_loss"]) for p in pts])[0] for pts in seeds.values()]
            minutes = np.mean([sum(p["train_s"] for p in pts) / 60 for pts in seeds.values()])
            lines.append(f"| {arm} | {len(seeds)} | {ends[0]['lr']:g} | "
                         + " | ".join(col(f"acc_{k}") for k in args.steps_list)
                         + f" | {col('solution_ppl', 3)} | {col('general_ppl')} | {col('erank_sq', 1)} | "
                         f"{col('erank_general', 1)} | {col('spectrum_ratio')} | {sum(flat)}/{len(flat)} | "
                         f"{int(ends[0]['tokens']):,} | {minutes:.1f} |")
        lines += ["", "flat: runs whose validation loss changed by less than 1 % over the last 20 % of the steps.",
                  ""]
        lines += equal_fit(args, runs) + factorial(args, finished)
    lines += under_way(args, runs)
    with open(os.path.join(args.out, "plateau.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(args, runs)


def table_head(columns: list[str]) -> list[str]:
    """A markdown table's header line and rule."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def under_way(args, runs) -> list[str]:
    """The latest point of each run that has not reached --steps (stopped by --max-minutes, or still running)."""
    latest = [(arm, seed, pts[-1]) for arm, seeds in runs.items() for seed, pts in seeds.items()
              if pts[-1]["step"] < args.steps]
    if not latest:
        return []
    lines = [f"## Runs under way: their latest point (of {args.steps} steps)", "",
             *table_head(["arm", "seed", "step", *[f"acc {k}" for k in args.steps_list], "solution ppl",
                          "general ppl", "eRank", "validation loss"])]
    for arm, seed, p in latest:
        cells = [arm, seed, int(p["step"]), *[f"{p[f'acc_{k}']:.2f}" for k in args.steps_list],
                 f"{p['solution_ppl']:.3f}", f"{p['general_ppl']:.2f}", f"{p['erank_sq']:.1f}", f"{p['val_loss']:.3f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines + [""]


def at_fit(points: list[dict], key: str, target: float) -> dict | None:
    """The first point whose `key` perplexity is at or below `target`, or None."""
    return next((p for p in points if p[key] <= target), None)


def interpolated_accuracy(points: list[dict], key: str, target: float, args) -> float | None:
    """RED's hard-problem accuracy at `key` perplexity `target`, read off the straight line between its last
    point that fitted worse and its first that fitted as well (in step order): an interpolation, not a
    measurement. None when RED never fitted as well, or fitted as well from its first trained point on (a line
    from the init, hundreds of perplexity away, says nothing)."""
    found = bracket(points, key, target)
    if found is None:
        return None
    before, after, w = found
    return (1 - w) * hard_accuracy(before, args) + w * hard_accuracy(after, args)


def bracket(points: list[dict], key: str, target: float) -> tuple[dict, dict, float] | None:
    """(before, after, w) of interpolated_accuracy: the last point that fitted worse than `target` and the first
    that fits as well, and the weight of `after` on the line between them; None where there is no reading."""
    after = at_fit(points, key, target)
    i = points.index(after) if after else 0
    if i == 0 or points[i - 1]["step"] == 0:
        return None
    before = points[i - 1]  # fitted worse than `target`, since `after` is the first that fits as well
    return before, after, (before[key] - target) / (before[key] - after[key])  # w: 0 at `before`, 1 at `after`


def over_last_points(points: list[dict], red: list[dict], key: str, args, last: int = 3) -> tuple[float, float | None]:
    """A steadier equal-fit reading than one end point: the arm's hard-problem accuracy averaged over its last
    `last` trained points, and RED's (same seed) interpolated to each of those points' own fit, averaged alike.
    RED's mean is None when any of the points has no RED reading."""
    tail = [p for p in points if p["step"] > 0][-last:]
    theirs = float(np.mean([hard_accuracy(p, args) for p in tail]))
    red_there = [interpolated_accuracy(red, key, p[key], args) for p in tail]
    return theirs, None if None in red_there else float(np.mean(red_there))


def reading(accuracy: float | None) -> str:
    """An interpolated accuracy as a table cell: empty where there is no reading."""
    return "" if accuracy is None else f"{accuracy:.2f}"


def fit_readings(points: list[dict], red: list[dict], key: str, args) -> tuple[dict, float | None, float, float | None]:
    """One run against RED (same seed) at one fit: its best-fitting point, RED's accuracy interpolated to that
    point's fit, and over_last_points' two means."""
    best = min(points, key=lambda p: p[key])
    return best, interpolated_accuracy(red, key, best[key], args), *over_last_points(points, red, key, args)


def lead_cells(pairs: list[tuple[float, float | None]]) -> str:
    """(arm, RED there) accuracies over seeds as two table cells: the arm's lead in points (each side rounded to the
    whole percent the tables show), mean ± sd over the runs with a RED reading, and how many of them are
    ahead / level / behind."""
    leads = [round(100 * theirs) - round(100 * red) for theirs, red in pairs if red is not None]
    if not leads:
        return " | "
    mean = round(np.mean(leads))
    mean_cell = f"{mean:+d}" if mean else "0"
    spread = f" ± {np.std(leads, ddof=1):.0f}" if len(leads) > 1 else ""
    counts = f"{sum(x > 0 for x in leads)} / {leads.count(0)} / {sum(x < 0 for x in leads)}"
    return f"{mean_cell}{spread} | {counts}"


def equal_fit(args, runs) -> list[str]:
    """For each arm and seed, and for each fit (solution and general perplexity): the arm's best fit, its
    hard-problem accuracy there, RED's (same seed) accuracy at the first point where RED fitted as well, and
    RED's accuracy interpolated to exactly that fit; then the steadier reading of over_last_points; then both
    readings over seeds (lead_cells). A run with only its init point has no reading yet."""
    if "red" not in runs:
        return []
    hard = f"acc {hard_steps(args)[0]}-{hard_steps(args)[-1]}"
    lines, summary = [], []
    for key, what in (("solution_ppl", "solution perplexity"), ("general_ppl", "general-text perplexity")):
        lines += [f"## At equal fit: {what}", "", f"| arm | seed | step | {what} | {hard} | red: step | "
                  f"red: {what} | red: {hard} | red: {hard}, interpolated | {hard}, last 3 points | "
                  f"red: {hard}, interpolated, last 3 points |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, seeds in runs.items():
            at_end, over_last = [], []  # (arm, RED there) accuracies per seed, for lead_cells
            for seed, pts in seeds.items():
                if arm == "red" or seed not in runs["red"] or pts[-1]["step"] == 0:
                    continue
                best, interpolated, theirs, red_there = fit_readings(pts, runs["red"][seed], key, args)
                accuracy = hard_accuracy(best, args)
                red = at_fit(runs["red"][seed], key, best[key])
                red_cells = (f"{int(red['step'])} | {red[key]:.3f} | {hard_accuracy(red, args):.2f} | "
                             f"{reading(interpolated)}" if red else "not reached | | |")
                lines.append(f"| {arm} | {seed} | {int(best['step'])} | {best[key]:.3f} | {accuracy:.2f} | "
                             f"{red_cells} | {theirs:.2f} | {reading(red_there)} |")
                at_end.append((accuracy, interpolated))
                over_last.append((theirs, red_there))
            if at_end:
                summary.append(f"| {arm} | {what} | {len(at_end)} | {lead_cells(at_end)} | {lead_cells(over_last)} |")
        lines.append("")
    lines += ["## At equal fit, over seeds: the arm's lead over RED there", "",
              *table_head(["arm", "fit", "runs", "lead, points", "ahead / level / behind",
                           "lead, points, last 3 points", "ahead / level / behind, last 3 points"]), *summary, ""]
    return lines + [f"{hard}: mean greedy accuracy on the longest step counts. Each arm's best fit against RED's "
                    "first measured point that fits as well; interpolated: RED's accuracy on the straight line "
                    "between that point and the one before it, at the arm's fit (a reading, not a measurement; "
                    "none when the one before is the init). Last 3 points: the arm's accuracy averaged over its last "
                    "three measured points, and RED's interpolated to each of their fits, averaged alike (none when "
                    "one of them has no reading): steadier than one end point of a run whose accuracy swings. Lead: "
                    "the arm's accuracy minus RED's there, in points of the rounded percentages of the tables above, "
                    "mean ± sd over the runs with a RED reading, which the counts add up to.", ""]


def factorial(args, finished) -> list[str]:
    """RED's Table 6 at the end of the budget: {select, gaussian} x {T = 1, T = 40}, accuracy on hard_steps."""
    cells = {"red": ("select", "T = 1"), "select@T40": ("select", "T = 40"), "red+gaussian": ("gaussian", "T = 1"),
             "lrc": ("gaussian", "T = 40")}
    if not all(finished.get(arm) for arm in cells):
        return []
    value = lambda arm: spread([hard_accuracy(pts[-1], args) for pts in finished[arm].values()])
    hard = f"{hard_steps(args)[0]}-{hard_steps(args)[-1]}"
    return [f"## Table 6 at the end of the budget: accuracy on {hard}-step problems", "", "| init | T = 1 | T = 40 |",
            "|---|---|---|", f"| select | {value('red')} | {value('select@T40')} |",
            f"| gaussian | {value('red+gaussian')} | {value('lrc')} |", ""]


def plot(args, runs):
    """accuracy_vs_fit.png (hard-problem accuracy against solution and general perplexity along training, one
    colour per arm, one line per seed), erank_steps.png (eRank against steps, mean and range over the seeds at each
    step) and erank_layers.png (eRank per layer at step 0 and at the latest step, mean over the seeds there)."""
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no PNGs (pip install matplotlib)")
        return
    if not runs:
        return
    color = {arm: f"C{i}" for i, arm in enumerate(runs)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "solution_ppl", "solution perplexity"),
                           (axes[1], "general_ppl", "general-text perplexity")):
        for arm, seeds in runs.items():
            for i, pts in enumerate(seeds.values()):
                pts = [p for p in pts if p["step"] > 0]
                ax.plot([p[key] for p in pts], [hard_accuracy(p, args) for p in pts], "-o", ms=3, lw=1,
                        color=color[arm], label=arm if i == 0 else None)
        ax.set(xscale="log", xlabel=f"{label} (held out)", ylim=(-0.02, 1),
               ylabel=f"accuracy on {hard_steps(args)[0]}-{hard_steps(args)[-1]}-step problems")
        for set_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):  # 1.02, not 1.02 x 10^0
            set_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}"))
    fig.suptitle("along training: accuracy against fit (each line one seed; training moves it right to left)")
    save(fig, os.path.join(args.out, "accuracy_vs_fit.png"), axes[0])
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, seeds in runs.items():  # a seed still running counts at the steps it has reached
        steps = sorted({p["step"] for pts in seeds.values() for p in pts})
        values = [[p["erank_sq"] for pts in seeds.values() for p in pts if p["step"] == s] for s in steps]
        seeds_label = f"{len(seeds)} seed" + "s" * (len(seeds) > 1)
        ax.plot(steps, [np.mean(v) for v in values], "-o", ms=3, color=color[arm], label=f"{arm} ({seeds_label})")
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=color[arm], alpha=0.15)
    ax.set(xlabel="step", ylabel="mean residual eRank (held-out problems)", title="eRank over training")
    save(fig, os.path.join(args.out, "erank_steps.png"), ax)
    fig, ax = plt.subplots(figsize=(9, 4))
    for arm, seeds in runs.items():
        last = max(pts[-1]["step"] for pts in seeds.values())  # mean over the seeds that have reached it
        for step, style in ((0, "--"), (last, "-")):
            at = [p for pts in seeds.values() for p in pts if p["step"] == step]
            layers = sorted(int(k[len("erank_l"):]) for k in at[0] if k.startswith("erank_l"))
            ax.plot(layers, [np.mean([p[f"erank_l{i}"] for p in at]) for i in layers], style, marker="o", ms=3,
                    color=color[arm], label=f"{arm}, step {step:g}")
    ax.set(xlabel="layer", ylabel="residual eRank (held-out problems)", xticks=layers)
    ax.set_title("eRank per layer, mean over seeds: step 0 dashed (arms of one init share it), latest step solid",
                 fontsize=9)
    ax.legend(fontsize=7, handlelength=3, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: lines cross
    save(fig, os.path.join(args.out, "erank_layers.png"))
    print(f"plots: {args.out}/accuracy_vs_fit.png, {args.out}/erank_steps.png, {args.out}/erank_layers.png")
