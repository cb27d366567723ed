"""What the benchmark scripts share to draw their figures: matplotlib when it is installed, one way to save.

Builds on matplotlib (optional: a test/dev dependency; every script prints its numbers without it).
Run as: imported by experiments/plot_runs.py, proxy_theory.py, red_vs_lrc.py and plateau_report.py.
"""


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(fig, path: str, *legend_axes):
    """Legends on `legend_axes`, tight layout, written to `path` at 120 dpi."""
    for ax in legend_axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
