"""Where one distillation step spends its time, and how close it runs to the machine's matmul rate.

One optimizer step is distill.train_step itself (the real step: materialise the student's weights once,
teacher and student forward per micro-batch, the KD loss, backward, one backward through the materialisation)
plus AdamW. Its parts are timed by calling the same library functions on their own: the materialisation
(student.materialize) and the teacher forward with its clone-target tap; the rest of the step is the student's
forward and backward and the backward through the materialisation. Tokens per step are fixed (--batch x
--seq-len); one micro-batch and --accum micro-batches, each with the KD loss on the full logits and chunked
(--kd-chunk tokens at a time, distill.py's default), and one micro-batch chunked with the student's blocks
recomputed in the backward (--recompute), are run in one process. The FLOP rate is compared with a
plain torch.mm of the same dtype measured in the same process; the step's peak memory is what the step adds
to the process (CPU: resident set sampled by a thread; CUDA: the allocator's peak).

The plain step (distill.PlainStep) runs every setting; the lean one (lean.py) the two chunked ones, beside it.

Builds on distill.py (train_step, PlainStep, Config), lean.py, kd_loss.py, student.py and init_select.py.
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
from kd_loss import TeacherTargets  # noqa: E402
from load_weights import load_model  # noqa: E402
from run_config import Config  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from bench.timing import peak_memory  # noqa: E402
from lean import LeanStep, make_lean  # noqa: E402
from student import Student  # noqa: E402


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


def step_flops(teacher, width: int, tokens: int, materialise_units: int = 3) -> dict:
    """Weight-matmul FLOPs of one step, from the teacher's shapes: 2 per weight entry per token forward, twice
    that backward (an untied embedding is a lookup, not a matmul). Every student matrix is a teacher matrix with
    D_t -> W on one side; materialising it costs 2 D_t W per teacher entry, `materialise_units` times: the plain
    step (distill.PlainStep) 3 (W_t P, W_t P again inside backward_through, and dP), the lean one 2 (lean.py)."""
    n_teacher = sum(p.numel() for p in teacher.parameters() if p.dim() == 2)  # incl. the LM head
    lookup = 0 if teacher.lm_head is None else teacher.embed_tokens.weight.numel()  # no matmul per token
    per_token = (n_teacher - lookup) // teacher.args.dim
    return {"teacher": 2 * per_token * teacher.args.dim * tokens, "student": 6 * per_token * width * tokens,
            "materialise": materialise_units * 2 * n_teacher * width}


def clock(fn, device) -> float:
    """Seconds fn() takes, the device synchronised on both sides."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def timed_step(student, teacher, optimizer, micro, cfg, autocast, device, vocab_size, step) -> dict:
    """One real optimizer step (distill.train_step with `step`'s pieces + AdamW), and the library calls it is made
    of, timed alone."""
    def real_step():
        distill.train_step(student, teacher, micro, cfg, autocast, vocab_size, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_forwards():
        with torch.no_grad(), autocast:
            for tokens in micro:
                teacher(tokens, tap=TeacherTargets(cfg.clone_terms).tap)
    with torch.no_grad():
        materialise = clock(lambda: step.materialize(student), device)
    total = clock(real_step, device)
    teacher_s = clock(teacher_forwards, device)
    return {"total": total, "materialise": materialise, "teacher": teacher_s,
            "student": total - materialise - teacher_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--accum", type=int, default=8, help="micro-batches per step in the second run")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--kd-chunk", type=int, default=Config.kd_chunk, help="tokens per chunk of the chunked loss")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    on_gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    teacher = load_model(args.teacher or build_example_teacher(), device=args.device, dtype=dtype)
    teacher.requires_grad_(False)
    proj, norms, _ = init_projections("gaussian", teacher, args.width)  # the init does not change the cost
    pieces = {"plain": (Student(teacher, args.width, proj, norms), distill.PlainStep),
              "lean": (make_lean(Student(teacher, args.width, proj, norms)), LeanStep(dtype))}
    pieces = {k: (s, torch.optim.AdamW(s.parameters(), lr=1e-4), step) for k, (s, step) in pieces.items()}
    peak = matmul_rate(dtype, args.device)
    tokens = torch.randint(0, teacher.args.vocab_size, (args.batch, args.seq_len), device=args.device)
    print(f"{args.device}, {dtype}, {torch.get_num_threads()} threads; width {args.width}; "
          f"{args.batch} x {args.seq_len} tokens per step; torch.mm rate {peak / 1e9:.1f} GFLOP/s")
    print(f"{'step':>5s} {'accum':>5s} {'KD loss':>13s} {'recompute':>9s} {'step s':>7s} {'tok/s':>6s} {'step peak MiB':>13s} "
          f"{'materialise':>11s} {'teacher':>7s} {'student+bwd':>11s} {'GFLOP/s':>7s} {'of mm':>6s}")
    chunk = args.kd_chunk
    settings = [("plain", 1, 0, False), ("plain", 1, chunk, False), ("plain", 1, chunk, True),
                ("plain", args.accum, 0, False), ("plain", args.accum, chunk, False),
                ("lean", 1, chunk, False), ("lean", args.accum, chunk, False)]
    results = {}
    for kind, accum, kd_chunk, recompute in settings:  # each setting's own warm-up, then its timed steps
        micro = list(tokens.chunk(accum))
        # the red preset's loss: T = 1, alpha 0.2, every clone term, seq_sum
        cfg = Config(kd_chunk=kd_chunk, recompute=recompute)
        student, optimizer, pieces_of = pieces[kind]
        step = lambda: timed_step(student, teacher, optimizer, micro, cfg, autocast, args.device,  # noqa: E731
                                  teacher.args.vocab_size, pieces_of)
        step()
        runs = [step() for _ in range(args.steps)]
        _, peak_bytes = peak_memory(step, args.device)  # one more step, its memory watched (not timed)
        results[kind, accum, kd_chunk, recompute] = ({k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
                                                     | {"peak": peak_bytes})
    for (kind, accum, kd_chunk, recompute), parts in results.items():
        # recomputation is not counted as work; the lean step materialises twice, the plain one three times
        flops = sum(step_flops(teacher, args.width, tokens.numel(), 2 if kind == "lean" else 3).values())
        total = parts["total"]
        share = lambda k: f"{parts[k] / total:.1%}"
        loss = f"chunks of {kd_chunk}" if kd_chunk else "full logits"
        print(f"{kind:>5s} {accum:5d} {loss:>13s} {'yes' if recompute else 'no':>9s} {total:7.2f} {tokens.numel() / total:6.0f} "
              f"{parts['peak'] / 2**20:13.0f} {share('materialise'):>11s} {share('teacher'):>7s} "
              f"{share('student'):>11s} {flops / total / 1e9:7.1f} {flops / total / peak:6.1%}")
    for base, other, name in (
            (("plain", 1, 0, False), ("plain", 1, chunk, False), "chunked / full logits"),
            (("plain", args.accum, 0, False), ("plain", args.accum, chunk, False), "chunked / full logits"),
            (("plain", 1, 0, False), ("plain", 1, chunk, True), "chunked + recompute / full logits"),
            (("plain", 1, chunk, False), ("lean", 1, chunk, False), "lean / plain step, chunked"),
            (("plain", args.accum, chunk, False), ("lean", args.accum, chunk, False), "lean / plain step, chunked")):
        a, b = results[base], results[other]
        print(f"accum {base[1]}: {name}: step time {b['total'] / a['total']:.2f}x, "
              f"step peak memory {b['peak'] / a['peak']:.2f}x")


if __name__ == "__main__":
    main()
