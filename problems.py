"""Synthetic multi-step arithmetic word problems in GSM8K format, and the Question/Answer document format.

A reasoning benchmark that exists offline: every problem is a start fact plus `steps` operations on one running
count (+, -, x, /), with a worked solution that writes each step's arithmetic out and ends in "#### answer",
as GSM8K's solutions do (Cobbe et al. 2021, arXiv 2110.14168). The same seed gives the same problems on every
machine. eval_reasoning.py measures accuracy on them, data.py trains on them (`--data problems:N`), and
experiments/reasoning_teacher.py trains a teacher that solves them.

`qa_text` is the one document format of a question/answer pair, "Question: q\nAnswer: a": data.py packs
GSM8K-style JSONL with it and eval_reasoning.py prompts with the same frame.

Builds on nothing else in red (floor 1): the standard library only.
Run as: imported (python eval_reasoning.py --make-synthetic N --ops K --out FILE writes a set).
"""
import random
import re

PROBLEM_STEPS = (1, 2, 3, 4)  # the step counts of the mixed training set (`worked_problems`)
# Bounds a command line checks before generating anything (a problem costs ~16 us per step): problems:N reads
# at most a million (~1 minute, ~100-300M tokens, GBs of memory; more is a corpus to pack once with data.py
# --out from real text), and a problem has at most 100 steps and numbers up to a billion
MAX_PROBLEMS = 1_000_000
MAX_STEPS = 100
MAX_VALUE = 10 ** 9


def qa_text(question: str, answer: str) -> str:
    """A GSM8K-style item as one document; eval_reasoning.py prompts with the same "Question:/Answer:" frame."""
    return f"Question: {question}\nAnswer: {answer}"


# ---------------------------------------------------------------------------------------------------------
# The generator
#
#
# Every problem is a start fact plus `steps` operations on one running count, each value (operands and every
# running total) in 1..max_value, so a tiny model trained on them never meets a number it has not seen. The
# worked solution restates the start on its own line, then one "Step i: ..., so a op b = c." line per step,
# then "#### answer": a 1-step problem has exactly one Step line and nothing invites a second one.

NAMES = ["Mia", "Leo", "Ava", "Omar", "Zoe", "Ravi", "Lena", "Sam", "Nora", "Ivan", "Emma", "Kofi", "Yuki",
         "Ben", "Sofia", "Tom", "Aisha", "Max", "Lucy", "Diego"]
OBJECTS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells", "stamps", "cookies",
           "toy cars", "balloons", "beads", "crayons", "eggs", "flowers", "rocks", "buttons", "candles", "kites"]
# (question sentence, solution phrase) per operation; {b} is the operand, {other} a second person
TEMPLATES = {
    "+": [("{name} buys {b} more {obj}.", "{name} buys {b} more"),
          ("{name} finds {b} more {obj}.", "{name} finds {b} more"),
          ("{other} gives {name} {b} {obj}.", "{name} gets {b} from {other}")],
    "-": [("{name} gives {b} {obj} to {other}.", "{name} gives away {b}"),
          ("{name} loses {b} {obj}.", "{name} loses {b}"),
          ("{name} sells {b} {obj}.", "{name} sells {b}")],
    "x": [("{name} ends up with {b} times as many {obj} as before.", "{name} ends up with {b} times as many")],
    "/": [("{name} splits the {obj} into {b} equal piles and keeps one pile.", "{name} keeps 1 of {b} equal piles")],
}


