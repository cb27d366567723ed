"""What one training step holds for its backward, plain against lean, at the paper's shapes, counted on a CPU.

Llama-3.2-3B-Instruct's released configuration (width 3072, 24/8 heads of 128, FFN 8192), cut to one layer and a
2,048-token vocabulary (neither changes what a layer holds per token), a random bf16 teacher, distilled to width
1536 under CPU bf16 autocast: one real distill.train_step, with the plain pieces (distill.PlainStep) and with
lean.LeanStep. (With --recompute a block keeps only its input for the backward, but the clone targets must
then outlive the forward, since the replayed block asks for them again.)

Counted, with torch.autograd.graph.saved_tensors_hooks, as distinct storages (a tensor saved twice counts once):
  per token per layer  what the student's block saves for the backward, per token: the tensors packed while the
                       block runs, at two sequence lengths, their difference over the difference in tokens;
  targets held         the teacher's clone targets that the step keeps beside them until its backward (the
                       plain CloneLoss keeps them all; the lean one lets each go once its term is formed, and
                       mlp_out's, which P_down's gradient needs, is counted among the saved tensors);
  weights held         the materialised weights and autocast's bf16 copies of them saved for the backward, as a
                       multiple of the weights' bytes in bf16 (fp32 leaves and a bf16 copy: 3).
Counts, not timings: the same on every run and machine of one torch version.

Builds on distill.py (train_step, PlainStep), lean.py, kd_loss.py (TeacherTargets), student.py, init_select.py,
bench/bench_gpu.py (random_teacher) and bench/paper_shapes.py (the released config).
Run as: python bench/bench_memory.py [--layers 1] [--tokens 128 384]
"""
import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distill  # noqa: E402
import lean  # noqa: E402
from bench_gpu import random_teacher  # noqa: E402
from init_select import init_projections  # noqa: E402
from kd_loss import TeacherTargets  # noqa: E402
from paper_shapes import LLAMA_3_2_3B  # noqa: E402
from run_config import Config  # noqa: E402
from student import Student  # noqa: E402

GOAL = 110_000  # bytes saved per token per layer under bf16 autocast, the lean step's budget


class SavedBytes:
    """saved_tensors_hooks that record each saved storage once, and which student block (if any) was running."""

    def __init__(self, student: Student):
        self.storages: dict[int, tuple] = {}  # storage address -> (bytes, block, shape, dtype)
        self.block = None
        for i, block in enumerate(student.shell.layers):
            block.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "block", i))
            block.register_forward_hook(lambda m, a, out: setattr(self, "block", None))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self.storages.setdefault(storage.data_ptr(), (storage.nbytes(), self.block, tuple(t.shape), t.dtype))
        return t

    def in_block(self, i: int) -> int:
        return sum(n for n, block, _, _ in self.storages.values() if block == i)

    def weights(self, leaves: dict[str, torch.Tensor]) -> int:
        """Bytes of the materialised weights and of autocast's bf16 copies of them saved for the backward
        (saved bf16 tensors shaped like a weight whose leaf is not bf16)."""
        held = {w.untyped_storage().data_ptr(): w.untyped_storage().nbytes() for w in leaves.values()}
        cast = {tuple(w.shape) for w in leaves.values() if w.dim() == 2 and w.dtype != torch.bfloat16}
        held |= {ptr: n for ptr, (n, _, shape, dtype) in self.storages.items()
                 if shape in cast and dtype == torch.bfloat16}
        return sum(held.values())


def counted_pack(counter: SavedBytes):
    """NormRecipes.pack that also counts what it saves as a tensor (a recipe holds the norm's input, counted
    where the norm saves it)."""
    def pack(self, t):
        packed = RECIPES_PACK(self, t)
        if isinstance(packed, torch.Tensor):
            counter.pack(t)
        return packed
    return pack


RECIPES_PACK = lean.NormRecipes.pack


