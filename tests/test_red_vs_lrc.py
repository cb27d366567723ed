"""experiments/red_vs_lrc.py end to end on a tiny teacher: every run and stage is measured and written, the
per-layer table has every layer, equal inits give equal step-0 students, and the numbers in results.csv are
the ones a direct measurement of the written checkpoints gives.

Builds on experiments/red_vs_lrc.py (and through it distill.py, erank.py, eval_reasoning.py), with conftest.py's
tiny teacher.
Run as: pytest tests/test_red_vs_lrc.py -q
"""
import csv
import importlib
import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import eval_reasoning as er
from erank import measure_model
from load_weights import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ["red", "lrc", "red+gaussian"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One small run of the experiment: (output dir, teacher dir, stdout)."""
    from conftest import make_tiny_teacher
    tmp = tmp_path_factory.mktemp("rvl")
    teacher = make_tiny_teacher(tmp / "teacher")
    out = tmp / "rvl"
    cmd = [sys.executable, "experiments/red_vs_lrc.py", "--teacher", teacher, "--width", "32", "--runs", *RUNS,
           "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--corpus-per-step", "10", "--steps-list", "1", "2",
           "--eval-per-step", "3", "--max-new-tokens", "8", "--windows", "16", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out, teacher, result.stdout


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_run_and_stage_is_measured_and_written(experiment):
    out, teacher, stdout = experiment
    rows = read_csv(out / "results.csv")
    assert [(r["model"], r["stage"]) for r in rows] == [("teacher", "")] + [
        (name, stage) for name in RUNS for stage in ("step 0", "end")]
    n_layers = load_model(teacher).args.n_layers
    layers = read_csv(out / "erank_layers.csv")
    assert len(layers) == len(rows) * n_layers
    table = (out / "results.md").read_text()
    assert "-> width 32; 3 steps x 2 x 32 tokens per run" in table
    assert table.count("\n| ") == 1 + len(rows)  # header + one line per row
    for r in rows:
        assert all(0.0 <= float(r[f"acc_{k}"]) <= 1.0 for k in (1, 2))
        assert float(r["val_ppl"]) > 1.0 and float(r["erank_sq"]) > 1.0
        assert (float(r["train_s"]) > 0) == (r["stage"] == "end")
    if importlib.util.find_spec("matplotlib"):
        assert all((out / f"{name}.png").stat().st_size > 1000 for name in ("erank", "accuracy", "loss"))
    else:
        assert "matplotlib not installed" in stdout


def test_the_same_init_gives_the_same_step_0_student(experiment):
    """lrc and red+gaussian differ only in the loss: at step 0 they are one model, made and measured once;
    red (selection) is not."""
    rows = {(r["model"], r["stage"]): r for r in read_csv(experiment[0] / "results.csv")}
    keys = ["val_ppl", "solution_ppl", "erank_sq", "erank_rv", "acc_1", "acc_2"]
    assert [rows["lrc", "step 0"][k] for k in keys] == [rows["red+gaussian", "step 0"][k] for k in keys]
    assert rows["red", "step 0"]["val_ppl"] != rows["lrc", "step 0"]["val_ppl"]
    assert rows["red", "end"]["val_ppl"] != rows["red", "step 0"]["val_ppl"]  # the end row is the trained one
    assert sorted(os.listdir(experiment[0] / "inits")) == ["gaussian.json", "gaussian.safetensors",
                                                           "gaussian.safetensors.log", "select.json",
                                                           "select.safetensors", "select.safetensors.log"]


def test_recorded_numbers_match_a_direct_measurement(experiment, monkeypatch):
    """Reload the red student the run wrote and measure it again with erank.py and eval_reasoning.py."""
    out, teacher, _ = experiment
    monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))  # as when the script runs: its folder on the path
    bench = importlib.import_module("red_vs_lrc")
    from tokenizer import load_tokenizer
    tok = load_tokenizer(teacher)
    args = SimpleNamespace(steps_list=[1, 2], seq_len=32, windows=16, eval_per_step=3)  # the run's flags
    windows, problems, eval_sets = bench.held_out(tok, args)
    model = load_model(str(out / "red"))
    m = measure_model(model, windows)
    row = next(r for r in read_csv(out / "results.csv") if (r["model"], r["stage"]) == ("red", "end"))
    assert float(row["erank_sq"]) == pytest.approx(m["erank_sq"], rel=1e-9)
    assert float(row["val_ppl"]) == pytest.approx(m["ppl"], rel=1e-9)
    assert float(row["solution_ppl"]) == pytest.approx(er.solution_perplexity(model, tok, problems), rel=1e-9)
    res = er.evaluate(model, tok, eval_sets[2], max_new_tokens=8 + 24 * 2)
    assert float(row["acc_2"]) == res["accuracy"]
