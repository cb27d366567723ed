"""The ladder's report: ladder.md and ladder_fit.png from a ladder record's files alone (config.json, teacher.json,
points.csv), with RED's lead over each arm at equal fit between finished students, its bootstrap interval and the
decision of docs/METHOD.md §4.5.1.

Equal fit here: each annealed end of another arm against RED's accuracy (same seed) read off the straight line
between the two of RED's annealed ends, rung by rung of its ladder, that bracket that end's fit (plateau_report's
rule, `bracket`: no reading where RED's shortest rung already fits as well, or its longest not yet). Three fits:
general-text perplexity (the decision's), the answer's NLL and the steps' results' NLL. Three accuracies on the
same students: strict on the three longest step counts; the same with an overrun scored by its value at the
question's last step; the longest step count alone. RED's lead, in points, is the mean over seeds of each seed's
mean over its readings; its 95 % interval is the percentile interval of the same mean when the problems (within
each step count, the same draw for every student, as every student answered the same problems) and the seeds (RED
and the arm together, as they are paired) are resampled jointly, RED's interpolation recomputed in each resample.

Builds on experiments/plateau_report.py (the record's rows, the bracketing rule), experiments/figures.py
(matplotlib, optional) and cli.py; experiments/ladder.py writes the record and calls report.
Run as: python experiments/ladder.py --report DIR   (and at every stop of an experiments/ladder.py run)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from experiments.figures import pyplot, save  # noqa: E402
from experiments.plateau_report import bracket, read_rows, spread, table_head  # noqa: E402

FITS = {"general_ppl": "general-text perplexity", "answer_nll": "answer NLL", "result_nll": "step-result NLL"}
COLLAPSE = 10.0   # points: the smallest RED lead read as the paper's collapse (docs/METHOD.md §4.5.1)
DECIDES = ("lrc", "general_ppl", "strict")  # the decision's arm, fit and accuracy, fixed before any run
BOOTSTRAP = 2000  # resamples of problems and seeds
SEEDS = 3         # seeds the rule is read on; fewer give a provisional reading (docs/METHOD.md §4.5.1)
CASES = {"collapse": "reproduces the paper's collapse", "smaller": "a smaller effect than the paper's",
         "none": "no collapse shown (the interval covers 0)", "reverse": "the reverse: {arm} reasons better than RED "
                                                                       "at equal fit"}


def case(lead: float, lo: float, hi: float) -> str:
    """The decision rule (docs/METHOD.md §4.5.1) on RED's lead and its 95 % interval, in points."""
    if lo > 0:
        return "collapse" if lead >= COLLAPSE else "smaller"
    return "reverse" if hi < 0 else "none"


def accuracies(steps_list: list[int]) -> dict[str, tuple[list[int], str, str]]:
    """name -> (step counts, outcome characters scored right, label): strict and overrun-scored accuracy on the
    three longest step counts, and the longest alone (whose chains the training data never continues)."""
    hard, longest = sorted(steps_list)[-3:], max(steps_list)
    span = f"{hard[0]}-{hard[-1]} steps"
    return {"strict": (hard, "1", f"{span}, strict"), "overrun": (hard, "1o", f"{span}, overruns scored"),
            "longest": ([longest], "1", f"{longest} steps")}


# ---------------------------------------------------------------------------------------------------------
# The record

def parse(row: dict) -> dict:
    """A points.csv row (or teacher.json) with numbers as numbers, empty cells as None, outcomes kept as strings."""
    out = {}
    for k, v in row.items():
        if k == "arm" or k.startswith("outcomes_"):
            out[k] = v
        elif v == "" or v is None:
            out[k] = None
        else:
            out[k] = int(v) if k in ("budget", "seed", "step") else float(v)
    return out


