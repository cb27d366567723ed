"""experiments/ladder.py and ladder_report.py: the bootstrap on synthetic ends whose answer is known, the answer's
and the steps' results' NLL by hand, the outcome of each problem (overruns), the decision rule's four cases, and
the harness end to end on a tiny teacher: two rungs and an arm side by side, --resume, --join, --report.

Builds on experiments/ladder.py, experiments/ladder_report.py (and through them experiments/plateau.py, distill.py),
with conftest.py's tiny teacher.
Run as: pytest tests/test_ladder.py -q
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import general_texts, make_tiny_teacher, read_csv
from experiments.ladder import number_nll, outcomes
from experiments.ladder_report import Resamples, accuracies, accuracy, case, readings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = accuracies([4, 5, 6])


def end(budget: int, seed: int, fit: float, marks: dict[int, str]) -> dict:
    """An annealed end as ladder_report reads it: its budget, general-text fit and outcome strings."""
    return {"budget": budget, "step": budget, "seed": seed, "general_ppl": fit,
            **{f"outcomes_{k}": m for k, m in marks.items()}}


def bernoulli(rng, p: float, n: int = 300) -> dict[int, str]:
    return {k: "".join("1" if u < p else "0" for u in rng.random(n)) for k in (4, 5, 6)}


def lead_of(red_p: float, lrc_p: float, seeds=(0, 1, 2)):
    """RED's lead over lrc on independent synthetic answers: RED's rungs at fits 30 and 20, lrc's end at 25."""
    rng = np.random.default_rng(7)
    ends = {"red": {s: [end(300, s, 30.0, bernoulli(rng, red_p)), end(600, s, 20.0, bernoulli(rng, red_p))]
                    for s in seeds},
            "lrc": {s: [end(1500, s, 25.0, bernoulli(rng, lrc_p))] for s in seeds}}
    found, missed = readings(ends, "lrc", "general_ppl")
    assert not missed and all(w == pytest.approx(0.5) for v in found.values() for *_, w in v)
    return Resamples({4: 300, 5: 300, 6: 300}).lead(found, KINDS["strict"])


def test_bootstrap_covers_0_for_identical_arms_and_excludes_it_for_a_planted_lead():
    lead, lo, hi = lead_of(0.6, 0.6)
    assert abs(lead) < 3 and lo < 0 < hi and case(lead, lo, hi) == "none"
    lead, lo, hi = lead_of(0.8, 0.6)  # a planted 20-point lead
    assert 17 < lead < 23 and 10 < lo < lead < hi < 30 and case(lead, lo, hi) == "collapse"


def test_red_is_interpolated_between_its_rungs_in_every_resample_and_shared_problems_count():
    # RED right on the first 70 % of the problems at budget 300 (fit 30), the first 90 % at 600 (fit 20); lrc at
    # fit 25 (halfway) right on the first 60 %: RED there 80 %, a lead of exactly 20 points
    first = lambda p: {k: "1" * int(300 * p) + "0" * (300 - int(300 * p)) for k in (4, 5, 6)}  # noqa: E731
    ends = {"red": {0: [end(300, 0, 30.0, first(0.7)), end(600, 0, 20.0, first(0.9))]},
            "lrc": {0: [end(1500, 0, 25.0, first(0.6))]}}
    found, _ = readings(ends, "lrc", "general_ppl")
    res = Resamples({4: 300, 5: 300, 6: 300})
    lead, lo, hi = res.lead(found, KINDS["strict"])
    assert lead == pytest.approx(20.0) and lo > 15 and hi < 25
    # the same accuracies on unrelated problems (lrc's right answers shuffled): the paired interval is the narrower
    rng = np.random.default_rng(0)
    shuffled = {k: "".join(rng.permutation(list(m))) for k, m in first(0.6).items()}
    unpaired = {"red": ends["red"], "lrc": {0: [end(1500, 0, 25.0, shuffled)]}}
    _, lo2, hi2 = res.lead(readings(unpaired, "lrc", "general_ppl")[0], KINDS["strict"])
    assert hi - lo < 0.8 * (hi2 - lo2)
    # an end that fits better than RED's longest rung, or no better than its shortest, has no reading
    ends["lrc"][0] += [end(3000, 0, 19.0, first(0.6)), end(900, 0, 31.0, first(0.6))]
    found, missed = readings(ends, "lrc", "general_ppl")
    assert len(found[0]) == 1 and [why for _, why in missed] == ["fits better than RED's longest rung",
                                                                 "fits no better than RED's shortest rung"]


