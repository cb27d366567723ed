"""The paper's experiment in miniature: RED (channel-selection init) vs LRC (Gaussian init) at equal budget.

One teacher, one student width, one data file and one token budget for every run:
    red            --preset red  (select init, KL temperature 1)          RED
    lrc            --preset lrc  (gaussian init, KL temperature 40)       Low-Rank Clone
    red+gaussian   --preset red --init gaussian    \
    red+orthogonal --preset red --init orthogonal   }  the init ablation under the red loss
    red+pca        --preset red --init pca         /   (red itself is the "select" row)
Each run is distill.py in a subprocess (exactly what a user runs), once with --steps 0 (the step-0 student)
and once with --steps N. Then the teacher and every student are measured on the same held-out data:
per-layer residual eRank (erank.measure_model; position 0 left out), perplexity on held-out problems (whole
text, and the worked solutions given their questions), and
greedy chain-of-thought accuracy on synthetic problems of 1, 2 and 4 steps (eval_reasoning.evaluate).
Written to --out: results.csv, erank_layers.csv, results.md (the tables) and, with matplotlib installed,
erank.png (eRank per layer) and loss.png (training loss curves).

The claims under test (METHOD.md): random projections collapse the student's eRank and its multi-step
reasoning; selection keeps both. The defaults are sized for the example teacher on 2 CPU cores: 60 steps of
4 x 128 tokens per run at distill.py's lr, about 40 minutes in all. The example teacher barely reasons, so
bench/reasoning_teacher.py makes one that does; the README gives the commands and results for both.

Builds on distill.py, erank.py, eval_reasoning.py, load_weights.py, tokenizer.py. Run as:
    python bench/red_vs_lrc.py [--teacher DIR] [--width W] [--steps N] [--out DIR]
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import eval_reasoning as er  # noqa: E402
from data import qa_text  # noqa: E402
from distill import example_teacher  # noqa: E402
from erank import measure_model, token_sequences  # noqa: E402
from load_weights import load_model, read_config  # noqa: E402
from reasoning_teacher import encode_problem, solution_batch, solution_loss  # noqa: E402
from student import default_width  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

RUNS = {  # name -> extra distill.py flags
    "red": ["--preset", "red"],
    "lrc": ["--preset", "lrc"],
    "red+gaussian": ["--preset", "red", "--init", "gaussian"],
    "red+orthogonal": ["--preset", "red", "--init", "orthogonal"],
    "red+pca": ["--preset", "red", "--init", "pca"],
}


@dataclass
class HeldOut:
    """The held-out measurement data, tokenised once and shared by every model."""
    sequences: list[list[int]]               # eRank input: the problem texts packed into <= seq_len sequences
    ids: list[int]                           # the problem texts, eos after each: whole-text perplexity
    solutions: list[tuple[list[int], int]]   # (prompt + solution + eos ids, prompt length): solution perplexity
    eval_sets: dict[int, list[dict]]         # step count -> accuracy problems


def held_out(tok, args) -> HeldOut:
    """Problems from seeds the corpus never uses: 40 per step count for eRank and perplexity, and
    --eval-per-step per step count for accuracy."""
    problems = [p for k in args.steps_list for p in er.make_synthetic(40, k, seed=50_000 + k)]
    texts = [qa_text(p["question"], p["answer"]) for p in problems]  # as data.py makes documents of JSONL
    return HeldOut(sequences=token_sequences(texts, tok, seq_len=args.seq_len, max_tokens=args.erank_tokens),
                   ids=[i for text in texts for i in tok.encode(text) + [tok.eos_id]],
                   solutions=[encode_problem(tok, p) for p in problems],
                   eval_sets={k: er.make_synthetic(args.eval_per_step, k, seed=60_000 + k) for k in args.steps_list})


def write_corpus(path: str, n_per_step: int, steps: list[int], seed: int):
    """A JSONL training file of synthetic worked problems (every step count of --steps-list, mixed)."""
    rows = [p for k in steps for p in er.make_synthetic(n_per_step, k, seed=seed + 101 * k)]
    er.write_jsonl(path, rows)


def run_distill(args, name: str, flags: list[str], steps: int, out: str) -> float:
    """Run distill.py; returns its wall time in seconds. Output goes to <out>.log."""
    cmd = [sys.executable, os.path.join(ROOT, "distill.py"), "--teacher", args.teacher, "--width", str(args.width),
           "--data", args.data, "--steps", str(steps), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--eval-every", str(max(1, steps // 4)),
           "--ckpt-every", str(max(1, steps)), "--seed", str(args.seed), "--out", out,
           "--eval-problems", "0", *flags]  # accuracy is measured below, on every model alike
    start = time.time()
    with open(out + ".log", "w") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"error: {name} failed (exit {result.returncode}) - see {out}.log")
    return time.time() - start


@torch.no_grad()
def solution_perplexity(model, solutions: list[tuple[list[int], int]], pad_id: int, batch_size: int = 16) -> float:
    """exp(mean NLL) of the worked solutions (and eos) given their questions, prompted as eval_reasoning does.

    The reasoning teacher is trained on solution tokens only, so perplexity over whole problem texts would
    mostly score questions it was never asked to predict."""
    nll, count = 0.0, 0
    for i in range(0, len(solutions), batch_size):
        tokens, mask = solution_batch(solutions[i:i + batch_size], pad_id)  # (B, L), (B, L-1)
        n = int(mask.sum())
        nll += solution_loss(model, tokens, mask).item() * n  # the batch's mean NLL -> its sum
        count += n
    return math.exp(nll / count)


def measure(path: str, tok, held: HeldOut, args) -> tuple[dict, list[dict]]:
    """(summary row, per-layer eRank rows) of the checkpoint at `path`."""
    model = load_model(path)
    layers = measure_model(model, held.sequences)
    row = {"val_ppl": er.perplexity(model, held.ids, window=args.seq_len),
           "solution_ppl": solution_perplexity(model, held.solutions, tok.eos_id),
           "erank_sq": sum(r["erank_sq"] for r in layers) / len(layers),
           "erank_rv": sum(r["erank_rv"] for r in layers) / len(layers)}
    for k, items in held.eval_sets.items():
        res = er.evaluate(model, tok, items, chat=args.chat, max_new_tokens=args.max_new_tokens + 24 * k,
                          batch_size=args.eval_batch)
        row[f"acc_{k}"], row[f"acc_{k}_lo"], row[f"acc_{k}_hi"] = res["accuracy"], res["lo"], res["hi"]
    return row, layers


def loss_curve(out: str) -> list[tuple[int, float]]:
    """(step, total loss) from a run's metrics.jsonl."""
    with open(os.path.join(out + ".run", "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def write_tables(args, rows: list[dict], layer_rows: list[dict]):
    """results.csv, erank_layers.csv and results.md under --out."""
    for name, table in (("results.csv", rows), ("erank_layers.csv", layer_rows)):
        with open(os.path.join(args.out, name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    acc_cols = [f"acc_{k}" for k in args.steps_list]
    head = ["model", "stage", "val ppl", "solution ppl", "eRank sq", "eRank rv",
            *[f"acc {k}-step" for k in args.steps_list],
            "train min"]
    teacher = os.path.basename(os.path.normpath(args.teacher))
    lines = [f"{teacher} -> width {args.width}; {args.steps} steps x {args.batch_size} x {args.seq_len} tokens "
             f"per run, lr {args.lr:g}; accuracy on {args.eval_per_step} problems per step count", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        accs = [f"{r[c]:.2f} [{r[c + '_lo']:.2f}, {r[c + '_hi']:.2f}]" for c in acc_cols]
        minutes = f"{r['train_s'] / 60:.1f}" if r["train_s"] else ""
        lines.append(f"| {r['model']} | {r['stage']} | {r['val_ppl']:.2f} | {r['solution_ppl']:.3f} | "
                     f"{r['erank_sq']:.1f} | {r['erank_rv']:.1f} | " + " | ".join(accs) + f" | {minutes} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(args, rows: list[dict], layer_rows: list[dict], curves: dict):
    """erank.png (eRank sq per layer, step 0 dashed, end solid), accuracy.png (accuracy vs problem steps) and
    loss.png, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNGs (pip install matplotlib)")
        return
    models = list(dict.fromkeys(r["model"] for r in rows))
    color = {m: "black" if m == "teacher" else f"C{i}" for i, m in enumerate(models)}  # one colour per model
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in dict.fromkeys((r["model"], r["stage"]) for r in layer_rows):
        pts = [(r["layer"], r["erank_sq"]) for r in layer_rows if (r["model"], r["stage"]) == key]
        ax.plot(*zip(*pts), "--" if key[1] == "step 0" else "-", color=color[key[0]],
                label=" ".join(key) if key[0] != "teacher" else "teacher")
    ax.set(xlabel="layer", ylabel="residual eRank (Diff-eRank)", title=f"width {args.width} students")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "erank.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["stage"] in ("", "end"):  # the teacher and each trained student
            ax.plot(args.steps_list, [r[f"acc_{k}"] for k in args.steps_list], "-o", color=color[r["model"]],
                    label=r["model"])
    ax.set(xlabel="reasoning steps per problem", ylabel="greedy accuracy", ylim=(-0.02, 1.02),
           title=f"after {args.steps} distillation steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "accuracy.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), color=color[name], label=name)
    ax.set(xlabel="step", ylabel="total KD loss", yscale="log", title="training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=120)
    print(f"plots: {args.out}/erank.png, {args.out}/accuracy.png, {args.out}/loss.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher HF directory (default: the example teacher, SmolLM2-135M)")
    parser.add_argument("--width", type=int, help="student width (default: half the teacher's, heads-aligned)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=60, help="distillation steps per run (equal budgets)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="distill.py's default; a small teacher trained from scratch takes 1e-3")
    parser.add_argument("--data", help="distill.py --data (default: a synthetic worked-problem corpus made here)")
    parser.add_argument("--corpus-per-step", type=int, default=1000, help="corpus problems per step count")
    parser.add_argument("--steps-list", type=int, nargs="+", default=[1, 2, 4], help="problem step counts")
    parser.add_argument("--eval-per-step", type=int, default=30, help="accuracy problems per step count")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="+ 24 per problem step")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--chat", action="store_true", help="evaluate through the chat format (instruct teachers)")
    parser.add_argument("--erank-tokens", type=int, default=8192)
    parser.add_argument("--out", default="out/red_vs_lrc")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.teacher = args.teacher or example_teacher()
    os.makedirs(args.out, exist_ok=True)
    tok = load_tokenizer(args.teacher)
    teacher_args = read_config(args.teacher)[1]
    args.width = args.width or default_width(teacher_args)
    if args.data is None:
        args.data = os.path.join(args.out, "train.jsonl")
        write_corpus(args.data, args.corpus_per_step, args.steps_list, args.seed)
    held = held_out(tok, args)
    print(f"teacher {args.teacher} (D {teacher_args.dim}) -> width {args.width}; {args.steps} steps x "
          f"{args.batch_size} x {args.seq_len} tokens per run; runs: {', '.join(args.runs)}", flush=True)

    rows, layer_rows, curves = [], [], {}
    start = time.time()

    def record(model_name, stage, path, train_s=0.0):
        row, layers = measure(path, tok, held, args)
        rows.append({"model": model_name, "stage": stage, **row, "train_s": train_s})
        layer_rows.extend({"model": model_name, "stage": stage, **r} for r in layers)
        print(f"{model_name:15s} {stage:7s} ppl {row['val_ppl']:9.2f} sol ppl {row['solution_ppl']:8.3f} "
              f"eRank sq {row['erank_sq']:6.1f} rv "
              f"{row['erank_rv']:6.1f} acc " + " ".join(f"{row[f'acc_{k}']:.2f}" for k in args.steps_list) +
              f"  ({(time.time() - start) / 60:.1f} min)", flush=True)

    record("teacher", "", args.teacher)
    for name in args.runs:
        step0, final = os.path.join(args.out, f"{name}-step0"), os.path.join(args.out, name)
        run_distill(args, name, RUNS[name], 0, step0)
        record(name, "step 0", step0)
        seconds = run_distill(args, name, RUNS[name], args.steps, final)
        curves[name] = loss_curve(final)
        record(name, "end", final, seconds)
    write_tables(args, rows, layer_rows)
    plot(args, rows, layer_rows, curves)
    print(f"total {(time.time() - start) / 60:.1f} min; tables in {args.out}/results.md")


if __name__ == "__main__":
    main()
