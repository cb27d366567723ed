"""experiments/plateau.py: the plateau criterion on synthetic loss curves, and the harness end to end on a tiny
teacher: sweep, then (a second command, --resume) segmented long runs whose measured points equal a direct
measurement of the students they wrote, what --resume refuses.

Builds on experiments/plateau.py (and through it distill.py --stop-at, experiments/red_vs_lrc.py), with conftest.py's
tiny teacher.
Run as: pytest tests/test_plateau.py -q
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import checkpoint as ckpt
import eval_reasoning as er
import run_lock
from conftest import general_texts, make_tiny_teacher, read_csv
from experiments.plateau import next_rate
from experiments.schedule_bias import schedule_bias
from experiments.plateau_report import (equal_fit, lead_cells, interpolated_accuracy, over_last_points, plateau, under_way,
                                  write_rows)
from load_weights import load_model
from problems import make_synthetic
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plateau_criterion_on_synthetic_curves():
    steps = np.arange(0, 3001, 300)
    falling = [(int(s), 1.0 + 2.0 * math.exp(-s / 1500)) for s in steps]  # still 10 % down over the last fifth
    settled = [(int(s), 1.0 + 2.0 * math.exp(-s / 200)) for s in steps]   # converged long before the end
    flat, change = plateau(falling)
    assert not flat and 0.05 < change < 0.2
    flat, change = plateau(settled)
    assert flat and change < 1e-3
    # the reference point is the last one at or before 80 % of the steps (2400), not an interpolation
    assert plateau([(0, 5.0), (2400, 2.0), (2700, 1.0), (3000, 1.99)]) == (True, pytest.approx(0.005))
    assert plateau([(3000, 1.0)]) == (False, math.inf)  # nothing to compare with: not flat
    # a rise counts as a change as much as a fall
    assert not plateau([(0, 1.0), (80, 1.0), (100, 1.05)])[0]


def fit_point(step: int, ppl: float, acc: float) -> dict:
    """A measured point with one solution perplexity and the same accuracy at every step count."""
    return {"step": step, "solution_ppl": ppl, **{f"acc_{k}": acc for k in range(1, 7)}}


# RED along training: its init, then three points that fit better and reason better
RED_CURVE = [fit_point(0, 500.0, 0.0), fit_point(900, 1.040, 0.30), fit_point(1800, 1.020, 0.60),
             fit_point(2700, 1.010, 0.80)]


def test_red_accuracy_interpolated_at_another_arms_fit():
    args = argparse.Namespace(steps_list=[1, 2, 3, 4, 5, 6])
    red = RED_CURVE
    # 1.035 lies a quarter of the way from 1.040 (30 %) to 1.020 (60 %): 30 + 0.25 * 30 = 37.5 %
    assert interpolated_accuracy(red, "solution_ppl", 1.035, args) == pytest.approx(0.375)
    assert interpolated_accuracy(red, "solution_ppl", 1.020, args) == pytest.approx(0.60)  # a measured fit: its point
    assert interpolated_accuracy(red, "solution_ppl", 1.005, args) is None  # RED never fitted as well
    assert interpolated_accuracy(red, "solution_ppl", 1.2, args) is None  # only a line from the init: no reading
    hard_only = dict(red[1], acc_1=0.9)  # only the three longest step counts count: still 30 %, so (30 + 60) / 2 %
    assert interpolated_accuracy([red[0], hard_only, red[2]], "solution_ppl", 1.030, args) == pytest.approx(0.45)


def write_record(path, steps: int, runs: dict) -> argparse.Namespace:
    """A record's points.csv (as plateau.py writes it) from {(arm, seed): [points]}; its settings as a Namespace."""
    os.makedirs(path, exist_ok=True)
    rows = [{"arm": arm, "seed": seed, "general_ppl": p["solution_ppl"], **p}
            for (arm, seed), points in runs.items() for p in points]
    write_rows(os.path.join(path, "points.csv"), rows)
    return argparse.Namespace(out=str(path), steps=steps, steps_list=[1, 2, 3, 4, 5, 6])