def feasible_ops(value: int, max_value: int) -> dict[str, range | list[int]]:
    """Operation -> the operands b that keep every number in 1..max_value (b >= 2 reads naturally)."""
    # factors up to 5 and divisors up to 9: the multiplication table a small model can learn; division
    # only when it is exact and leaves at least 2, so every answer is a whole count
    # ranges, not lists: a large max_value costs nothing (rng.choice draws from a range as from a list)
    ops = {"+": range(2, max_value - value + 1),
           "-": range(2, value),
           "x": range(2, min(5, max_value // value) + 1),
           "/": [b for b in range(2, 10) if value % b == 0 and value // b >= 2]}
    return {op: bs for op, bs in ops.items() if bs}


def make_problem(rng: random.Random, steps: int, max_value: int = 99) -> dict:
    """One seeded word problem {"question", "answer"} with `steps` operations and a worked solution."""
    if max_value < 10 or steps < 1:
        raise ValueError(f"synthetic problems need max_value >= 10 and steps >= 1 (got {max_value}, {steps})")
    name, other = rng.sample(NAMES, 2)  # two different people, so "Tom gives Tom" never happens
    obj = rng.choice(OBJECTS)
    value = rng.randint(2, max_value)  # >= 2, so no sentence reads "has 1 apples"
    question = [f"{name} has {value} {obj}."]
    solution = [f"{name} starts with {value} {obj}."]
    for step in range(1, steps + 1):
        # some operation always fits: value <= max_value - 2 allows "+", else value >= max_value - 1 >= 9 allows "-"
        op, operands = rng.choice(sorted(feasible_ops(value, max_value).items()))
        b = rng.choice(operands)  # op first, then operand: "x" and "/" are not drowned by the many "+" operands
        sentence, phrase = rng.choice(TEMPLATES[op])
        result = {"+": value + b, "-": value - b, "x": value * b, "/": value // b}[op]
        words = dict(name=name, other=other, obj=obj, b=b)
        # the question says what happens; the solution names the same event and writes the arithmetic out,
        # always "a op b = c." with the running total a first, so every step can be checked by a regex
        question.append(("Then " if step > 1 else "") + sentence.format(**words))
        solution.append(f"Step {step}: {phrase.format(**words)}, so {value} {op} {b} = {result}.")
        value = result
    question.append(f"How many {obj} does {name} have now?")
    solution.append(f"#### {value}")
    return {"question": " ".join(question), "answer": "\n".join(solution)}


STEP_LINE = re.compile(r"Step (\d+): .+, so (\d+) ([-+x/]) (\d+) = (\d+)\.")


def is_synthetic(row) -> bool:
    """Whether a JSONL row is a problem exactly as make_problem writes it (names, objects, every step's
    arithmetic re-done): how eval_reasoning.py --make-synthetic recognises a set it may replace, where a
    user's GSM8K file, of the same two fields, is never one."""
    try:
        return _replays(row)
    except ValueError:  # a number past Python's int() limit of 4300 digits: nothing red wrote
        return False


def _replays(row) -> bool:
    if not (isinstance(row, dict) and set(row) == {"question", "answer"}
            and all(isinstance(v, str) for v in row.values())):
        return False
    lines = row["answer"].split("\n")
    start = re.fullmatch(r"(\w+) starts with (\d+) ([a-z ]+)\.", lines[0])
    if not (start and start[1] in NAMES and start[3] in OBJECTS and len(lines) >= 3):
        return False
    name, value, obj = start[1], int(start[2]), start[3]
    if not (row["question"].startswith(f"{name} has {value} {obj}. ")
            and row["question"].endswith(f" How many {obj} does {name} have now?")):
        return False
    for i, line in enumerate(lines[1:-1], 1):
        step = STEP_LINE.fullmatch(line)
        if not step or int(step[1]) != i or int(step[2]) != value:
            return False
        a, op, b, c = int(step[2]), step[3], int(step[4]), int(step[5])
        if b == 0 or c != {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op]:
            return False
        value = c
    return lines[-1] == f"#### {value}"


def make_synthetic(n: int, steps: int, seed: int, max_value: int = 99) -> list[dict]:
    """n problems of `steps` steps from one seeded RNG: the same arguments give the same list."""
    rng = random.Random(seed)  # Python's Mersenne Twister: the same sequence on every platform and version
    return [make_problem(rng, steps, max_value) for _ in range(n)]


def worked_problems(n: int, seed: int, steps=PROBLEM_STEPS) -> list[str]:
    """n worked problems as documents (qa_text), the step counts mixed evenly: the `problems:N` training data."""
    rng = random.Random(seed)
    return [qa_text(**make_problem(rng, steps[i % len(steps)])) for i in range(n)]
