"""problems.py: every synthetic problem's worked solution re-computed step by step, the same seed giving the
same problems, the mixed training set, and the Question/Answer document format.

Builds on problems.py, with eval_reasoning.py's answer extraction reading the solutions.
Run as: pytest tests/test_problems.py -q
"""
import re

import pytest

import eval_reasoning as er
from problems import PROBLEM_STEPS, make_synthetic, qa_text, worked_problems

# ---------------------------------------------------------------------------------------------------------
# Synthetic generator

STEP_LINE = re.compile(r"Step (\d+): .+, so (\d+) ([-+x/]) (\d+) = (\d+)\.")


@pytest.mark.parametrize("steps,max_value", [(1, 99), (2, 99), (4, 99), (6, 20), (3, 10)])
def test_synthetic_problems_are_correct(steps, max_value):
    problems = make_synthetic(150, steps, seed=7, max_value=max_value)
    assert problems == make_synthetic(150, steps, seed=7, max_value=max_value)  # deterministic by seed
    assert problems != make_synthetic(150, steps, seed=8, max_value=max_value)
    # the solution's arithmetic is checked by re-doing it, not by trusting the generator's own bookkeeping
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b, "/": lambda a, b: a / b}
    for p in problems:
        lines = p["answer"].split("\n")
        start = int(re.search(r"starts with (\d+) ", lines[0]).group(1))
        assert len(lines) == steps + 2 and lines[-1].startswith("#### ")
        value = start
        for i, line in enumerate(lines[1:-1], 1):
            step, a, op, b, c = STEP_LINE.fullmatch(line).groups()
            assert int(step) == i and int(a) == value and apply[op](int(a), int(b)) == int(c)
            assert all(1 <= int(v) <= max_value for v in (a, b, c))
            value = int(c)
        assert 1 <= start <= max_value
        # the "####" line, the extractor's reading of the whole solution and the replayed steps agree
        assert er.gold_answer(p["answer"]) == er.extract_answer(p["answer"]) == str(value)
        assert p["question"].count("?") == 1 and f" {start} " in p["question"]
    assert len({p["question"] for p in problems}) > 0.9 * len(problems)  # varied, not one template


def test_worked_problems_mix_the_step_counts():
    docs = worked_problems(8, seed=3)
    assert docs == worked_problems(8, seed=3) and docs != worked_problems(8, seed=4)
    steps = [doc.count("\nStep ") for doc in docs]
    assert steps == [PROBLEM_STEPS[i % len(PROBLEM_STEPS)] for i in range(8)]
    assert all(doc.startswith("Question: ") and "\nAnswer: " in doc for doc in docs)
    assert qa_text("q?", "a") == "Question: q?\nAnswer: a"