def test_schedule_bias_is_an_annealed_end_against_the_same_arm_mid_schedule(tmp_path):
    """A short run's end against the long run of the same arm and seed, interpolated to the same fit."""
    short = write_record(tmp_path / "short", 1000, {
        ("red", 0): [fit_point(0, 500.0, 0.0), fit_point(1000, 1.035, 0.50)],   # annealed: 50 % at 1.035
        ("red", 1): [fit_point(0, 500.0, 0.0), fit_point(1000, 1.005, 0.90)],   # fits better than the long run ever
        ("lrc", 0): [fit_point(0, 500.0, 0.0), fit_point(1000, 1.030, 0.40)]})  # no long lrc run: no pair
    long = write_record(tmp_path / "long", 3000, {("red", 0): RED_CURVE, ("red", 1): RED_CURVE})
    bias = schedule_bias([long, short], "solution_ppl")  # in any order: the shorter budget is the annealed end
    # the long run at 1.035 reads 37.5 % (test_red_accuracy_interpolated_at_another_arms_fit): 50 - 37.5 points
    assert bias == {"red": [pytest.approx(0.125)]}
    same_budget = write_record(tmp_path / "same", 1000, {("red", 0): RED_CURVE})
    assert schedule_bias([short, same_budget], "solution_ppl") == {}  # two ends of one budget: no schedule to compare


@pytest.mark.parametrize("record", sorted(p.name for p in os.scandir(os.path.join(ROOT, "docs", "records"))
                                          if os.path.exists(os.path.join(p.path, "plateau.md"))))  # not ladders
def test_every_kept_record_reports_again_byte_for_byte(record, tmp_path):
    """The records in docs/records/ are read by path: plateau.py --report rewrites each one's plateau.md exactly."""
    kept = os.path.join(ROOT, "docs", "records", record)
    copy = tmp_path / record
    os.makedirs(copy)
    for name in ("config.json", "teacher.json", "points.csv", "sweep.csv"):
        if os.path.exists(os.path.join(kept, name)):
            with open(os.path.join(kept, name), "rb") as src, open(copy / name, "wb") as dst:
                dst.write(src.read())
    done = subprocess.run([sys.executable, "experiments/plateau.py", "--report", str(copy)], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(kept, "plateau.md")) as a, open(copy / "plateau.md") as b:
        assert b.read() == a.read()


def test_equal_fit_over_the_last_three_points():
    args = argparse.Namespace(steps_list=[1, 2, 3, 4, 5, 6])
    red = RED_CURVE
    arm = [fit_point(0, 300.0, 0.0), fit_point(1000, 1.050, 0.2), fit_point(2000, 1.035, 0.5),
           fit_point(3000, 1.030, 0.4), fit_point(4000, 1.020, 0.6)]
    # the last three: 50, 40, 60 % against RED at 1.035 (37.5 %), 1.030 (45 %) and 1.020 (60 %), each averaged
    theirs, red_there = over_last_points(arm, red, "solution_ppl", args)
    assert theirs == pytest.approx(0.5) and red_there == pytest.approx((0.375 + 0.45 + 0.60) / 3)
    # one of the three fits better than RED ever did: no RED reading, the arm's own mean still stands
    assert over_last_points(arm[:-1] + [fit_point(4000, 1.005, 0.6)], red, "solution_ppl", args) == (
        pytest.approx(0.5), None)
    # fewer than three trained points: those there are; the init never counts
    assert over_last_points([arm[0], arm[2], arm[3]], red, "solution_ppl", args) == (
        pytest.approx(0.45), pytest.approx((0.375 + 0.45) / 2))


