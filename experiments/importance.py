"""Which channels RED's importance score keeps, against Minitron's, and how stable the choice is.

For one teacher, width and text source (METHOD §3.4): the `red` score (mean |h| per sequence over the embedding
output and every block output, L2 over sequences, mean over layers) and the `minitron` score (the same
aggregation over RMSNorm outputs, summed over sites), with position 0 kept (the default) and left out. Reported:
  - the overlap |S ∩ S'| / W of the selected channel sets: red vs minitron, red with and without position 0,
    red on two disjoint calibration sets, and red from 3 sequences only against 16 (the RED paper is described
    as reporting > 78 % overlap across calibration sets and with 3 samples);
  - the step-0 student of each selection, measured by erank.measure_model on held-out windows the calibration
    never saw: perplexity and mean residual eRank (Diff-eRank), beside the teacher's.

Builds on init_select.py (channel_importance, select_channels, init_projections), erank.py, data.py, student.py.
Run as: python experiments/importance.py [--teacher DIR] [--width W] [--data pydoc] [--seq-len 256] [--n-calib 16]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import load_windows  # noqa: E402
from erank import measure_model  # noqa: E402
from init_select import channel_importance, init_projections, select_channels  # noqa: E402
from load_weights import load_model  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from student import Student, default_width  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|S_a ∩ S_b| / W for two selections of equal size."""
    return len(set(a.tolist()) & set(b.tolist())) / len(a)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher HF directory (default: the example teacher)")
    parser.add_argument("--width", type=int, help="student width (default: half the teacher's)")
    parser.add_argument("--data", default="pydoc", help="a data.py source for calibration and held-out text")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-calib", type=int, default=16, help="calibration windows per set")
    parser.add_argument("--held-out", type=int, default=8, help="held-out windows for the step-0 measurement")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher_dir = args.teacher or build_example_teacher()
    teacher, tok = load_model(teacher_dir), load_tokenizer(teacher_dir)
    W = args.width or default_width(teacher.args)
    windows = load_windows(args.data, tok, args.seq_len)
    n = args.n_calib
    if len(windows) < 2 * n + args.held_out:
        sys.exit(f"error: {args.data} holds {len(windows)} windows of {args.seq_len} tokens - need "
                 f"{2 * n + args.held_out}; lower --seq-len or --n-calib")
    calib_a, calib_b, held = windows[:n], windows[n:2 * n], windows[-args.held_out:]
    batches = lambda w: w.split(args.batch_size)
    score = lambda method, calib, skip=False: channel_importance(teacher, batches(calib), method=method,
                                                                 skip_first=skip)
    scores = {"red": score("red", calib_a), "red, position 0 left out": score("red", calib_a, True),
              "red, other calibration set": score("red", calib_b), "red, 3 sequences": score("red", calib_a[:3]),
              "minitron": score("minitron", calib_a), "minitron, position 0 left out": score("minitron", calib_a, True)}
    S = {name: select_channels(s, W) for name, s in scores.items()}
    name = os.path.basename(os.path.normpath(teacher_dir))
    print(f"{name} (D {teacher.args.dim}) -> width {W}; {n} calibration windows of {args.seq_len} tokens of "
          f"{args.data} per set; step-0 students measured on {args.held_out} other windows\n")
    print("| selection | overlap with red | step-0 perplexity | step-0 mean eRank (sq) |\n|---|---|---|---|")
    teacher_m = measure_model(teacher, held)
    print(f"| teacher (width {teacher.args.dim}) | | {teacher_m['ppl']:.2f} | {teacher_m['erank_sq']:.1f} |")
    for label, channels in S.items():
        projections, norms, _ = init_projections("select", teacher, W, scores=scores[label])
        m = measure_model(Student(teacher, W, projections, norms).merge(), held)
        print(f"| {label} | {overlap(channels, S['red']):.1%} | {m['ppl']:.1f} | {m['erank_sq']:.1f} |")
    projections, norms, _ = init_projections("gaussian", teacher, W)
    m = measure_model(Student(teacher, W, projections, norms).merge(), held)
    print(f"| gaussian (LRC), for scale | | {m['ppl']:.1f} | {m['erank_sq']:.1f} |")


if __name__ == "__main__":
    main()
