"""How far an annealed end reads ahead of a mid-schedule point at equal fit: the bias in comparing RED mid-schedule
with another arm's end.

The equal-fit comparison (experiments/plateau_report.py) reads RED's accuracy at another arm's end-of-run fit off
the line between two of RED's measured points. Those points sit early in RED's schedule (learning rate near its
peak), while the other arm's end has its learning rate decayed to 0. If a decayed end reasons better than a
mid-schedule point that fits as well, the comparison favours the other arm by that much. The records measure it
directly: the same arm and seed trained to two budgets on the same teacher. The shorter run's end (annealed) is
compared with the longer run's accuracy interpolated to the same fit (mid-schedule); the difference, in points of
4-6-step accuracy, is the bias of that arm, at general-text fit and at solution fit.

Builds on experiments/plateau_report.py (the records' rows, the interpolation, the hard-problem accuracy) and cli.py.
Run as: python experiments/schedule_bias.py docs/records/teacher-c-1500-steps docs/records/teacher-c-3000-steps \
            docs/records/teacher-c-6000-steps
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from experiments.plateau_report import curves, hard_accuracy, interpolated_accuracy  # noqa: E402

FITS = {"general_ppl": "general-text fit", "solution_ppl": "solution fit"}


def budget_pairs(records: list[argparse.Namespace]) -> list[tuple[str, int, list[dict], list[dict]]]:
    """(arm, seed, short run's points, long run's points) for every arm and seed that two records share; records
    sorted by their step budget, every shorter one against every longer one."""
    runs = [(r.steps, curves(r)) for r in sorted(records, key=lambda r: r.steps)]
    pairs = []
    for i, (short_steps, short) in enumerate(runs):
        for long_steps, long in runs[i + 1:]:
            if long_steps == short_steps:
                continue
            for arm, seeds in short.items():
                for seed, points in seeds.items():
                    if seed in long.get(arm, {}):
                        pairs.append((arm, seed, points, long[arm][seed]))
    return pairs


def schedule_bias(records: list[argparse.Namespace], key: str) -> dict[str, list[float]]:
    """arm -> [annealed end's 4-6-step accuracy minus the longer run's, interpolated to that end's `key` fit],
    one entry per pair whose longer run brackets the fit (interpolated_accuracy's rule)."""
    args = records[0]
    bias = {}
    for arm, _seed, short, long in budget_pairs(records):
        end = short[-1]
        mid = interpolated_accuracy(long, key, end[key], args)
        if mid is not None:
            bias.setdefault(arm, []).append(hard_accuracy(end, args) - mid)
    return bias


def read_record(path: str) -> argparse.Namespace:
    """A record's settings (config.json) with `out` pointing at it, as plateau_report's functions take them."""
    saved = cli.read_json(os.path.join(path, "config.json"), "experiment config")
    if not os.path.exists(os.path.join(path, "points.csv")):
        cli.fail(f"{path}: no points.csv - pass records written by experiments/plateau.py")
    return argparse.Namespace(**saved, out=path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", nargs="+", help="two or more plateau records of one teacher, at different budgets")
    records = [read_record(p) for p in cli.parse_args(parser, argv).records]
    if len({r.teacher_sha256 for r in records if hasattr(r, "teacher_sha256")}) > 1:
        cli.fail("the records were made with different teachers - pass records of one teacher")
    print("| fit | arm | pairs | annealed end minus mid-schedule, 4-6-step accuracy (points, mean ± sd) | ahead / level / behind |")
    print("|---|---|---|---|---|")
    for key, fit in FITS.items():
        for arm, diffs in schedule_bias(records, key).items():
            d = 100 * np.array(diffs)
            sd = f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""
            counts = f"{(d > 0.5).sum()} / {(abs(d) <= 0.5).sum()} / {(d < -0.5).sum()}"
            print(f"| {fit} | {arm} | {len(d)} | {d.mean():+.1f}{sd} | {counts} |")


if __name__ == "__main__":
    main()
