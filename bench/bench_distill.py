"""Where one distillation step spends its time, and how close it runs to the machine's matmul rate.

One optimizer step of distill.py is timed in its parts: materialising the student weights (W_s = W_t P),
the teacher forward, the student forward + backward, and the backward through the materialisation. Tokens
per step are fixed (--batch x --seq-len x --accum); grad-accum 1 and --accum are run side by side. The FLOP
rate is compared with a plain torch.mm of the same dtype measured in the same process.

Builds on distill.py (the loss pieces), student.py and init_select.py.
Run as: python bench/bench_distill.py [--teacher DIR] [--width 288] [--batch 8] [--seq-len 512] [--accum 8]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distill  # noqa: E402
from init_select import init_projections  # noqa: E402
from load_weights import load_model  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from student import Student, backward_through, leaf_copies  # noqa: E402


def matmul_rate(dtype, device, n=2048, repeats=5) -> float:
    """FLOP/s of a square torch.mm, the ceiling a step is compared against."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def step_flops(teacher, student, tokens: int) -> dict:
    """Matmul FLOPs of one step: 2 per weight per token forward, twice that backward."""
    n_teacher = sum(p.numel() for n, p in teacher.named_parameters() if p.dim() == 2)  # incl. the LM head
    with torch.no_grad():  # shapes only
        weights = student.materialize()
    n_student = sum(w.numel() for k, w in weights.items() if w.dim() == 2)
    n_proj = sum(teacher.get_parameter(k).numel() * student.args.dim
                 for k, w in weights.items() if w.dim() == 2 and not k.startswith("lm_head"))
    # materialisation: once forward, once again inside backward_through, and its backward (2x)
    return {"teacher": 2 * n_teacher * tokens, "student": 6 * n_student * tokens, "materialise": 4 * 2 * n_proj}


def timed_step(student, teacher, micro, autocast, device) -> dict:
    """distill.train_step's work, with a clock around each part."""
    times = dict.fromkeys(["materialise", "teacher", "student", "backward_through"], 0.0)
    clock = lambda: (sync(device), time.perf_counter())[1]
    t = clock()
    with torch.no_grad():
        leaves = leaf_copies(student.materialize())
    times["materialise"] += clock() - t
    for tokens in micro:
        t = clock()
        with torch.no_grad(), autocast:
            t_taps = distill.TeacherTaps()
            t_logits = teacher(tokens, taps=t_taps)
        times["teacher"] += clock() - t
        t = clock()
        with autocast:
            s_taps = distill.CloneTaps(t_taps, teacher, student)
            s_logits = student(tokens, taps=s_taps, weights=leaves)
        loss = (distill.ce_loss(s_logits, tokens) + distill.kl_loss(s_logits, t_logits, 1.0, "seq_sum")
                + 0.2 * sum(s_taps.loss.values()))
        (loss / len(micro)).backward()
        times["student"] += clock() - t
    t = clock()
    backward_through(student, leaves)
    times["backward_through"] += clock() - t
    student.zero_grad(set_to_none=True)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--accum", type=int, default=8, help="micro-batches per step in the second run")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    on_gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    teacher = load_model(args.teacher or build_example_teacher(), device=args.device, dtype=dtype)
    teacher.requires_grad_(False)
    proj, norms, _ = init_projections("gaussian", teacher, args.width)  # the init does not change the cost
    student = Student(teacher, args.width, proj, norms)
    peak = matmul_rate(dtype, args.device)
    tokens = torch.randint(0, teacher.args.vocab_size, (args.batch, args.seq_len), device=args.device)
    print(f"{args.device}, {dtype}, {torch.get_num_threads()} threads; width {args.width}; "
          f"{args.batch} x {args.seq_len} tokens per step; torch.mm rate {peak / 1e9:.1f} GFLOP/s")
    print(f"{'accum':>5s} {'step s':>8s} {'tok/s':>8s} {'materialise':>12s} {'teacher':>8s} {'student':>8s} "
          f"{'bwd-thru':>9s} {'GFLOP/s':>8s} {'of mm':>6s}")
    for accum in (1, args.accum):
        micro = list(tokens.chunk(accum))
        timed_step(student, teacher, micro, autocast, args.device)  # warm-up
        runs = [timed_step(student, teacher, micro, autocast, args.device) for _ in range(args.steps)]
        parts = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        total = sum(parts.values())
        flops = sum(step_flops(teacher, student, tokens.numel()).values())
        share = lambda k: f"{parts[k] / total:7.1%}"
        print(f"{accum:5d} {total:8.2f} {tokens.numel() / total:8.0f} {share('materialise'):>12s} "
              f"{share('teacher'):>8s} {share('student'):>8s} {share('backward_through'):>9s} "
              f"{flops / total / 1e9:8.1f} {flops / total / peak:6.1%}")


if __name__ == "__main__":
    main()
