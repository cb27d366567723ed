"""Equal fit without the schedule's bias: a budget ladder of finished students, each measured at its annealed end
and at early steps.

The equal-fit readings of experiments/plateau.py compare another arm's annealed end with RED's accuracy read
between two of RED's mid-schedule points, learning rate near its peak (docs/equal-fit.md, "The schedule bias").
Here every student is finished: each arm is trained to each of --budgets, every (arm, budget, seed) a distill.py
run with its own schedule to its own annealed end, so that RED's ends bracket the other arms' ends in fit and
equal fit compares an annealed end with RED read between two annealed ends (docs/METHOD.md §4.5.1). A run is
measured at step 0, at each --early step below its budget (residual eRank per layer, the projections' s_max /
s_min and the fits: a transient dip is seen in every arm and seed) and at its end (the same, and greedy accuracy).
The fits: general-text perplexity; the answer's NLL (the tokens of the number after "####", given the question and
the worked solution before it, teacher-forced); the NLL of every step's result (the c of each "a op b = c"); and
solution perplexity as the plateau records have it. Every accuracy problem's outcome is kept in points.csv, one
character a problem ("1" right, "o" wrong by an overrun whose last real step had the right number, as
experiments/error_kinds.py classifies it, "0" any other wrong answer), so the report bootstraps over problems.
The record (config.json with the teacher's sha256, teacher.json, points.csv with each row's budget) is continued
with --resume and joined with --join exactly as plateau.py's: runs made side by side (a process, a thread and an
--out each) become one record; experiments/ladder_report.py writes ladder.md and ladder_fit.png from its files
alone (--report DIR).

Builds on experiments/plateau.py (arms, init files, runs, --resume, --join, the teacher check),
experiments/red_vs_lrc.py (held-out problems, accuracy), experiments/error_kinds.py (overruns),
experiments/ladder_report.py (the report), eval_reasoning.py, erank.py, student.py, init_select.py, problems.py.
Run as:
    python experiments/ladder.py --teacher out/reasoning-teacher --out out/ladder --arms red --seeds 0 \
        --budgets 300 450 600 --rates red=3e-3 [--resume] [--max-minutes 55]
    python experiments/ladder.py --report out/ladder
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint as ckpt  # noqa: E402
import cli  # noqa: E402
import eval_reasoning as er  # noqa: E402
from experiments.plateau import (OutOfTime, add_experiment_arguments, continue_run, distill_flags,  # noqa: E402
                                 open_experiment)
from experiments import red_vs_lrc as rvl  # noqa: E402
from experiments.error_kinds import overran  # noqa: E402
from experiments.ladder_report import report  # noqa: E402
from experiments.plateau_report import read_rows, run_key, run_name, write_rows  # noqa: E402
from data import load_windows  # noqa: E402
from erank import measure_model, spectrum_summary  # noqa: E402
from init_select import read_init  # noqa: E402
from load_weights import load_model  # noqa: E402
from problems import STEP_LINE  # noqa: E402
from student import Student  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

ARMS = ["red", "lrc", "select@T40"]
EARLY = [25, 50, 75, 100, 150, 300]  # where the Gaussian inits' eRank dips and recovers (docs/reasoning-collapse.md)
FIXED = ("teacher", "width", "batch_size", "seq_len", "rates", "text_weight", "corpus_per_step", "eval_per_step",
         "steps_list", "orth_reg", "early", "windows", "max_new_tokens")  # fixed on --resume and --join


# ---------------------------------------------------------------------------------------------------------
# What a point measures beyond plateau.py's: the numbers' NLL, each problem's outcome

def number_spans(answer: str) -> dict[str, list[tuple[int, int]]]:
    """Byte spans, in the solution as eval_reasoning.encode_problem writes it (" " + answer), of the number a
    worked solution is judged by ("answer_nll": the one after the last "####") and of every step's result
    ("result_nll": c of "Step i: ..., so a op b = c.")."""
    text = " " + answer
    at = lambda i: len(text[:i].encode())  # noqa: E731  (characters -> bytes)
    final = [m.span(1) for m in er.HASHES.finditer(text)][-1:]
    results = [m.span(5) for m in STEP_LINE.finditer(text)]
    return {name: [(at(a), at(b)) for a, b in spans] for name, spans in (("answer_nll", final),
                                                                         ("result_nll", results))}


def number_positions(tok, answer: str, ids: list[int], n_prompt: int) -> dict[str, list[int]]:
    """The positions in `ids` (prompt + solution + eos) of the tokens that carry each number of number_spans: every
    token whose bytes overlap the number's."""
    lengths = [len(tok.encoding.decode_single_token_bytes(t)) for t in ids[n_prompt:-1]]
    ends = np.cumsum(lengths)
    starts = ends - np.array(lengths)
    if sum(lengths) != len((" " + answer).encode()):
        raise ValueError("the solution's tokens do not spell its text - a tokenizer that drops bytes")
    return {name: [n_prompt + i for a, b in spans for i in range(len(lengths)) if starts[i] < b and ends[i] > a]
            for name, spans in number_spans(answer).items()}


