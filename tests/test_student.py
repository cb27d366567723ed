"""student.py: the projected student is the teacher at full width, a merged student is an ordinary HF checkpoint
with the same logits, and "materialise once, back-propagate once" gives the same gradients as a direct pass.

Builds on student.py, init_select.py and load_weights.py, with transformers as the reference.
Run as: OMP_NUM_THREADS=1 pytest tests/test_student.py -q
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from init_select import KINDS, init_projections
from load_weights import load_model, save_model
from student import (LAYER_NORMS, PROJECTIONS, Student, StudentError, backward_through, check_width,
                     leaf_copies)

FAMILIES = ("llama", "qwen2", "qwen3")
REPO = Path(__file__).resolve().parents[1]  # the CLIs run from the repository root


def calib_batches(n=3, seed=0, vocab=256):
    """A few (2, 24) random token batches (random tokens are enough to rank a random model's channels)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, 24), generator=g) for _ in range(n)]


def perturb(student: Student, seed: int, scale: float = 0.05):
    """Move every projection and gain away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean().clamp(min=0.02))


# ---------------------------------------------------------------------------------------------------------
# The student's structure

@pytest.mark.parametrize("family", FAMILIES)
def test_full_width_selection_is_the_teacher(tiny_model, family):
    teacher = load_model(tiny_model(family))
    D = teacher.args.dim
    projections, norms, _ = init_projections("select", teacher, D, batches=calib_batches())
    student = Student(teacher, D, projections, norms)
    tokens = calib_batches(1, seed=7)[0]
    with torch.no_grad():
        torch.testing.assert_close(student(tokens), teacher(tokens), atol=1e-5, rtol=0)


def test_trainable_state_is_projections_and_gains_only(tiny_model):
    teacher = load_model(tiny_model("llama"))  # untied: the LM head has its own projection
    D, W, L = teacher.args.dim, 32, teacher.args.n_layers
    student = Student(teacher, W, *init_projections("gaussian", teacher, W)[:2])
    state = student.state_dict()
    expected = {"embed", "lm_head", "norm"} | {f"layers.{i}.{n}" for i in range(L) for n in PROJECTIONS + LAYER_NORMS}
    assert set(state) == expected
    assert all(state[f"layers.0.{n}"].shape == (D, W) for n in PROJECTIONS)
    assert all(state[f"layers.1.{n}"].shape == (W,) for n in LAYER_NORMS)
    assert sum(p.numel() for p in student.parameters()) == sum(v.numel() for v in state.values())
    assert not any(p.requires_grad for p in teacher.parameters())  # frozen, and not in student.parameters()
    assert student.args.dim == W and student.args.head_dim == teacher.args.head_dim
    # the state round-trips: from_state_dict rebuilds the same student
    again = Student.from_state_dict(teacher, {k: v.clone() for k, v in state.items()})
    tokens = calib_batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), student(tokens), atol=0, rtol=0)


def test_width_rules_name_the_nearest_valid_widths(tiny_model):
    args = load_model(tiny_model("llama")).args  # D 64, 4 heads
    for bad in (0, -4, 68):
        with pytest.raises(StudentError, match="outside 1..64"):
            check_width(args, bad)
    with pytest.raises(StudentError, match="use 28 or 32"):
        check_width(args, 30)
    with pytest.raises(StudentError, match="use 60 or 64"):
        check_width(args, 62)
    check_width(args, 64)  # full width is allowed (the identity check above uses it)
    smollm = args.__class__(**{**vars(args), "dim": 576, "n_heads": 9})
    with pytest.raises(StudentError, match="use 297 or 306"):
        check_width(smollm, 300)


# ---------------------------------------------------------------------------------------------------------
# merge() -> save_model -> transformers gives the student's logits

@pytest.mark.parametrize("family", FAMILIES)
def test_merged_student_loads_in_transformers_with_same_logits(tiny_model, tmp_path, family):
    from transformers import AutoModelForCausalLM
    teacher_dir = tiny_model(family)
    teacher = load_model(teacher_dir)
    tokens = calib_batches(1, seed=3)[0]
    for i, kind in enumerate(KINDS):
        student = Student(teacher, 32, *init_projections(kind, teacher, 32, batches=calib_batches(), seed=i)[:2])
        perturb(student, seed=i)
        out = tmp_path / f"{family}-{kind}"
        save_model(student.merge(), out, like=teacher_dir)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            ours, theirs = student(tokens), hf(tokens).logits
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0, msg=lambda m: f"{family}/{kind}: {m}")


def test_merge_cli(tiny_model, tmp_path):
    teacher_dir = tiny_model("qwen2")
    teacher = load_model(teacher_dir)
    student = Student(teacher, 48, *init_projections("orthogonal", teacher, 48)[:2])
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp_path / "s.safetensors"))
    (tmp_path / "bad.safetensors").write_text("not a safetensors file")
    run = lambda state, out: subprocess.Popen([sys.executable, "student.py", "--teacher", teacher_dir, "--state",
                                               str(tmp_path / state), "--out", str(tmp_path / out)],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    good, bad = run("s.safetensors", "merged"), run("bad.safetensors", "m2")  # side by side: each imports torch
    (_, good_err), (_, bad_err) = good.communicate(), bad.communicate()
    assert good.returncode == 0, good_err
    tokens = calib_batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged")(tokens), student(tokens), atol=1e-5, rtol=0)
    assert bad.returncode == 2 and bad_err.startswith("error:") and "Traceback" not in bad_err
    assert len(bad_err.strip().splitlines()) == 1 and not (tmp_path / "m2").exists()


# ---------------------------------------------------------------------------------------------------------
# Materialise once, run micro-batches on detached leaves, back-propagate once

def test_backward_through_leaves_matches_direct_backward(tiny_model):
    teacher = load_model(tiny_model("qwen2"))  # biases: frozen teacher constants among the weights
    student = Student(teacher, 32, *init_projections("gaussian", teacher, 32, seed=1)[:2])
    perturb(student, seed=2)
    tokens = calib_batches(1, seed=5)[0]  # (2, 24)
    loss_of = lambda logits, t: torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), t[:, 1:].flatten())

    loss_of(student(tokens), tokens).backward()  # direct: autograd through materialize() in one go
    direct = {k: p.grad.clone() for k, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    with torch.no_grad():
        leaves = leaf_copies(student.materialize())
    for half in tokens.split(1):  # two micro-batches, grads accumulate on the leaves
        (loss_of(student(half, weights=leaves), half) / 2).backward()
    assert all(p.grad is None for p in student.parameters())  # nothing has reached the projections yet
    backward_through(student, leaves)
    for k, p in student.named_parameters():
        torch.testing.assert_close(p.grad, direct[k], atol=1e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")
