"""How a student's wrong answers are wrong, on experiments/plateau.py's held-out problems.

A worked problem of k steps ends "Step k: ... = N.\\n#### N". A wrong answer to it is one of two kinds:
    overran   step k of the chain reached the right number, and the model went on with a step k + 1 the
              question does not have: it has the arithmetic and the chain's form, not where the question ends;
    other     a wrong number within the first k steps, a misread question, or no answer at all.
The two call for different readings of "reasoning collapse": a student whose errors are mostly overruns
computes the chain and loses count of it; one whose errors are "other" cannot compute it.

The problems, the generation length (--max-new-tokens + 24 per step) and the greedy decoding are those of
experiments/plateau.py's accuracy columns, so the accuracy printed here equals the point's in points.csv. Prints a
markdown table, writes nothing.

Builds on eval_reasoning.py (the evaluator), experiments/red_vs_lrc.py (the held-out problems), load_weights.py and
tokenizer.py. Run as:
    python experiments/error_kinds.py --tokenizer out/reasoning-teacher out/plateau-c/runs/lrc-s0 out/plateau-c/runs/red-s0
"""
import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402


def overran(generation: str, steps: int, gold: str) -> bool:
    """Did the chain reach the gold answer at its last real step, then write one more?"""
    last_step_right = rf"Step {steps}:[^\n]*= {re.escape(gold)}\.\n"
    return re.search(last_step_right + rf"Step {steps + 1}:", generation) is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("students", nargs="+", help="model directories (a distill.py --out, or the teacher)")
    parser.add_argument("--tokenizer", required=True, help="directory of the tokenizer (the teacher's)")
    parser.add_argument("--steps-list", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--eval-per-step", type=cli.int_at_least(1), default=100)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="+ 24 per problem step")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--threads", type=cli.int_at_least(1), default=2)
    args = cli.parse_args(parser)
    args.chat = False  # plain Question/Answer prompts, as the students were trained and plateau.py measures
    cli.interrupt_while_starting()
    import torch
    import eval_reasoning as er
    from experiments.red_vs_lrc import accuracy_by_steps, accuracy_problems
    from load_weights import LoadError, load_model
    from tokenizer import TokenizerError, load_tokenizer
    torch.set_num_threads(args.threads)
    with cli.user_errors(LoadError, TokenizerError, er.EvalError):
        for path in (*args.students, args.tokenizer):
            if not os.path.isdir(path):
                cli.fail(f"{path}: no such model directory - give a distill.py --out or the teacher's directory")
        tok = load_tokenizer(args.tokenizer)
        problems = accuracy_problems(args.eval_per_step, args.steps_list)
        print("| model | " + " | ".join(f"{k} step{'s' * (k > 1)}: accuracy, overran, other" for k in problems)
              + " | overran / wrong |")
        print("|---|" + "---|" * (len(problems) + 1))
        for path in args.students:
            t0, model = time.time(), load_model(path)
            cells, wrong_all, overran_all = [], 0, 0
            for k, res in accuracy_by_steps(model, tok, problems, args).items():
                wrong = [p for p in res["predictions"] if not p["correct"]]
                over = sum(overran(p["generation"], k, p["gold"]) for p in wrong)
                cells.append(f"{res['accuracy']:.2f}, {over}, {len(wrong) - over}")
                wrong_all, overran_all = wrong_all + len(wrong), overran_all + over
            print(f"| {path} | " + " | ".join(cells) + f" | {overran_all} / {wrong_all} |", flush=True)
            print(f"{path}: {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