@torch.no_grad()
def number_nll(model, tok, problems: list[dict], batch_size: int = 16) -> dict[str, float]:
    """Teacher-forced mean NLL (nats per token) of the answer's tokens and of the steps' results' tokens, each given
    the zero-shot prompt and the gold solution before it: a fit to the chain's numbers, where whole-solution
    perplexity mostly measures its words."""
    device = model.embed_tokens.weight.device
    sums = {"answer_nll": [0.0, 0], "result_nll": [0.0, 0]}
    for i in range(0, len(problems), batch_size):
        chunk = problems[i:i + batch_size]
        rows = [er.encode_problem(tok, p) for p in chunk]
        tokens, _ = er.solution_batch(rows, tok.eos_id)
        logits = model(tokens.to(device))[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1).to(device),
                              reduction="none").view(len(chunk), -1).cpu()  # nll[b, j - 1]: predicting token j
        for b, (problem, (ids, n_prompt)) in enumerate(zip(chunk, rows)):
            for name, positions in number_positions(tok, problem["answer"], ids, n_prompt).items():
                sums[name][0] += float(nll[b, [j - 1 for j in positions]].sum())
                sums[name][1] += len(positions)
    return {name: total / count if count else math.nan for name, (total, count) in sums.items()}


def outcomes(predictions: list[dict], steps: int) -> str:
    """One character per problem of eval_reasoning.evaluate's predictions for `steps`-step problems: "1" right,
    "o" wrong by an overrun (the chain's last real step had the gold number, then the model went on), "0" wrong
    otherwise. Strict accuracy counts "1"; accuracy with an overrun scored at the question's last step, "1" and
    "o"."""
    return "".join("1" if p["correct"] else "o" if overran(p["generation"], steps, p["gold"]) else "0"
                   for p in predictions)


def measure(model, tok, held, args, accuracy: bool) -> tuple[dict, dict, dict]:
    """One model on every held-out set, the teacher and every point alike: (the fits and eRanks, eRank per layer,
    the scores); the scores, greedy accuracy and each problem's outcome, are empty cells without `accuracy`."""
    windows, problems, eval_sets, text = held
    m, general = measure_model(model, windows), measure_model(model, text)
    row = {"general_ppl": general["ppl"], **number_nll(model, tok, problems),
           "solution_ppl": er.solution_perplexity(model, tok, problems), "val_ppl": m["ppl"],
           "erank_sq": m["erank_sq"], "erank_rv": m["erank_rv"], "erank_general": general["erank_sq"]}
    results = rvl.accuracy_by_steps(model, tok, eval_sets, args) if accuracy else {}
    scores = {f"acc_{k}": results[k]["accuracy"] if results else "" for k in args.steps_list}
    scores |= {f"outcomes_{k}": outcomes(results[k]["predictions"], k) if results else "" for k in args.steps_list}
    return row, {f"erank_l{r['layer']}": r["erank_sq"] for r in m["layers"]}, scores


# ---------------------------------------------------------------------------------------------------------
# Runs: (arm, budget, seed), each to its own annealed end

def measured_steps(early: list[int], budget: int) -> list[int]:
    """The steps a run of `budget` steps is measured at: 0, the --early steps below its budget, its end."""
    return [0, *[s for s in sorted(set(early)) if 0 < s < budget], budget]


def measure_point(args, run: tuple, lr: float, step: int, student, tok, held, train_s: float):
    """One points.csv row: the student at `step` of `run`, with the median and largest s_max / s_min of its
    projections; accuracy and outcomes at the run's end only."""
    t0 = time.time()
    arm, budget, seed = run
    row, layers, scores = measure(student.merge(), tok, held, args, accuracy=step == int(budget))
    ratios = [s[0] / s[2] for s in (spectrum_summary(P) for P in student.parameters() if P.dim() == 2)]
    path = os.path.join(args.out, "points.csv")
    rows = read_rows(path)
    rows.append({"arm": arm, "budget": budget, "seed": seed, "lr": lr, "step": step,
                 "tokens": step * args.batch_size * args.seq_len, **row, **layers,
                 "spectrum_ratio": float(np.median(ratios)), "spectrum_ratio_max": max(ratios), **scores,
                 "train_s": round(train_s, 1), "measure_s": round(time.time() - t0, 1)})
    write_rows(path, rows)
    accuracy = [f"{scores[f'acc_{k}']:.2f}" for k in args.steps_list if scores[f"acc_{k}"] != ""]
    print(f"{arm:12s} budget {budget:>5} seed {seed} step {step:5d}: general ppl {row['general_ppl']:.2f} answer "
          f"nll {row['answer_nll']:.4f} eRank {row['erank_sq']:.1f} s_max/s_min {np.median(ratios):.2f}"
          + (" acc " + " ".join(accuracy) if accuracy else ""), flush=True)


