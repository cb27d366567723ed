"""The paper's experiment in miniature: RED (channel-selection init) vs LRC (Gaussian init) at equal budget.

One teacher, one student width, one data file and one token budget for every arm (RUNS); `--arms` picks a set:
    paper    red (select, T = 1), lrc (gaussian, T = 40), and gaussian / orthogonal / pca inits under the red loss
    table6   RED's Table 6: {select, gaussian} x {T = 1, T = 40}: are both the init and T = 1 needed?
    table7   RED's Table 7 under the red loss: gaussian, gaussian + orthogonal regularisation
             (lambda ||P^T P - I||_F^2, --orth-reg), random orthogonal, selection
Every distinct init is made once, by init_select.py, as an init file (lrc and red+gaussian share theirs); each
arm is then a real `distill.py --init FILE` run. The teacher, every step-0 student (once per init file) and
every trained student are measured the same way on the same held-out data: perplexity and per-layer residual
eRank through erank.measure_model (the problem texts packed by data.py, as training packs them), perplexity of
the worked solutions given their questions (eval_reasoning.solution_perplexity), and greedy chain-of-thought
accuracy on synthetic problems of each step count (eval_reasoning.evaluate).
Written to --out: results.csv, erank_layers.csv, results.md (the tables) and, with matplotlib installed,
erank.png (eRank per layer), accuracy.png and loss.png (training loss curves).

The claims under test (docs/METHOD.md §3.1, §3.8): random projections collapse the student's eRank and its
multi-step reasoning; selection keeps both. The defaults are sized for the example teacher on 2 CPU cores;
experiments/reasoning_teacher.py makes a teacher that reasons; the README gives the commands and results for both.

Builds on init_select.py, distill.py (both run as a user runs them), erank.py, eval_reasoning.py, data.py,
problems.py, load_weights.py and tokenizer.py. Run as:
    python experiments/red_vs_lrc.py [--teacher DIR] [--width W] [--steps N] [--out DIR]
"""
import argparse
import csv
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments.figures import pyplot, save  # noqa: E402
import checkpoint as ckpt  # noqa: E402
import cli  # noqa: E402
import eval_reasoning as er  # noqa: E402
from data import cut_windows, tokenize_documents  # noqa: E402
from erank import measure_model  # noqa: E402
from init_select import read_init  # noqa: E402
from load_weights import fingerprint, load_model, read_config  # noqa: E402
from problems import make_synthetic, qa_text  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from student import default_width  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

RUNS = {  # arm -> (init kind, extra distill.py flags); every arm sees the same data, budget and evaluation
    "red": ("select", ["--preset", "red"]),                                # selection, T = 1: RED
    "lrc": ("gaussian", ["--preset", "lrc"]),                              # Gaussian, T = 40: LRC
    "red+gaussian": ("gaussian", ["--preset", "red"]),                     # Gaussian under the red loss (T = 1)
    "red+orthogonal": ("orthogonal", ["--preset", "red"]),                 # random orthogonal, T = 1
    "red+pca": ("pca", ["--preset", "red"]),                               # teacher-aligned rotation, T = 1
    "select@T40": ("select", ["--preset", "red", "--kl-temperature", "40"]),  # selection under LRC's T
    "red+orthreg": ("gaussian", ["--preset", "red", "--orth-reg", "ORTH_REG"]),  # Gaussian + lambda ||P^T P - I||^2
}
ARM_SETS = {  # --arms: which question a run answers
    "paper": ["red", "lrc", "red+gaussian", "red+orthogonal", "red+pca"],   # RED vs LRC, and the init ablation
    "table6": ["red", "select@T40", "red+gaussian", "lrc"],                  # init x temperature (RED's Table 6)
    "table7": ["red+gaussian", "red+orthreg", "red+orthogonal", "red"],     # the init ablation of RED's Table 7
}


def held_out(tok, args) -> tuple[torch.Tensor, list[dict], dict[int, list[dict]]]:
    """(windows for perplexity and eRank, problems for solution perplexity, step count -> accuracy problems):
    seeds the training corpus never uses, 40 problems per step count for the first two."""
    problems = [p for k in args.steps_list for p in make_synthetic(40, k, seed=50_000 + k)]
    stream = tokenize_documents([qa_text(p["question"], p["answer"]) for p in problems], tok)
    windows = torch.from_numpy(cut_windows(stream, args.seq_len).astype("int64"))[:args.windows]
    return windows, problems, accuracy_problems(args.eval_per_step, args.steps_list)


def accuracy_problems(n: int, steps_list: list[int]) -> dict[int, list[dict]]:
    """step count -> n held-out problems for accuracy (seeds neither the training corpus nor held_out's
    perplexity problems use)."""
    return {k: make_synthetic(n, k, seed=60_000 + k) for k in steps_list}


