"""experiments/reasoning_teacher.py end to end on a tiny recipe: the teacher it writes loads in transformers with the
same logits as ours, and a run split by --stop-at and continued by --resume writes the same bytes as one
unsplit run; what --resume refuses, in one line.

Builds on experiments/reasoning_teacher.py (and through it checkpoint.py, model.py, load_weights.py), with
transformers as the reference.
Run as: pytest tests/test_reasoning_teacher.py -q
"""
import json
import os
import subprocess
import sys

import torch

from load_weights import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dim", 32, "--layers", 1, "--heads", 2, "--kv-heads", 1, "--ffn", 64, "--vocab", 1024,
        "--tokens-per-batch", 256, "--eval-per-step", 2, "--threads", 1, "--text-fraction", 0.5, "--steps", 8,
        "--checkpoint-every", 100]


def train(out, *flags):
    return subprocess.run([sys.executable, "experiments/reasoning_teacher.py", "--out", str(out), *map(str, TINY),
                           *map(str, flags)], cwd=ROOT, capture_output=True, text=True)


def weights(out) -> bytes:
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        return f.read()


def test_split_run_writes_the_same_teacher_as_one_run(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    result = train(whole)
    assert result.returncode == 0, result.stderr[-3000:]

    first = train(split, "--stop-at", 3)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after step 3/8" in first.stdout and not os.path.exists(split)  # no teacher yet, a checkpoint
    refused = train(split, "--resume", "--lr", 1e-3)  # another recipe cannot continue this run
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--lr" in refused.stderr
    again = train(split)  # nor can a fresh start overwrite it
    assert again.returncode == 2 and "holds a run already" in again.stderr and "Traceback" not in again.stderr
    second = train(split, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stdout and weights(split) == weights(whole)  # bitwise: the split is invisible
    reports = [json.load(open(os.path.join(d, "training_report.json"))) for d in (whole, split)]
    strip = lambda curve: [{k: v for k, v in p.items() if k != "minutes"} for p in curve]
    assert strip(reports[0]["curve"]) == strip(reports[1]["curve"])  # losses and quick checks, step for step

    # the result is a Hugging Face checkpoint: transformers gives our logits
    from transformers import AutoModelForCausalLM
    ours = load_model(str(whole))
    theirs = AutoModelForCausalLM.from_pretrained(str(whole), torch_dtype=torch.float32).eval()
    ids = torch.randint(0, ours.args.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


def test_resume_without_a_run_is_one_line(tmp_path):
    result = train(tmp_path / "none", "--resume")
    assert result.returncode == 2 and "no checkpoint to resume" in result.stderr and "Traceback" not in result.stderr