def ladder_run(args, arm: str, budget: int, seed: int, teacher, tok, held, check_time):
    """One rung: `arm` for `budget` steps (its own schedule), stopped (distill.py --stop-at) and measured at each
    of measured_steps; the points a record already has are not measured again."""
    run = (arm, str(budget), str(seed))
    out = os.path.join(args.out, "runs", run_name(run))
    done = {int(r["step"]) for r in read_rows(os.path.join(args.out, "points.csv")) if run_key(r) == run}
    todo = [s for s in measured_steps(args.early, budget) if s not in done]
    if not todo:
        return
    lr = args.rates[arm]
    flags = distill_flags(args, arm, seed, lr, budget, budget)  # validated and checkpointed at the end
    for step in todo:  # and at every --stop-at
        check_time()
        if step == 0:  # the init file
            student, seconds = read_init(flags[flags.index("--init") + 1], teacher, args.fingerprint)[0], 0.0
        else:
            seconds = continue_run(args, out, flags, step)
            if seconds is None:
                cli.fail(f"{arm} budget {budget} seed {seed}: the loss diverged at lr {lr:g} (see {out}.log)")
            state = load_file(os.path.join(ckpt.checkpoint_dir(out + ".run", step), "student.safetensors"))
            student = Student.from_state_dict(teacher, state)
        measure_point(args, run, lr, step, student, tok, held, seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_experiment_arguments(parser, "out/ladder")
    parser.add_argument("--budgets", nargs="+", type=cli.int_at_least(1), default=[], help="steps of each rung: "
                        "every arm of --arms is trained to each, a run of its own schedule")
    parser.add_argument("--early", nargs="+", type=cli.int_at_least(1), default=EARLY, help="steps below a run's "
                        "budget measured too (eRank, spectrum, fits; no accuracy)")
    parser.set_defaults(arms=ARMS, eval_per_step=300)
    args = cli.parse_args(parser)
    if args.report:
        with cli.user_errors():
            report(args.report)
        return
    if not args.rates:
        cli.fail("--rates is required (e.g. red=3e-3 lrc=3e-3): a ladder runs no sweep")
    if not args.budgets and not args.join:
        cli.fail("--budgets is required: the steps of each rung (e.g. --budgets 300 450 600)")
    args.early, args.steps = sorted(set(args.early)), None  # a run ends at its budget (points.csv's column)
    open_experiment(args, FIXED, "experiments/ladder.py")
    if args.join:  # bookkeeping only: the record gains the runs, and nothing is trained here
        report(args.out)
        return
    start = time.time()

    def check_time():
        if time.time() - start > args.max_minutes * 60:
            raise OutOfTime

    args.data = os.path.join(args.out, "problems.jsonl")  # the training problems, plateau.py's
    if not os.path.exists(args.data):
        rvl.write_corpus(args.data, args.corpus_per_step, args.steps_list, 0)
    teacher, tok = load_model(args.teacher, device=args.device), load_tokenizer(args.teacher)
    held = (*rvl.held_out(tok, args), load_windows(args.text_heldout, tok, args.seq_len))
    if not os.path.exists(os.path.join(args.out, "teacher.json")):  # the teacher on the same held-out data, once
        row, layers, scores = measure(teacher, tok, held, args, accuracy=True)
        cli.write_json(os.path.join(args.out, "teacher.json"), row | layers | scores)
    interrupted = False
    try:
        for seed in args.seeds:  # seed by seed, then arm by arm, each arm's rungs from the shortest
            for arm in args.arms:
                for budget in sorted(set(args.budgets)):
                    ladder_run(args, arm, budget, seed, teacher, tok, held, check_time)
    except OutOfTime:
        print(f"--max-minutes {args.max_minutes:g} reached after {(time.time() - start) / 60:.1f} min: continue "
              "with the same command and --resume", flush=True)
    except KeyboardInterrupt:  # Ctrl-C during a measurement: the points so far are kept, and reported
        interrupted = True
    report(args.out)
    if interrupted:
        cli.fail("interrupted - the finished points are kept; continue with the same command and --resume", code=130)
    print(f"{(time.time() - start) / 60:.1f} min; tables in {args.out}/ladder.md")


if __name__ == "__main__":
    main()