def test_lead_over_red_over_seeds():
    # each side rounded to the whole percent first: 57 - 59 = -2, 61 - 47 = +14, 56 - 54 = +2; a run without a
    # RED reading counts nowhere; mean +4.7, sd 8.3
    assert lead_cells([(0.571, 0.589), (0.61, 0.47), (0.556, 0.544), (0.5, None)]) == "+5 ± 8 | 2 / 0 / 1"
    assert lead_cells([(0.504, 0.496)]) == "0 | 0 / 1 / 0"  # 50 against 50: level, and one run has no sd
    assert lead_cells([(0.5, None)]) == " | "
    # through the report: seed 0 ends at 1.015 with 50 % where RED had 70 % (-20); its last three points, 30, 40 and
    # 50 % at 1.030, 1.020 and 1.015, against RED's 45, 60 and 70 % (40 against 58: -18); seed 1 fits no better
    # than RED's first trained point, so it has no reading at all
    args = argparse.Namespace(steps_list=[1, 2, 3, 4, 5, 6])
    with_text = lambda points: [dict(p, general_ppl=20 * p["solution_ppl"]) for p in points]  # noqa: E731
    runs = {"red": {0: with_text(RED_CURVE), 1: with_text(RED_CURVE)},
            "lrc": {0: with_text([fit_point(0, 300.0, 0.0), fit_point(1000, 1.030, 0.3), fit_point(2000, 1.020, 0.4),
                                  fit_point(3000, 1.015, 0.5)]),
                    1: with_text([fit_point(0, 300.0, 0.0), fit_point(3000, 1.050, 0.2)])}}
    lines = equal_fit(args, runs)
    summary = lines.index("## At equal fit, over seeds: the arm's lead over RED there")
    assert lines[summary + 4:summary + 6] == [f"| lrc | {fit} | 2 | -20 | 0 / 0 / 1 | -18 | 0 / 0 / 1 |"
                                             for fit in ("solution perplexity", "general-text perplexity")]


def test_report_lists_the_latest_point_of_each_unfinished_run():
    args = argparse.Namespace(steps=3000, steps_list=[1, 2])
    point = lambda step, acc: {"step": step, "acc_1": acc, "acc_2": acc / 2, "solution_ppl": 1.5, "general_ppl": 30.0,  # noqa: E731
                               "erank_sq": 40.0, "val_loss": 2.0}
    runs = {"red": {0: [point(0, 0.0), point(3000, 0.9)]},
            "lrc": {0: [point(0, 0.0), point(1500, 0.4)], 1: [point(0, 0.0)]}}
    lines = under_way(args, runs)
    assert lines[0] == "## Runs under way: their latest point (of 3000 steps)"
    assert [line.split(" | ")[:5] for line in lines[4:-1]] == [["| lrc", "0", "1500", "0.40", "0.20"],
                                                               ["| lrc", "1", "0", "0.00", "0.00"]]  # red is done
    assert under_way(args, {"red": runs["red"]}) == []


def test_sweep_extends_its_grid_while_the_best_rate_is_at_an_edge():
    args = argparse.Namespace(sweep_lrs=[3e-4, 1e-3, 3e-3], sweep_extend=2)
    assert next_rate(args, {}) == 3e-4 and next_rate(args, {3e-4: 3.0}) == 1e-3  # the grid first, in its order
    assert next_rate(args, {3e-4: 3.0, 1e-3: 2.0, 3e-3: 2.5}) is None  # best inside the grid: done
    assert next_rate(args, {3e-4: 3.0, 1e-3: 2.5, 3e-3: 2.0}) == 9e-3  # best at the top edge: one step beyond
    assert next_rate(args, {3e-4: 3.0, 1e-3: 2.5, 3e-3: 2.0, 9e-3: 1.9}) == 2.7e-2
    assert next_rate(args, {3e-4: 3.0, 1e-3: 2.5, 3e-3: 2.0, 9e-3: 1.9, 2.7e-2: 1.8}) is None  # two per side at most
    assert next_rate(args, {3e-4: 3.0, 1e-3: 2.5, 3e-3: 2.0, 9e-3: math.inf}) is None  # diverged: that side ends
    assert next_rate(args, {3e-4: 2.0, 1e-3: 2.5, 3e-3: 3.0}) == 9e-5  # and at the bottom edge
    assert next_rate(argparse.Namespace(sweep_lrs=[1e-3], sweep_extend=2), {1e-3: 2.0}) is None  # one rate: no ratio