def write_corpus(path: str, n_per_step: int, steps: list[int], seed: int):
    """A JSONL training file of synthetic worked problems (every step count of --steps-list, mixed)."""
    er.write_jsonl(path, [p for k in steps for p in make_synthetic(n_per_step, k, seed=seed + 101 * k)])


def run_tool(args, script: str, flags: list, log: str, *, append: bool = False, tolerate: str = "") -> float | None:
    """Run one of red's CLIs as a user runs it; returns its wall time in seconds, or None when it failed with
    `tolerate` in its output (e.g. a diverged loss). Output goes to (or, append, is added to) `log`."""
    start, size = time.time(), os.path.getsize(log) if append and os.path.exists(log) else 0
    with open(log, "a" if append else "w") as f:
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, flags)], stdout=f,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        with open(log) as f:
            if tolerate and tolerate in f.read()[size:]:
                return None
        sys.exit(f"error: {script} failed (exit {result.returncode}) - see {log}")
    return time.time() - start


def make_init(args, kind: str, seed: int | None = None) -> str:
    """init_select.py --init KIND on the training data: the init file every arm with that init (and seed)
    starts from. With a seed given, an init file already made for it is reused."""
    name = kind if seed is None else f"{kind}-s{seed}"
    path = os.path.join(args.out, "inits", f"{name}.safetensors")
    if seed is not None and os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run_tool(args, "init_select.py", ["--teacher", args.teacher, "--width", args.width, "--calib", args.data,
                                      "--init", kind, "--seq-len", args.seq_len, "--n-calib", 16, "--n-eval", 1,
                                      "--seed", args.seed if seed is None else seed, "--out", path,
                                      "--device", "cpu"], path + ".log")
    return path