def load(out: str) -> tuple[argparse.Namespace, dict | None, dict]:
    """(settings, the teacher's row or None, runs): runs maps (arm, budget, seed) to its points in step order."""
    args = argparse.Namespace(**cli.read_json(os.path.join(out, "config.json"), "experiment config"), out=out)
    path = os.path.join(out, "teacher.json")
    teacher = parse(cli.read_json(path)) if os.path.exists(path) else None
    runs, rows = {}, read_rows(os.path.join(out, "points.csv"))
    if rows and "budget" not in rows[0]:
        cli.fail(f"{out}: not a ladder's record (its points have no budget) - report it with experiments/plateau.py "
                 "--report")
    for r in map(parse, rows):
        runs.setdefault((r["arm"], r["budget"], r["seed"]), []).append(r)
    return args, teacher, {run: sorted(pts, key=lambda p: p["step"]) for run, pts in runs.items()}


def ladders(runs: dict) -> dict[str, dict[int, list[dict]]]:
    """arm -> seed -> its annealed ends (the runs that reached their budget), in budget order."""
    out = {}
    for (arm, budget, seed), pts in sorted(runs.items(), key=lambda x: (x[0][0] != "red", x[0])):  # red first
        if pts[-1]["step"] == budget:
            out.setdefault(arm, {}).setdefault(seed, []).append(pts[-1])
    return out


def readings(ends: dict, arm: str, key: str, budgets=None) -> tuple[dict[int, list[tuple]], list[tuple]]:
    """({seed: [(the arm's end, RED's rung before, RED's rung after, w)]}, [(end, why) for ends without a reading]):
    each end of `arm` (of `budgets`, default all) against RED's ladder of the same seed at that end's `key` fit."""
    found, missed = {}, []
    for seed, theirs in ends.get(arm, {}).items():
        red = ends.get("red", {}).get(seed, [])
        for end in theirs:
            if budgets is not None and end["budget"] not in budgets:
                continue
            line = bracket(red, key, end[key])
            if line:
                found.setdefault(seed, []).append((end, *line))
            else:
                why = ("no RED ladder" if not red else "fits better than RED's longest rung"
                       if end[key] < min(p[key] for p in red) else "fits no better than RED's shortest rung")
                missed.append((end, why))
    return found, missed


# ---------------------------------------------------------------------------------------------------------
# The bootstrap

def accuracy(point: dict, kind: tuple, draw: dict | None = None):
    """A point's accuracy of `kind` (accuracies' value) from its outcome strings: the mean over the kind's step
    counts of the fraction scored right; with `draw` ({k: (replicates, n) problem indices}) one per replicate."""
    steps, marks, _ = kind
    ok = [np.array([c in marks for c in point[f"outcomes_{k}"]], dtype=float) for k in steps]
    return np.mean([(o if draw is None else o[draw[k]]).mean(-1) for o, k in zip(ok, steps)], axis=0)