def write_record(path, ends: dict):
    """A ladder record's config.json and points.csv (as experiments/ladder.py writes them) holding only ends."""
    from experiments.plateau_report import write_rows
    os.makedirs(path, exist_ok=True)
    config = {"teacher": "out/reasoning-teacher", "width": 128, "batch_size": 8, "seq_len": 256, "early": [25],
              "rates": {arm: 3e-3 for arm in ends}, "eval_per_step": 300, "steps_list": [4, 5, 6],
              "teacher_sha256": "fa8bc0ca" * 8, "trained_on": "cpu"}
    (path / "config.json").write_text(json.dumps(config))
    rows = [{"arm": arm, **p, "answer_nll": p["general_ppl"] / 1000, "result_nll": p["general_ppl"] / 100,
             "solution_ppl": 1.0, "erank_sq": 40.0, "erank_l0": 40.0, "spectrum_ratio": 1.0,
             **{f"acc_{k}": p[f"outcomes_{k}"].count("1") / 300 for k in (4, 5, 6)}}
            for arm, seeds in ends.items() for pts in seeds.values() for p in pts]
    write_rows(str(path / "points.csv"), rows)


def test_the_report_says_which_case_the_record_falls_in(tmp_path):
    from experiments.ladder_report import report
    rng = np.random.default_rng(3)
    ends = {"red": {s: [end(300, s, 30.0, bernoulli(rng, 0.8)), end(600, s, 20.0, bernoulli(rng, 0.8))]
                    for s in (0, 1)},
            "lrc": {s: [end(1500, s, 25.0, bernoulli(rng, 0.55))] for s in (0, 1)}}
    write_record(tmp_path / "planted", ends)
    report(str(tmp_path / "planted"))
    table = (tmp_path / "planted" / "ladder.md").read_text()
    assert ("**Provisional, 2 of 3 seeds: reproduces the paper's collapse.** lrc at matched annealed general-text "
            "perplexity") in table
    assert "2 of 2 lrc ends bracketed by RED's ladder, 2 seeds" in table
    ends["red"][2] = [end(300, 2, 30.0, bernoulli(rng, 0.8)), end(600, 2, 20.0, bernoulli(rng, 0.8))]
    ends["lrc"][2] = [end(1500, 2, 25.0, bernoulli(rng, 0.55))]
    write_record(tmp_path / "three", ends)
    report(str(tmp_path / "three"))
    table = (tmp_path / "three" / "ladder.md").read_text()
    assert "**Reproduces the paper's collapse.** lrc at matched annealed general-text perplexity" in table
    # a seed whose lrc end RED's ladder does not bracket: no decision yet, and which end lacks a rung
    ends["lrc"][1] = [end(1500, 1, 35.0, bernoulli(rng, 0.55))]
    write_record(tmp_path / "gap", ends)
    report(str(tmp_path / "gap"))
    table = (tmp_path / "gap" / "ladder.md").read_text()
    assert "**No decision yet**" in table and "1,500 seed 1: fits no better than RED's shortest rung" in table
    # a plateau record is not a ladder's: refused in one line
    plateau_record = tmp_path / "plateau"
    shutil.copytree(tmp_path / "gap", plateau_record)
    rows = read_csv(plateau_record / "points.csv")
    from experiments.plateau_report import write_rows
    write_rows(str(plateau_record / "points.csv"), [{k: v for k, v in r.items() if k != "budget"} for r in rows])
    with pytest.raises(SystemExit) as refused:
        report(str(plateau_record))
    assert refused.value.code == 2


def test_accuracies_strict_overrun_scored_and_the_longest_alone():
    point = end(300, 0, 20.0, {4: "1o00", 5: "11o0", 6: "1100"})
    assert accuracy(point, KINDS["strict"]) == pytest.approx((1 + 2 + 2) / 12)
    assert accuracy(point, KINDS["overrun"]) == pytest.approx((2 + 3 + 2) / 12)
    assert accuracy(point, KINDS["longest"]) == pytest.approx(0.5)