def run_plateau(*flags, check=True):
    result = subprocess.run([sys.executable, "experiments/plateau.py", *map(str, flags)], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_sweep_then_segmented_runs_measured_as_written(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "teacher")
    texts = general_texts(tmp_path)
    out = tmp_path / "plateau"
    common = ["--teacher", teacher, "--width", 32, "--arms", "red", "lrc", "--seeds", 0, "--steps", 4, "--points", 2,
              "--sweep-steps", 2, "--sweep-lrs", 1e-3, 3e-3, "--sweep-extend", 1, "--batch-size", 2,
              "--seq-len", 32, "--corpus-per-step", 10, "--steps-list", 1, 2, "--eval-per-step", 3,
              "--max-new-tokens", 8, "--windows", 8, "--text-train", texts["train"], "--text-heldout", texts["heldout"],
              "--out", out]
    run_plateau(*common, "--sweep-only")
    sweep = read_csv(out / "sweep.csv")
    for arm in ("red", "lrc"):  # the grid, then one rate beyond the edge where the best was there
        loss = {float(r["lr"]): float(r["val_loss"]) for r in sweep if r["arm"] == arm}
        assert list(loss)[:2] == [1e-3, 3e-3]
        edge = {1e-3: 3.3e-4, 3e-3: 9e-3}.get(min(list(loss)[:2], key=loss.get))
        assert list(loss)[2:] == [edge], (arm, loss)
    again = run_plateau(*common, check=False)  # an experiment is never silently replaced
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    changed = run_plateau(*common[:-2], "--steps", 6, "--points", 2, "--out", out, "--resume", check=False)
    assert changed.returncode == 2 and "steps" in changed.stderr
    held = run_lock.lock(str(out))  # as a running experiments/plateau.py holds it
    busy = run_plateau(*common, "--resume", check=False)
    assert busy.returncode == 2 and "another experiments/plateau.py" in busy.stderr, busy.stderr
    held.close()

    result = run_plateau(*common, "--resume")
    assert not [line for line in result.stdout.splitlines() if line.startswith("sweep ")]  # none ran again
    assert read_csv(out / "sweep.csv") == sweep
    points = read_csv(out / "points.csv")
    assert [(r["arm"], int(r["step"])) for r in points] == [(a, s) for a in ("red", "lrc") for s in (0, 2, 4)]
    best = {a: min((r for r in sweep if r["arm"] == a), key=lambda r: float(r["val_loss"]))["lr"]
            for a in ("red", "lrc")}
    assert all(r["lr"] == best[r["arm"]] for r in points)
    for arm in ("red", "lrc"):  # one distill.py run in two segments: every step once
        assert [r["step"] for r in ckpt.read_metrics(str(out / "runs" / f"{arm}-s0.run"))] == list(range(5))
    # the last point is the student distill.py wrote, measured directly
    student, tok = load_model(str(out / "runs" / "red-s0")), load_tokenizer(teacher)
    problems = [p for k in (1, 2) for p in make_synthetic(40, k, seed=50_000 + k)]
    assert float(points[2]["solution_ppl"]) == pytest.approx(er.solution_perplexity(student, tok, problems), rel=1e-5)
    layers = [float(points[2][f"erank_l{i}"]) for i in range(student.args.n_layers)]  # per layer; their mean
    assert float(points[2]["erank_sq"]) == pytest.approx(np.mean(layers), rel=1e-6)  # is the table's eRank
    table = (out / "plateau.md").read_text()
    assert "## At the end of the budget" in table and "| red | 1 |" in table and "| teacher | | |" in table
    teacher_row = json.load(open(out / "teacher.json"))  # the reference row: the teacher, measured alike
    assert teacher_row["solution_ppl"] == pytest.approx(
        er.solution_perplexity(load_model(teacher), tok, problems), rel=1e-5)
    assert "## At equal fit: solution perplexity" in table and "## At equal fit: general-text perplexity" in table
    assert json.load(open(out / "config.json"))["steps"] == 4

    # the record (four small files) continues on another machine: nothing runs again, the report is the same
    record = tmp_path / "record"
    record.mkdir()
    for name in ("config.json", "sweep.csv", "teacher.json", "points.csv"):
        (record / name).write_bytes((out / name).read_bytes())
    again = run_plateau(*common[:-1], record, "--resume")
    assert not (record / "inits").exists() and read_csv(record / "points.csv") == points
    assert (record / "plateau.md").read_text() == table
    # or, after a change to the report, it is rewritten from the record's files alone: no teacher, nothing measured
    files = sorted(os.listdir(record))
    (record / "plateau.md").unlink()
    run_plateau("--report", record)
    assert (record / "plateau.md").read_text() == table and sorted(os.listdir(record)) == files
    for bad, why in ((["--report", tmp_path / "none"], "unreadable experiment config"),
                     (["--out", out, "--resume"], "--teacher is required")):
        refused = run_plateau(*bad, check=False)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # given rates: no sweep, every point at its arm's rate; an arm without one is refused before any work
    given = run_plateau(*common[:-1], tmp_path / "given", "--rates", "lrc=3e-3", "--arms", "lrc")
    assert not os.path.exists(tmp_path / "given" / "sweep.csv") and "\nsweep " not in given.stdout
    assert {r["lr"] for r in read_csv(tmp_path / "given" / "points.csv")} == {"0.003"}
    # an experiment gains an arm with its rate on --resume (lrc already ran: nothing runs); a rate never changes
    grown = run_plateau(*common[:-1], tmp_path / "given", "--rates", "red=1e-3", "--arms", "lrc", "--resume")
    assert " seed 0 step " not in grown.stdout and len(read_csv(tmp_path / "given" / "points.csv")) == 3
    assert json.load(open(tmp_path / "given" / "config.json"))["rates"] == {"lrc": 3e-3, "red": 1e-3}
    moved = run_plateau(*common[:-1], tmp_path / "given", "--rates", "lrc=1e-3", "--arms", "lrc", "--resume",
                        check=False)
    assert moved.returncode == 2 and "--rates" in moved.stderr and len(moved.stderr.strip().splitlines()) == 1
    # an arm run on its own (another process, another --out) joins the experiment: nothing runs again, its points,
    # runs and logs are copied, and the report has both arms; joined again, nothing is added
    solo, given = tmp_path / "solo", tmp_path / "given"
    run_plateau(*common[:-1], solo, "--rates", "red=1e-3", "--arms", "red")
    before = read_csv(given / "points.csv")
    joined = run_plateau(*common[:-1], given, "--rates", "lrc=3e-3", "--arms", "lrc", "--resume", "--join", solo)
    assert " seed 0 step " not in joined.stdout and "joined from" in joined.stdout
    rows = read_csv(given / "points.csv")
    assert rows == before + read_csv(solo / "points.csv")
    assert [(r["arm"], r["step"]) for r in rows] == [(a, s) for a in ("lrc", "red") for s in ("0", "2", "4")]
    assert ckpt.read_metrics(str(given / "runs" / "red-s0.run")) == ckpt.read_metrics(str(solo / "runs" / "red-s0.run"))
    assert "| red | 1 |" in (given / "plateau.md").read_text() and "| lrc | 1 |" in (given / "plateau.md").read_text()
    twice = run_plateau(*common[:-1], given, "--rates", "lrc=3e-3", "--arms", "lrc", "--resume", "--join", solo)
    assert "joined from" in twice.stdout and "nothing new" in twice.stdout and read_csv(given / "points.csv") == rows
    # a join only joins: a run that --arms and --seeds name but nobody has trained is not started by it
    assert " seed 1 step " not in run_plateau(*common[:-1], given, "--rates", "lrc=3e-3", "--seeds", 0, 1, "--resume",
                                              "--join", solo).stdout and read_csv(given / "points.csv") == rows
    # a record's partial run (its run files gone with their machine) is replaced by a finished run of it, saying so;
    # one that --out could still finish is refused
    stranded = tmp_path / "stranded"
    stranded.mkdir()
    for name in ("config.json", "teacher.json"):
        (stranded / name).write_bytes((solo / name).read_bytes())
    write_rows(str(stranded / "points.csv"), read_csv(solo / "points.csv")[:-1])  # red seed 0 at steps 0-2
    (stranded / "runs" / "red-s0.run").mkdir(parents=True)
    refused = run_plateau(*common[:-1], stranded, "--rates", "red=1e-3", "--resume", "--join", solo, check=False)
    assert refused.returncode == 2 and "red-s0.run" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    (stranded / "runs" / "red-s0.run").rmdir()
    replaced = run_plateau(*common[:-1], stranded, "--rates", "red=1e-3", "--resume", "--join", solo)
    assert "replaced the partial run of red seed 0" in replaced.stdout and " seed 0 step " not in replaced.stdout
    assert read_csv(stranded / "points.csv") == read_csv(solo / "points.csv")
    # only an experiment made alike (its settings and teacher), and only finished runs
    other_points = lambda c, p: (c, [r | {"solution_ppl": "1.5"} for r in p])  # noqa: E731
    for name, edit, why in (("odd", lambda c, p: (c | {"steps": 6}, p), "not an experiment of this one's settings"),
                            ("unfinished", lambda c, p: (c, p[:-1]), "has not reached step 4"),
                            ("clash", other_points, "already, with other points")):
        config, points = edit(json.load(open(solo / "config.json")), read_csv(solo / "points.csv"))
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        write_rows(str(tmp_path / name / "points.csv"), points)
        into = given if name == "clash" else tmp_path / f"{name}-into"  # clash: red seed 0 is in given already
        refused = run_plateau(*common[:-1], into, "--rates", "lrc=3e-3", "--arms", "lrc", "--resume",
                              "--join", tmp_path / name, check=False)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # runs of another device kind (bf16 on a GPU) are not more seeds of a CPU record: neither joined nor trained
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    (gpu / "config.json").write_text(json.dumps(json.load(open(solo / "config.json")) | {"trained_on": "cuda"}))
    write_rows(str(gpu / "points.csv"), read_csv(solo / "points.csv"))
    (gpu / "teacher.json").write_bytes((solo / "teacher.json").read_bytes())
    assert json.load(open(given / "config.json"))["trained_on"] == "cpu"
    refused = run_plateau(*common[:-1], given, "--rates", "lrc=3e-3", "--arms", "lrc", "--resume", "--join", gpu,
                          check=False)
    assert refused.returncode == 2 and "trained on cuda, those of" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and read_csv(given / "points.csv") == rows
    run_plateau(*common[:-1], tmp_path / "gpu-record", "--rates", "red=1e-3", "--arms", "red", "--join", gpu)
    assert json.load(open(tmp_path / "gpu-record" / "config.json"))["trained_on"] == "cuda"  # a new record: theirs
    refused = run_plateau(*common[:-1], tmp_path / "gpu-record", "--rates", "red=1e-3", "--arms", "red", "--seeds",
                          1, "--resume", check=False)  # seed 1 would train here, on the CPU
    assert refused.returncode == 2 and "would add a run of another kind" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    for bad, why in ((["red=1e-3"], "no rate for lrc"), (["red:1e-3", "lrc=1e-3"], "not ARM=LR")):
        refused = run_plateau(*common[:-1], tmp_path / "bad", "--rates", *bad, check=False)
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    # the same teacher path with other weights (a retrained teacher that came out different) is refused
    from conftest import make_tiny_model
    make_tiny_model(teacher, "llama", 1, vocab_size=320, max_position_embeddings=1024)
    other = run_plateau(*common, "--resume", check=False)
    assert other.returncode == 2 and "is not the teacher" in other.stderr, other.stderr