class Resamples:
    """Problems drawn once for every estimate of a report (within each step count: {k: (replicates, n)} indices),
    seeds drawn per estimate; each point's accuracy under the draws is cached."""

    def __init__(self, n: dict[int, int], replicates: int = BOOTSTRAP, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.draw = {k: rng.integers(0, m, (replicates, m)) for k, m in n.items()}
        self.replicates, self.seed, self.cache = replicates, seed, {}

    def accuracy(self, point: dict, kind: tuple, resampled: bool):
        """accuracy() of a point on all problems, or its (replicates,) values under the draws."""
        key = (id(point), kind[1], tuple(kind[0]), resampled)
        if key not in self.cache:
            self.cache[key] = accuracy(point, kind, self.draw if resampled else None)
        return self.cache[key]

    def estimate(self, per_seed) -> tuple[float, float, float] | None:
        """per_seed(resampled) -> {seed: value (all problems) or (replicates,) values}: (the mean over seeds,
        2.5th and 97.5th percentiles of that mean with problems and seeds resampled jointly); None without seeds."""
        full = per_seed(False)
        if not full:
            return None
        seeds, boot = sorted(full), per_seed(True)
        pick = np.random.default_rng(self.seed + 1).integers(0, len(seeds), (self.replicates, len(seeds)))
        values = np.stack([boot[s] for s in seeds])  # (seeds, replicates)
        means = values[pick, np.arange(self.replicates)[:, None]].mean(1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        return float(np.mean([full[s] for s in seeds])), float(lo), float(hi)

    def lead(self, found: dict, kind: tuple) -> tuple[float, float, float] | None:
        """RED's lead in points over the arm's ends in `found` (readings'), with its 95 % interval."""
        def per_seed(resampled):
            acc = lambda p: self.accuracy(p, kind, resampled)  # noqa: E731
            return {seed: np.mean([(1 - w) * acc(a) + w * acc(b) - acc(end) for end, a, b, w in lines], axis=0)
                    for seed, lines in found.items()}
        result = self.estimate(per_seed)
        return None if result is None else tuple(100 * v for v in result)

    def mean(self, points: dict[int, dict], kind: tuple) -> tuple[float, float, float] | None:
        """{seed: point} -> their mean accuracy with its 95 % interval (a band of the figure)."""
        return self.estimate(lambda resampled: {s: self.accuracy(p, kind, resampled) for s, p in points.items()})


def problem_counts(ends: dict) -> dict[int, int]:
    """{step count: problems} of the record's outcome strings (every end answered the same problems)."""
    n = {}
    for seeds in ends.values():
        for pts in seeds.values():
            for p in pts:
                for k, marks in ((int(c.split("_")[1]), v) for c, v in p.items() if c.startswith("outcomes_")):
                    if n.setdefault(k, len(marks)) != len(marks):
                        raise ValueError(f"outcomes_{k}: {len(marks)} problems at one point, {n[k]} at another")
    return n


# ---------------------------------------------------------------------------------------------------------
# Tables and the figure

def interval(result: tuple | None) -> tuple[str, str]:
    """A lead (or accuracy) and its interval as two table cells."""
    if result is None:
        return "", ""
    value, lo, hi = result
    return f"{value:+.1f}", f"[{lo:+.1f}, {hi:+.1f}]"


def decision(ends: dict, res: Resamples, kinds: dict) -> list[str]:
    """The decision paragraph: DECIDES' lead, its interval and its case, with the rule as written before any run."""
    arm, key, kind = DECIDES
    found, missed = readings(ends, arm, key)
    result = res.lead(found, kinds[kind]) if res else None
    total = len(missed) + sum(len(v) for v in found.values())
    what = f"{arm} at matched annealed {FITS[key]}, accuracy on {kinds[kind][2]}"
    gaps = "; ".join(f"{e['budget']:,} seed {e['seed']}: {why}" for e, why in missed)
    if result is None or set(found) != set(ends.get(arm, {})):  # read once every seed has a reading
        verdict = (f"**No decision yet**: {what}: RED's ladder brackets {total - len(missed)} of {total} {arm} ends, "
                   f"not one in every seed{f' ({gaps})' if gaps else ''}.")
    else:
        lead, lo, hi = result
        words = CASES[case(lead, lo, hi)].format(arm=arm)
        words = f"provisional, {len(found)} of {SEEDS} seeds: {words}" if len(found) < SEEDS else words
        verdict = (f"**{words[0].upper() + words[1:]}.** {what}: RED's lead {lead:+.1f} points, 95 % "
                   f"interval [{lo:+.1f}, {hi:+.1f}] ({total - len(missed)} of {total} {arm} ends bracketed by "
                   f"RED's ladder, {len(found)} seeds{f'; left out: {gaps}' if gaps else ''}).")
    return ["## The decision (docs/METHOD.md §4.5.1)", "", verdict, "",
            f"The rule, fixed before any run: a RED lead of at least {COLLAPSE:g} points with its 95 % interval above "
            "0 reproduces the paper's collapse; a lead below that with the interval above 0 is a smaller effect than "
            "the paper's; an interval covering 0 shows no collapse; an interval below 0 is the reverse. It is read "
            f"once RED's ladder brackets an end in every seed, and is provisional on fewer than {SEEDS} seeds (its "
            "interval then counts the problems but not the seeds' spread); ends it does not bracket are left out. "
            "The other fits, accuracies and arms below are read with the same words and decide nothing.", ""]


def ends_table(args, teacher: dict | None, ends: dict, kinds: dict) -> list[str]:
    """The annealed ends, mean ± sd over seeds per arm and budget, the teacher first."""
    def cells(points):
        def col(f, digits=2):
            return spread([f(p) for p in points], digits)
        acc = [col(lambda p, k=k: p[f"acc_{k}"]) for k in args.steps_list]
        scored = [col(lambda p, kind=kind: float(accuracy(p, kind)))
                  if all(p.get(f"outcomes_{k}") for p in points for k in kind[0]) else "" for kind in kinds.values()]
        fits = [col(lambda p: p["general_ppl"]), col(lambda p: p["answer_nll"], 4), col(lambda p: p["result_nll"], 4),
                col(lambda p: p["solution_ppl"], 3), col(lambda p: p["erank_sq"], 1)]
        return acc + scored + fits
    head = ["arm", "budget", "seeds", *[f"acc {k}" for k in args.steps_list], *[k[2] for k in kinds.values()],
            "general ppl", "answer NLL", "step-result NLL", "solution ppl", "eRank", "s_max/s_min"]
    lines = ["## The annealed ends (mean ± sd over seeds)", "", *table_head(head)]
    if teacher:
        lines.append("| teacher | | | " + " | ".join(cells([teacher])) + " | |")
    by_rung = {}
    for arm, seeds in ends.items():
        for seed, pts in seeds.items():
            for p in pts:
                by_rung.setdefault((arm, p["budget"]), []).append(p)
    for (arm, budget), points in by_rung.items():
        lines.append(f"| {arm} | {budget:,} | {len(points)} | " + " | ".join(cells(points))
                     + f" | {spread([p['spectrum_ratio'] for p in points])} |")
    return lines + ["", "Accuracy on the held-out problems of each step count; overrun scored: a wrong answer that "
                    "overran (its chain's last real step had the right number) counted right; NLL: nats per token, "
                    "teacher-forced; s_max/s_min: median over the projections.", ""]


def sides(found: dict, kind: tuple) -> tuple[float, float] | None:
    """(the arm's accuracy, RED's there) on all problems, each the mean over seeds of that seed's readings' mean:
    the two sides of Resamples.lead's estimate."""
    if not found:
        return None
    mean = lambda f: float(np.mean([np.mean([f(*line) for line in v]) for v in found.values()]))  # noqa: E731
    return (mean(lambda end, a, b, w: accuracy(end, kind)),
            mean(lambda end, a, b, w: (1 - w) * accuracy(a, kind) + w * accuracy(b, kind)))


def leads_table(ends: dict, res: Resamples, kinds: dict) -> list[str]:
    """RED's lead over every other arm at each fit and accuracy, its ends pooled over budgets and seeds; then each
    budget alone at strict accuracy."""
    lines = ["## RED's lead at equal fit, annealed ends only", "",
             *table_head(["arm", "budgets", "fit", "accuracy", "ends read", "arm", "RED there",
                          "RED's lead, points", "95 % interval", "case"])]
    for arm in (a for a in ends if a != "red"):
        budgets = sorted({p["budget"] for pts in ends[arm].values() for p in pts})
        rows = [(None, key, kind) for key in FITS for kind in kinds]
        rows += [([b], key, "strict") for b in budgets if len(budgets) > 1 for key in FITS]
        for only, key, kind in rows:
            found, missed = readings(ends, arm, key, only)
            n, lead, split = sum(map(len, found.values())), res.lead(found, kinds[kind]), sides(found, kinds[kind])
            cells = [arm, "all" if only is None else f"{only[0]:,}", FITS[key], kinds[kind][2],
                     f"{n} of {n + len(missed)}", *([f"{100 * v:.1f} %" for v in split] if split else ["", ""]),
                     *interval(lead), CASES[case(*lead)].format(arm=arm) if lead else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "RED there: RED's accuracy (same seed) on the line between its two annealed ends that bracket "
                    "the arm's end's fit; means over each seed's ends, then over seeds. Interval: 95 % percentile "
                    f"interval of {BOOTSTRAP} resamples of the problems (within each step count, shared by every "
                    "student) and the seeds, jointly.", ""]


def readings_table(ends: dict, kinds: dict) -> list[str]:
    """Every end of every other arm at every fit: RED's two rungs around it, or why there is none."""
    lines = ["## Each end against RED's ladder", "",
             *table_head(["arm", "budget", "seed", "fit", "its fit", "RED's rungs", "RED's fits", "w",
                          f"arm: {kinds['strict'][2]}", "RED there"])]
    for key in FITS:
        for arm in (a for a in ends if a != "red"):
            found, missed = readings(ends, arm, key)
            for end, a, b, w in sorted((x for v in found.values() for x in v), key=lambda x: x[0]["budget"]):
                there = (1 - w) * accuracy(a, kinds["strict"]) + w * accuracy(b, kinds["strict"])
                lines.append(f"| {arm} | {end['budget']:,} | {end['seed']} | {FITS[key]} | {end[key]:.4g} | "
                             f"{a['budget']:,}, {b['budget']:,} | {a[key]:.4g}, {b[key]:.4g} | {w:.2f} | "
                             f"{accuracy(end, kinds['strict']):.2f} | {there:.2f} |")
            for end, why in missed:
                lines.append(f"| {arm} | {end['budget']:,} | {end['seed']} | {FITS[key]} | {end[key]:.4g} | {why} "
                             "| | | | |")
    return lines + [""]


def early_tables(runs: dict) -> list[str]:
    """Residual eRank and the projections' s_max / s_min at the early steps and the end of each arm's and seed's
    longest run; eRank per layer at step 0, at its lowest early point and at that run's end, mean over seeds."""
    longest = {}
    for (arm, budget, seed), pts in sorted(runs.items(), key=lambda x: (x[0][0] != "red", x[0])):
        longest[arm, seed] = pts  # in budget order: the largest budget of (arm, seed) stays
    if not longest:
        return []
    steps = sorted({p["step"] for pts in longest.values() for p in pts if p["step"] < pts[-1]["step"]})
    lines = []
    for key, what, extreme in (("erank_sq", "mean residual eRank (held-out problems)", "lowest"),
                               ("spectrum_ratio", "s_max / s_min of the projections (median over them)", "highest")):
        lines += [f"## Early steps: {what}", "",
                  *table_head(["arm", "seed", "budget", *[f"step {s}" for s in steps], "end", f"{extreme} (step)"])]
        for (arm, seed), pts in longest.items():
            at = {p["step"]: p[key] for p in pts}
            early = {s: v for s, v in at.items() if 0 < s < pts[-1]["step"]} or {pts[0]["step"]: pts[0][key]}
            low = (min if extreme == "lowest" else max)(early, key=early.get)
            lines.append(f"| {arm} | {seed} | {pts[-1]['budget']:,} | " + " | ".join(
                f"{at[s]:.2f}" if s in at else "" for s in steps) + f" | {pts[-1][key]:.2f} | {early[low]:.2f} "
                f"({low}) |")
        lines += ["", f"Each arm's and seed's run of the largest budget; {extreme}: over its steps between 0 and its "
                  "end.", ""]
    layers = sorted(int(k[len("erank_l"):]) for k in next(iter(longest.values()))[0] if k.startswith("erank_l"))
    lines += ["## Early steps: eRank per layer, mean over seeds", "",
              *table_head(["arm", "layer", "step 0", "lowest early (steps)", "end"])]
    for arm in dict.fromkeys(arm for arm, _ in longest):
        seeds = [pts for (a, _), pts in longest.items() if a == arm]
        for layer in layers:
            key = f"erank_l{layer}"
            lows = [min((p for p in pts if 0 < p["step"] < pts[-1]["step"]), key=lambda p: p[key], default=pts[0])
                    for pts in seeds]
            lines.append(f"| {arm} | {layer} | {np.mean([pts[0][key] for pts in seeds]):.2f} | "
                         f"{np.mean([p[key] for p in lows]):.2f} ({', '.join(str(p['step']) for p in lows)}) | "
                         f"{np.mean([pts[-1][key] for pts in seeds]):.2f} |")
    return lines + [""]


def under_way(runs: dict) -> list[str]:
    """The runs that have not reached their budget, at their latest point."""
    open_runs = [(run, pts[-1]["step"]) for run, pts in sorted(runs.items()) if pts[-1]["step"] < run[1]]
    if not open_runs:
        return []
    return ["## Runs under way", "", *table_head(["arm", "budget", "seed", "latest step"]),
            *[f"| {arm} | {budget:,} | {seed} | {step} |" for (arm, budget, seed), step in open_runs], ""]


def plot(out: str, ends: dict, res: Resamples, kinds: dict):
    """ladder_fit.png: strict accuracy on the hardest problems against each fit, annealed ends only: one marker per
    seed, the mean over seeds per budget with its bootstrap band (RED: a line through its ladder)."""
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
    if plt is None or not ends or res is None:
        return
    kind = kinds["strict"]
    fig, axes = plt.subplots(1, len(FITS), figsize=(5 * len(FITS), 4))
    for i, (arm, seeds) in enumerate(ends.items()):
        color = f"C{i}"
        budgets = sorted({p["budget"] for pts in seeds.values() for p in pts})
        rungs = [{s: p for s, pts in seeds.items() for p in pts if p["budget"] == b} for b in budgets]
        bands = [res.mean(r, kind) for r in rungs]
        for ax, key in zip(axes, FITS):
            x = [np.mean([p[key] for p in r.values()]) for r in rungs]
            ax.scatter([p[key] for pts in seeds.values() for p in pts],
                       [accuracy(p, kind) for pts in seeds.values() for p in pts], s=8, color=color, alpha=0.35)
            if arm == "red":
                ax.plot(x, [b[0] for b in bands], "-o", ms=3, color=color, label="red (its ladder)")
                ax.fill_between(x, [b[1] for b in bands], [b[2] for b in bands], color=color, alpha=0.2)
            else:
                ax.errorbar(x, [b[0] for b in bands], yerr=[[b[0] - b[1] for b in bands], [b[2] - b[0] for b in bands]],
                            fmt="s", ms=4, color=color, capsize=3, label=arm)
            for xb, band, budget in zip(x, bands, budgets):
                ax.annotate(f"{budget:,}", (xb, band[0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set(xscale="log", xlabel=f"{FITS[key]} (held out)", ylim=(-0.02, 1),
                   ylabel=f"accuracy, {kind[2]}")
    plain = plt.FuncFormatter(lambda v, _: f"{v:.3g}")  # 22, not 2.2 x 10^1
    for ax in axes:  # minor ticks labelled only on an axis within one decade: across more, they run together
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if ax.get_xlim()[1] / ax.get_xlim()[0] < 10 else plt.NullFormatter())
    fig.suptitle("annealed ends only: each budget's mean over seeds with its 95 % bootstrap band (problems and seeds)")
    save(fig, os.path.join(out, "ladder_fit.png"), axes[0])


def report(out: str):
    """ladder.md and ladder_fit.png of the ladder record in `out`, from its files alone."""
    args, teacher, runs = load(out)
    kinds, ends = accuracies(args.steps_list), ladders(runs)
    n = problem_counts(ends)
    res = Resamples(n) if n else None
    lines = [f"# Equal fit between finished students: {os.path.basename(os.path.normpath(args.teacher))} -> width "
             f"{args.width}", "",
             f"Every run ({len(runs)} so far) is distill.py to its own annealed end at its arm's rate ("
             + ", ".join(f"{arm} {lr:g}" for arm, lr in args.rates.items()) + f"), {args.batch_size} x {args.seq_len} "
             f"tokens per step, measured at step 0, at steps {', '.join(map(str, args.early))} below its budget and "
             f"at its end (accuracy on {args.eval_per_step} held-out problems per step count there); teacher sha256 "
             f"{args.teacher_sha256[:16]}...; trained on {args.trained_on}.", ""]
    if res:
        lines += decision(ends, res, kinds) + ends_table(args, teacher, ends, kinds) + leads_table(ends, res, kinds)
        lines += readings_table(ends, kinds)
    lines += early_tables(runs) + under_way(runs)
    with open(os.path.join(out, "ladder.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, ends, res, kinds)