def test_the_decision_rule_has_four_cases():
    assert case(12.0, 3.0, 21.0) == "collapse"
    assert case(10.0, 0.5, 19.0) == "collapse"
    assert case(6.0, 1.0, 11.0) == "smaller"
    assert case(12.0, -1.0, 25.0) == "none" and case(0.0, -4.0, 4.0) == "none"
    assert case(-8.0, -14.0, -2.0) == "reverse"


def test_each_problem_scored_strict_and_with_its_overrun():
    gold, k = "12", 2
    chain = ("Mia starts with 5 apples.\nStep 1: Mia buys 4 more, so 5 + 4 = 9.\n"
             "Step 2: Mia buys 3 more, so 9 + 3 = 12.\n")
    predictions = [
        {"generation": chain + "#### 12", "gold": gold, "correct": True},                         # right
        {"generation": chain + "Step 3: Mia loses 2, so 12 - 2 = 10.\n#### 10", "gold": gold,
         "correct": False},                                                                       # overran
        {"generation": chain.replace("= 12", "= 13") + "#### 13", "gold": gold, "correct": False},  # wrong step
        {"generation": chain.replace("= 12", "= 13") + "Step 3: Mia loses 2, so 13 - 2 = 11.\n#### 11",
         "gold": gold, "correct": False},                           # went on after a wrong step: not an overrun
        {"generation": "", "gold": gold, "correct": False}]                                       # no answer
    assert outcomes(predictions, k) == "1o000"
    point = {f"outcomes_{k}": outcomes(predictions, k)}
    kinds = accuracies([k])
    assert accuracy(point, kinds["strict"]) == pytest.approx(0.2)
    assert accuracy(point, kinds["overrun"]) == pytest.approx(0.4)


class CharTokenizer:
    """One token per byte: every token's place in the text is known by hand."""
    bos_id, eos_id = None, 0

    class encoding:  # the one tiktoken method experiments/ladder.py asks of a tokenizer's encoding
        decode_single_token_bytes = staticmethod(lambda t: bytes([t]))

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()


class Unigram(torch.nn.Module):
    """The same next-token distribution at every position: logit v / 10 for token v."""

    def __init__(self, vocab: int = 128):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, 1)
        self.logits = torch.arange(vocab, dtype=torch.float32) / 10

    def forward(self, tokens):
        return self.logits.expand(*tokens.shape, len(self.logits))


def test_answer_and_step_result_nll_by_hand():
    problem = {"question": "Mia has 5 apples. Mia buys 4 more apples. Then Mia buys 3 more apples. How many apples "
                           "does Mia have now?",
               "answer": "Mia starts with 5 apples.\nStep 1: Mia buys 4 more, so 5 + 4 = 9.\nStep 2: Mia buys 3 more, "
                         "so 9 + 3 = 12.\n#### 12"}
    log_z = torch.logsumexp(torch.arange(128) / 10, 0).item()
    nll = {c: log_z - ord(c) / 10 for c in "0123456789"}  # -log p of each digit's byte
    got = number_nll(Unigram(), CharTokenizer(), [problem, problem])
    assert got["answer_nll"] == pytest.approx((nll["1"] + nll["2"]) / 2, rel=1e-6)  # "12" after "####"
    assert got["result_nll"] == pytest.approx((nll["9"] + nll["1"] + nll["2"]) / 3, rel=1e-6)  # "= 9", "= 12"
    # one token off would score "#" or "\n" instead, each of another probability
    assert got["answer_nll"] != pytest.approx((nll["1"] + log_z - ord(" ") / 10) / 2)