def train(args, name: str, init_file: str, flags: list[str]) -> tuple[str, float]:
    """distill.py from the init file; returns (student directory, wall seconds)."""
    out = os.path.join(args.out, name)
    seconds = run_tool(args, "distill.py", [
        "--teacher", args.teacher, "--width", args.width, "--data", args.data, "--init", init_file,
        "--steps", args.steps, "--seq-len", args.seq_len, "--batch-size", args.batch_size, "--lr", args.lr,
        "--eval-every", max(1, args.steps // 4), "--ckpt-every", max(1, args.steps), "--seed", args.seed,
        "--eval-problems", 0, "--out", out, "--overwrite", *flags], out + ".log")  # accuracy: measured below
    return out, seconds


def measure(model, tok, held, args) -> tuple[dict, list[dict]]:
    """(summary row, per-layer eRank rows) of one model on the held-out data."""
    windows, problems, eval_sets = held
    m = measure_model(model, windows)
    row = {"val_ppl": m["ppl"], "solution_ppl": er.solution_perplexity(model, tok, problems),
           "erank_sq": m["erank_sq"], "erank_rv": m["erank_rv"]}
    for k, res in accuracy_by_steps(model, tok, eval_sets, args).items():
        row[f"acc_{k}"], row[f"acc_{k}_lo"], row[f"acc_{k}_hi"] = res["accuracy"], res["lo"], res["hi"]
    return row, [{k: r[k] for k in ("layer", "erank_sq", "erank_rv")} for r in m["layers"]]


def accuracy_by_steps(model, tok, eval_sets: dict[int, list[dict]], args) -> dict[int, dict]:
    """{step count: eval_reasoning.evaluate result}, greedy, with the experiment's prompts and token budget."""
    return er.evaluate_by_steps(model, tok, eval_sets, chat=args.chat, max_new_tokens=args.max_new_tokens,
                                batch_size=args.eval_batch)


def write_tables(args, rows: list[dict], layer_rows: list[dict]):
    """results.csv, erank_layers.csv and results.md under --out."""
    for name, table in (("results.csv", rows), ("erank_layers.csv", layer_rows)):
        with open(os.path.join(args.out, name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    acc_cols = [f"acc_{k}" for k in args.steps_list]
    head = ["model", "stage", "val ppl", "solution ppl", "eRank sq", "eRank rv",
            *[f"acc {k}-step" for k in args.steps_list], "train min"]
    teacher = os.path.basename(os.path.normpath(args.teacher))
    lines = [f"{teacher} -> width {args.width}; {args.steps} steps x {args.batch_size} x {args.seq_len} tokens "
             f"per run, lr {args.lr:g}; accuracy on {args.eval_per_step} problems per step count; arms "
             + ", ".join(f"{n} = {RUNS[n][0]} init {' '.join(RUNS[n][1])}".replace("ORTH_REG", f"{args.orth_reg:g}")
                         for n in args.runs), "",
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
    plt = pyplot()
    if plt is None:
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
    save(fig, os.path.join(args.out, "erank.png"), ax)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["stage"] in ("", "end"):  # the teacher and each trained student
            ax.plot(args.steps_list, [r[f"acc_{k}"] for k in args.steps_list], "-o", color=color[r["model"]],
                    label=r["model"])
    ax.set(xlabel="reasoning steps per problem", ylabel="greedy accuracy", ylim=(-0.02, 1.02),
           title=f"after {args.steps} distillation steps")
    save(fig, os.path.join(args.out, "accuracy.png"), ax)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), color=color[name], label=name)
    ax.set(xlabel="step", ylabel="total KD loss", yscale="log", title="training loss")
    save(fig, os.path.join(args.out, "loss.png"), ax)
    print(f"plots: {args.out}/erank.png, {args.out}/accuracy.png, {args.out}/loss.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher HF directory (default: the example teacher, SmolLM2-135M)")
    parser.add_argument("--width", type=int, help="student width (default: half the teacher's, heads-aligned)")
    parser.add_argument("--arms", choices=list(ARM_SETS), default="paper", help="the arm set: paper (RED vs LRC "
                        "and the init ablation), table6 (init x temperature), table7 (Table 7's init ablation)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), help="these arms instead of an --arms set")
    parser.add_argument("--orth-reg", type=float, default=1e-3, help="lambda of the red+orthreg arm")
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
    parser.add_argument("--windows", type=int, default=64, help="held-out windows for perplexity and eRank")
    parser.add_argument("--out", default="out/red_vs_lrc")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.runs = args.runs or ARM_SETS[args.arms]
    torch.manual_seed(args.seed)
    args.teacher = args.teacher or build_example_teacher()
    with cli.user_errors():  # the experiment writes only under --out, never over the teacher or the data
        cli.check_outputs({"--teacher": args.teacher, "--data": args.data}, [cli.Output("--out", args.out, "dir")])
    os.makedirs(args.out, exist_ok=True)
    tok = load_tokenizer(args.teacher)
    args.width = args.width or default_width(read_config(args.teacher)[1])
    if args.data is None:
        args.data = os.path.join(args.out, "train.jsonl")
        write_corpus(args.data, args.corpus_per_step, args.steps_list, args.seed)
    held = held_out(tok, args)
    print(f"teacher {args.teacher} -> width {args.width}; {args.steps} steps x {args.batch_size} x {args.seq_len} "
          f"tokens per run; runs: {', '.join(args.runs)}; {len(held[0])} held-out windows", flush=True)

    rows, layer_rows, curves = [], [], {}
    start = time.time()

    def record(model_name, stage, model, train_s=0.0):
        row, layers = measure(model, tok, held, args)
        rows.append({"model": model_name, "stage": stage, **row, "train_s": train_s})
        layer_rows.extend({"model": model_name, "stage": stage, **r} for r in layers)
        print(f"{model_name:15s} {stage:7s} ppl {row['val_ppl']:9.2f} sol ppl {row['solution_ppl']:8.3f} "
              f"eRank sq {row['erank_sq']:6.1f} rv {row['erank_rv']:6.1f} acc "
              + " ".join(f"{row[f'acc_{k}']:.2f}" for k in args.steps_list)
              + f"  ({(time.time() - start) / 60:.1f} min)", flush=True)

    teacher = load_model(args.teacher)
    record("teacher", "", teacher)
    inits, step0 = {}, {}  # init kind -> init file, and its step-0 row (measured once)
    for name in args.runs:
        kind, flags = RUNS[name]
        flags = [str(args.orth_reg) if f == "ORTH_REG" else f for f in flags]
        if kind not in inits:
            inits[kind] = make_init(args, kind)
            student, _ = read_init(inits[kind], teacher, fingerprint(args.teacher))
            record(name, "step 0", student.merge())
            step0[kind] = rows[-1], layer_rows[-teacher.args.n_layers:]
        else:  # the same init file: the same step-0 student, already measured
            rows.append(dict(step0[kind][0], model=name))
            layer_rows.extend(dict(r, model=name) for r in step0[kind][1])
        out, seconds = train(args, name, inits[kind], flags)
        curves[name] = [(r["step"], r["loss"]) for r in ckpt.read_metrics(out + ".run") if "loss" in r]
        record(name, "end", load_model(out), seconds)
    write_tables(args, rows, layer_rows)
    plot(args, rows, layer_rows, curves)
    print(f"total {(time.time() - start) / 60:.1f} min; tables in {args.out}/results.md")


if __name__ == "__main__":
    main()
