"""Several distill.py runs side by side, over training: residual eRank per layer and the spread of the
projections' singular values. RED's mechanism made visible (METHOD §3.8): a selection init starts with every
singular value at 1 and should stay even, while random inits drift apart "rich get richer" and lose eRank.

Reads each RUN_DIR/metrics.jsonl (the validation lines distill.py writes: `erank_layers`, and `spectrum` =
[largest, median, smallest singular value, eRank of the singular values] per projection) and writes one PNG:
  row 1: mean residual eRank over steps, one line per run; then residual eRank per layer, one panel per run
         (lighter = earlier validation);
  row 2: median over projections of largest / smallest singular value (log), and of the spectrum's eRank / W.
Also prints the numbers behind the curves as a table.

Builds on checkpoint.py (read_metrics); matplotlib for the picture.
Run as: python experiments/plot_runs.py RUN_DIR [RUN_DIR ...] [--names a b ...] [--out runs.png]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.figures import pyplot  # noqa: E402
from checkpoint import read_metrics  # noqa: E402


def validations(run_dir: str) -> list[dict]:
    """The validation lines of a run (those carrying per-layer eRank and the projections' spectra)."""
    return [r for r in read_metrics(run_dir) if "erank_layers" in r and "spectrum" in r]


def spread(record: dict) -> tuple[float, float]:
    """(median over projections of s_max / s_min, median over projections of eRank(s) / W) at one validation."""
    ratios = [s[0] / max(s[2], 1e-12) for s in record["spectrum"].values()]
    width = record["width"]
    return statistics.median(ratios), statistics.median(s[3] / width for s in record["spectrum"].values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="distill.py run directories (<out>.run)")
    parser.add_argument("--names", nargs="+", help="a label per run (default: the directory names)")
    parser.add_argument("--out", default="runs.png")
    args = parser.parse_args()
    names = args.names or [os.path.basename(os.path.normpath(r)).removesuffix(".run") for r in args.runs]
    series = {}
    for name, run in zip(names, args.runs):
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            width = json.load(f)["width"]
        series[name] = [dict(r, width=width) for r in validations(run)]
        if not series[name]:
            sys.exit(f"error: {run}: no validation lines with eRank and spectra - run distill.py with --eval-every")
    print(f"{'run':16s} {'step':>6s} {'mean eRank':>11s} {'s_max/s_min':>12s} {'eRank(s)/W':>11s}")
    for name, recs in series.items():
        for r in recs:
            ratio, even = spread(r)
            print(f"{name:16s} {r['step']:6d} {r['erank']:11.2f} {ratio:12.3f} {even:11.3f}")
    plt = pyplot()
    if plt is None:
        sys.exit("error: matplotlib is not installed - pip install matplotlib (the table above has the numbers)")
    n = len(series)
    fig, axes = plt.subplots(2, max(2, n + 1), figsize=(3.2 * max(2, n + 1), 6.4), squeeze=False)
    for i, (name, recs) in enumerate(series.items()):
        steps = [r["step"] for r in recs]
        axes[0][0].plot(steps, [r["erank"] for r in recs], "-o", color=f"C{i}", label=name, markersize=3)
        ax = axes[0][i + 1]
        for j, r in enumerate(recs):
            shade = 0.25 + 0.75 * j / max(1, len(recs) - 1)
            ax.plot(range(len(r["erank_layers"])), r["erank_layers"], color=f"C{i}", alpha=shade,
                    label=f"step {r['step']}" if j in (0, len(recs) - 1) else None)
        ax.set(title=name, xlabel="layer", ylabel="residual eRank")
        ax.legend(fontsize=6)
        ratios, evens = zip(*(spread(r) for r in recs))
        axes[1][0].plot(steps, ratios, "-o", color=f"C{i}", label=name, markersize=3)
        axes[1][1].plot(steps, evens, "-o", color=f"C{i}", label=name, markersize=3)
    axes[0][0].set(xlabel="step", ylabel="mean residual eRank (Diff-eRank)", title="eRank over training")
    axes[1][0].set(xlabel="step", ylabel="median s_max / s_min of P", yscale="log", title="singular-value spread")
    axes[1][1].set(xlabel="step", ylabel="median eRank(s) / W", title="evenness of each P's spectrum", ylim=(0, 1.05))
    for ax in (axes[0][0], axes[1][0], axes[1][1]):
        ax.legend(fontsize=7)
    for ax in axes[1][2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