def run_ladder(*flags, check=True, wait=True):
    command = [sys.executable, "experiments/ladder.py", *map(str, flags)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    if not wait:
        return process
    return finish(process, check)


def finish(process, check=True):
    stdout, stderr = process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return result


def test_ladder_end_to_end_side_by_side_resumed_joined_reported(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "teacher")
    texts = general_texts(tmp_path)
    common = ["--teacher", teacher, "--width", 32, "--seeds", 0, "--batch-size", 2, "--seq-len", 32,
              "--corpus-per-step", 10, "--steps-list", 1, 2, "--eval-per-step", 3, "--max-new-tokens", 8,
              "--windows", 8, "--text-train", texts["train"], "--text-heldout", texts["heldout"], "--early", 2]
    red, lrc = tmp_path / "red", tmp_path / "lrc"
    # two processes side by side, one thread each (as every pair here): RED's first rung, and lrc's one rung
    side = run_ladder(*common, "--arms", "red", "--budgets", 2, "--rates", "red=3e-3", "--out", red, wait=False)
    finish(run_ladder(*common, "--arms", "lrc", "--budgets", 3, "--rates", "lrc=3e-3", "--out", lrc, wait=False))
    finish(side)
    first, theirs = read_csv(red / "points.csv"), read_csv(lrc / "points.csv")
    assert [(r["budget"], r["step"]) for r in first + theirs] == [("2", "0"), ("2", "2"), ("3", "0"), ("3", "2"),
                                                                  ("3", "3")]
    assert theirs[-1]["outcomes_1"] and len(theirs[-1]["outcomes_2"]) == 3 and not theirs[1]["outcomes_1"]  # end only
    assert set(theirs[-1]["outcomes_1"]) <= set("1o0") and math.isfinite(float(theirs[-1]["answer_nll"]))
    # --resume with a second rung: the first is not trained again; beside it, a resume that changes a setting
    side = run_ladder(*common[:-1], 3, "--arms", "lrc", "--budgets", 3, "--rates", "lrc=3e-3", "--out", lrc,
                      "--resume", wait=False)
    resumed = run_ladder(*common, "--arms", "red", "--budgets", 2, 4, "--rates", "red=3e-3", "--out", red, "--resume")
    refused = finish(side, check=False)
    assert refused.returncode == 2 and "early" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "budget     2" not in resumed.stdout and "budget     4 seed 0 step     4" in resumed.stdout
    points = read_csv(red / "points.csv")
    assert points[:2] == first and [(r["budget"], r["step"]) for r in points[2:]] == [("4", "0"), ("4", "2"),
                                                                                     ("4", "4")]
    # joined into one record: nothing trains, the runs' files come along, the report has every part
    both = tmp_path / "both"
    run_ladder(*common, "--rates", "red=3e-3", "lrc=3e-3", "--out", both, "--join", red, lrc)
    assert read_csv(both / "points.csv") == points + theirs
    assert (both / "runs" / "red-b4-s0.run").is_dir() and (both / "runs" / "lrc-b3-s0.log").is_file()
    table = (both / "ladder.md").read_text()
    for part in ("## The decision (docs/METHOD.md §4.5.1)", "## The annealed ends", "| teacher |",
                 "## RED's lead at equal fit", "## Each end against RED's ladder",
                 "## Early steps: mean residual eRank", "## Early steps: s_max / s_min", "eRank per layer"):
        assert part in table, part
    assert json.load(open(both / "config.json"))["teacher_sha256"] == json.load(open(red / "config.json"))[
        "teacher_sha256"]
    # the record alone (three files) continues elsewhere: nothing runs again; beside it, its report is rewritten
    # from a copy of those files, byte for byte
    record, copy = tmp_path / "record", tmp_path / "copy"
    for path in (record, copy):
        path.mkdir()
        for name in ("config.json", "teacher.json", "points.csv"):
            shutil.copyfile(both / name, path / name)
    side = run_ladder("--report", copy, wait=False)
    again = run_ladder(*common, "--arms", "red", "--budgets", 2, 4, "--rates", "red=3e-3", "--out", record, "--resume")
    finish(side)
    assert " seed 0 step " not in again.stdout and not (record / "inits").exists()
    assert read_csv(record / "points.csv") == read_csv(both / "points.csv")
    assert (record / "ladder.md").read_text() == table == (copy / "ladder.md").read_text()


@pytest.mark.parametrize("record", sorted(p.name for p in os.scandir(os.path.join(ROOT, "docs", "records"))
                                          if os.path.exists(os.path.join(p.path, "ladder.md"))))
def test_every_kept_ladder_record_reports_again_byte_for_byte(record, tmp_path):
    """The ladder records in docs/records/: experiments/ladder.py --report rewrites each one's ladder.md exactly."""
    for name in ("config.json", "teacher.json", "points.csv"):
        shutil.copyfile(os.path.join(ROOT, "docs", "records", record, name), tmp_path / name)
    run_ladder("--report", tmp_path)
    with open(os.path.join(ROOT, "docs", "records", record, "ladder.md")) as kept:
        assert (tmp_path / "ladder.md").read_text() == kept.read()
