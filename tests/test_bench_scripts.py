"""The scripts under bench/ and experiments/ end to end on a tiny teacher: importance.py (selection overlaps and step-0
students), plot_runs.py (eRank and projection spectra over a real distill.py run) and proxy_theory.py (the
autoencoder from three inits), each printing its table and, with matplotlib, writing its picture; and
bench_gpu.py's sweep and checks on a tiny model on the CPU; paper_shapes.py's released 3B configurations
through distill.py and back through transformers; clone_loss_lr.py's grid, its table read from the runs.

Builds on experiments/importance.py, experiments/plot_runs.py, experiments/proxy_theory.py, bench/bench_gpu.py,
bench/paper_shapes.py, experiments/clone_loss_lr.py and distill.py,
with conftest.py's tiny teacher.
Run as: pytest tests/test_bench_scripts.py -q
"""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def run(*args, threads: int | None = 1):
    """The script's CompletedProcess; threads=None: torch's default thread count (the cores)."""
    env = dict(os.environ) if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import make_tiny_teacher
    return make_tiny_teacher(tmp_path_factory.mktemp("bench") / "teacher")


def test_importance_reports_overlaps_and_step0_students(teacher):
    result = run("experiments/importance.py", "--teacher", teacher, "--width", 32, "--data", "problems:300", "--seq-len",
                 32, "--n-calib", 4, "--held-out", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| teacher") and rows[2].startswith("| red | 100.0% |") and len(rows) == 9
    assert rows[-1].startswith("| gaussian (LRC)")


def test_plot_runs_reads_a_distill_run(teacher, tmp_path):
    out = tmp_path / "s"
    done = run("distill.py", "--teacher", teacher, "--width", 32, "--data", "problems:300", "--seq-len", 32,
               "--batch-size", 4, "--n-calib", 4, "--steps", 4, "--eval-every", 2, "--eval-problems", 0, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    result = run("experiments/plot_runs.py", str(out) + ".run", "--out", tmp_path / "runs.png")
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("s ")]
    assert [int(r[1]) for r in table] == [0, 2, 4]  # step 0 and every validation
    assert float(table[0][3]) == 1.0 and float(table[0][4]) == pytest.approx(1.0)  # selection: an even spectrum
    assert (result.returncode == 0) == HAVE_MPL and (tmp_path / "runs.png").exists() == HAVE_MPL


def test_clone_loss_lr_runs_its_grid_from_one_init(teacher, tmp_path):
    out = tmp_path / "grid"
    common = ["experiments/clone_loss_lr.py", "--teacher", teacher, "--width", 32, "--lrs", 1e-3, "--steps", 3,
              "--batch-size", 2, "--seq-len", 32, "--data", "problems:200", "--out", out]
    flags = [*common, "--clone-losses", "mse", "relative"]
    result = run(*flags)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(out / "results.csv") as f:
        rows = {r["clone_loss"]: r for r in csv.DictReader(f)}
    made = lambda: [f for f in os.listdir(out / "inits") if f.endswith(".safetensors")]  # noqa: E731
    inits = made()
    assert set(rows) == {"mse", "relative"} and inits == ["select-s0.safetensors"]  # one init for every run
    for kind, r in rows.items():  # the start scales are the logged terms of the run's first steps
        logged = [json.loads(line) for line in open(out / f"lr0.001-{kind}-s0.run" / "metrics.jsonl")]
        steps = [x for x in logged if "loss" in x]
        assert float(r["start_mlp_out"]) == pytest.approx(sum(x["mlp_out"] for x in steps) / 3)
        assert float(r["step0_erank"]) == pytest.approx(logged[0]["erank"])
    assert float(rows["relative"]["start_q"]) != pytest.approx(float(rows["mse"]["start_q"]))
    assert (out / "results.md").read_text().count("\n| 0.001 |") == 2
    again = run(*flags, "--resume")  # nothing left to run: the table is rewritten from results.csv
    assert again.returncode == 0 and "done in" not in again.stdout and "over seeds" not in again.stdout
    # a second seed of one cell, added later: only that run trains, on other windows from the same init file
    more = run(*common, "--clone-losses", "mse", "--seeds", 0, 1, "--resume")
    assert more.returncode == 0 and more.stdout.count("done in") == 1, more.stdout[-2000:] + more.stderr[-2000:]
    with open(out / "results.csv") as f:
        mse = [r for r in csv.DictReader(f) if r["clone_loss"] == "mse"]
    assert [r["seed"] for r in mse] == ["0", "1"] and mse[0]["end_ppl"] != mse[1]["end_ppl"]
    assert made() == inits
    ppl = [float(r["end_ppl"]) for r in mse]
    cell = f"| 0.001 | mse | 2 | {np.mean(ppl):.2f} ± {np.std(ppl, ddof=1):.2f} |"
    assert cell in (out / "results.md").read_text()


def test_proxy_theory_runs_three_inits(teacher, tmp_path):
    result = run("experiments/proxy_theory.py", "--teacher", teacher, "--data", "problems:300", "--rows", 400,
                 "--width", 16, "--steps", 60, "--seq-len", 64, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "proxy.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in table if line.startswith("| ") and "init" not in line}
    assert set(rows) == {"gaussian", "orthogonal", "selection"}
    with open(tmp_path / "proxy.csv") as f:
        start = {r["init"]: r for r in csv.DictReader(f) if r["step"] == "0"}
    assert float(start["selection"]["sv_max"]) == pytest.approx(1.0) == float(start["selection"]["sv_min"])
    assert float(start["gaussian"]["sv_max"]) > 2 * float(start["gaussian"]["sv_min"])  # spread from the start
    assert (tmp_path / "proxy.png").exists() == HAVE_MPL


def test_bench_gpu_runs_its_sweep_and_checks_on_a_tiny_model():
    """The GPU benchmark's code path on the CPU (the CUDA comparison itself needs a GPU and says so)."""
    result = run("bench/bench_gpu.py", "--device", "cpu", "--tiny", "--width", 32, "--seq-len", 64, "--steps", 1,
                 "--max-sweep", 2, "--recompute")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA device here" in result.stdout and "blocks recomputed" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 1, 2] and all(float(r[3]) > 0 for r in rows)  # tokens/s
    assert result.stdout.index("lean step") < result.stdout.index("plain step")  # both swept, the lean one first
    zero = result.stdout.split("as rank 0 of 8:")[1].splitlines()[0]  # AdamW's state sharded: about an eighth
    assert 0.1 < float(zero.split("(")[-1].rstrip(")")) < 0.2


def test_paper_shapes_distil_resume_and_load_in_transformers():
    """Qwen2.5-3B's released config (one layer, a 2,000-token vocabulary, the padding kept) through distill.py to
    width 1200: init, a step, checkpoint, resume, a step, save; transformers' logits equal ours. (Llama-3.2-3B's
    takes another minute: the README's run has both at two layers and the full vocabularies.)"""
    result = run("bench/paper_shapes.py", "--models", "qwen", "--layers", 1, "--bpe-tokens", 2000, threads=None)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| qwen")]
    assert [r[3].strip() for r in rows] == ["1200 / 128 / 2,293"]  # head_dim 128, not 1200 / 16; padding kept
    assert rows[0][4].strip() == "[1, 2]" and "all checks passed" in result.stdout


def test_error_kinds_tells_an_overrun_from_a_wrong_step(teacher):
    sys.path.insert(0, ROOT)
    from experiments.error_kinds import overran
    from experiments.red_vs_lrc import accuracy_problems
    import eval_reasoning as er
    from load_weights import load_model
    from tokenizer import load_tokenizer
    problem = accuracy_problems(1, [2])[2][0]  # "...\nStep 2: ... = N.\n#### N", a real held-out problem
    chain, gold = problem["answer"].split("\n####")[0], er.gold_answer(problem["answer"])
    assert overran(chain + "\nStep 3: Tom sells 1, so 1 - 1 = 0.\n#### 0", 2, gold)  # right, then one step more
    assert not overran(chain + "\n#### " + gold, 2, gold)  # stopped where the question ends
    assert not overran(chain.replace(f"= {gold}.", "= 98.") + "\nStep 3: so 98 + 1 = 99.", 2, gold)  # step 2 wrong
    assert not overran(chain + "\nStep 3:", 3, gold)  # a 3-step problem: the right number came a step early

    result = run("experiments/error_kinds.py", "--tokenizer", teacher, teacher, "--steps-list", 1, 2, "--eval-per-step", 3,
                 "--max-new-tokens", 8)
    assert result.returncode == 0, result.stderr[-2000:]
    row = [line for line in result.stdout.splitlines() if line.startswith(f"| {teacher}")][0]
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    model, tok = load_model(teacher), load_tokenizer(teacher)  # the accuracy is the evaluator's, on the same problems
    for k, cell in zip((1, 2), cells):
        acc, over, other = cell.split(", ")
        res = er.evaluate(model, tok, accuracy_problems(3, [k])[k], max_new_tokens=8 + 24 * k)
        assert float(acc) == pytest.approx(res["accuracy"], abs=0.005) and int(over) + int(other) == 3 - round(
            res["accuracy"] * 3)
    missing = run("experiments/error_kinds.py", "--tokenizer", teacher, teacher + "-nowhere")
    assert missing.returncode == 2 and "no such model directory" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