def one_step(teacher, width: int, tokens: int, step: str, recompute: bool) -> dict:
    """One train_step of `step` ("plain" or "lean") on one sequence of `tokens` tokens: what it held."""
    proj, norms, _ = init_projections("gaussian", teacher, width, seed=0)  # what is saved does not depend on it
    student = Student(teacher, width, proj, norms)
    pieces = distill.PlainStep
    if step == "lean":
        student, pieces = lean.make_lean(student, recompute), lean.LeanStep(torch.bfloat16, recompute)
    cfg = Config(recompute=recompute)
    counter = SavedBytes(student)
    lean.NormRecipes.pack = counted_pack(counter)  # a LeanBlock's own hooks see its saves: count them there
    leaves_seen, targets_seen = {}, {}
    materialize, clone_loss = pieces.materialize, pieces.clone_loss

    def keep_leaves(s):  # the step's materialised weights, to count them
        leaves_seen.update(materialize(s))
        return leaves_seen

    def keep_targets(targets, *args, **kwargs):  # what the clone loss holds once the forward is done
        loss = clone_loss(targets, *args, **kwargs)
        targets_seen["acts"] = targets.acts
        return loss

    class Counted:
        materialize, backward, clone_loss = staticmethod(keep_leaves), pieces.backward, staticmethod(keep_targets)

    batch = torch.randint(0, 2048, (1, tokens), generator=torch.Generator().manual_seed(0))
    held_targets = {}

    def before_backward(self, *args, **kwargs):  # the moment the forward is complete: count the targets held
        held_targets["bytes"] = sum(t.untyped_storage().nbytes() for (layer, _), t in targets_seen["acts"].items()
                                    if layer == 0)
        return original_backward(self, *args, **kwargs)

    original_backward = torch.Tensor.backward
    torch.Tensor.backward = before_backward
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            distill.train_step(student, teacher, [batch], cfg, torch.autocast("cpu", dtype=torch.bfloat16), 2048,
                               step=Counted)
    finally:
        torch.Tensor.backward = original_backward
        lean.NormRecipes.pack = RECIPES_PACK
    bf16_weights = sum(w.numel() * 2 for w in leaves_seen.values() if w.dim() == 2)
    return {"block": counter.in_block(0), "targets": held_targets["bytes"],
            "weights": counter.weights(leaves_seen) / bf16_weights}


def measure(layers: int = 1, tokens=(128, 384), width: int = 1536, steps=("plain", "lean")) -> dict[str, dict]:
    """{row: {"saved": bytes per token per layer, "targets": held beside, per token per layer, "weights": x}}."""
    config = dict(LLAMA_3_2_3B, num_hidden_layers=layers, vocab_size=2048)
    teacher = random_teacher(config, "cpu", torch.bfloat16)
    rows = {}
    for step in steps:
        short, long = (one_step(teacher, width, t, step, recompute=False) for t in tokens)
        per_token = lambda key: (long[key] - short[key]) / (tokens[1] - tokens[0])  # noqa: E731
        rows[step] = {"saved": per_token("block"), "targets": per_token("targets"), "weights": long["weights"]}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--tokens", type=int, nargs=2, default=[128, 384])
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    rows = measure(args.layers, tuple(args.tokens))
    print(f"Llama-3.2-3B shapes -> width 1536, CPU bf16 autocast, {args.layers} layer(s), "
          f"{args.tokens[0]} and {args.tokens[1]} tokens")
    print("| step | saved for backward, bytes per token per layer | + targets held | total | weights held (x bf16) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['saved']:,.0f} | {r['targets']:,.0f} | {r['saved'] + r['targets']:,.0f} | "
              f"{r['weights']:.2f} |")
    plain, fast = rows["plain"], rows["lean"]
    print(f"lean / plain, saved + held: {(fast['saved'] + fast['targets']) / (plain['saved'] + plain['targets']):.2f}"
          f"; goal {GOAL:,} bytes: {'met' if fast['saved'] + fast['targets'] <= GOAL else 'NOT met'}"
          f" ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
