"""One GPU: RED's distillation step at the paper's scale, and CUDA checked against the CPU.

1. Throughput. A randomly initialised teacher with Llama-3.2-3B-Instruct's exact configuration
   (paper_shapes.LLAMA_3_2_3B: nothing is downloaded), distilled to width 1536 at 2048 tokens per sequence in
   bf16 autocast: one real optimizer step is distill.train_step (chunked KD loss, the red preset's loss) plus AdamW, one
   micro-batch per step. The micro-batch is swept over MICRO_BATCHES sequences until one does not fit. For
   each: tokens/s, the step's peak memory (torch.cuda.max_memory_allocated) and the model FLOP utilisation
       MFU = step FLOPs / step time / --peak-tflops (989 TFLOP/s: H100 / H200 SXM, dense bf16)
   with the FLOPs written out: teacher forward 2 N_t per token; student forward and backward 6 N_s per token
   (N = the matmul weights, LM head included); causal attention 2 * 2 * T/2 * H * Dh per token and layer
   forward (QK^T and AV), 3x that for the student's forward and backward; the materialisation of the student's
   weights, 2 D_t W per weight entry, 3x for the plain step (forward, again inside backward_through, dP) and 2x
   for the lean one (forward, dP). Both steps are swept, the lean one (lean.py, distill.py's default on CUDA)
   first, then the plain one (distill.PlainStep), and compared at LRC's 3 x 2048 tokens per GPU.
   --compile also times the student's forward under torch.compile; --recompute sweeps with the student's blocks
   recomputed in the backward (distill.py --recompute), for when memory binds.
   ZeRO: the lean step at 3 x 2048 once more with distill.py's optimizer under torchrun (make_optimizer: AdamW's
   moments sharded over the ranks), this process standing in for rank 0 of --zero-ranks: torch's fake process
   group gives it that rank and world size and returns from every collective at once, so it holds what rank 0
   holds (its share of AdamW's state, distill.py's flat gradient buffer), NCCL's own buffers not counted.
2. Correctness on a tiny Llama: 20 steps on CUDA in fp32 equal 20 steps on the CPU to 1e-4 (largest
   difference of any projection entry, relative to the largest entry), and in bf16 autocast within 5e-2.

LRC's reference point: 84K tokens/s on 8 x H800 for its 1.5B student (10.5K per GPU), 56 GB per GPU at
6,144 tokens per GPU. Run as: python bench/bench_gpu.py [--peak-tflops 989] [--compile] [--recompute]
(--device cpu --tiny runs the same code on a small model on the CPU: what the test suite does).

Builds on distill.py (train_step, PlainStep), lean.py, run_config.py (Config), student.py, init_select.py,
load_weights.py and model.py.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distill  # noqa: E402
import lean  # noqa: E402
from init_select import init_projections  # noqa: E402
from load_weights import args_from_hf_config  # noqa: E402
from model import Transformer, rope_inv_freq  # noqa: E402
from paper_shapes import LLAMA_3_2_3B  # noqa: E402  the released config.json
import bench_distill  # noqa: E402  one FLOP count for both benchmarks
from run_config import Config  # noqa: E402
from student import Student, all_reduce_grads  # noqa: E402

TINY_LLAMA = dict(LLAMA_3_2_3B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)
MICRO_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16)  # sequences per micro-batch; 3 x 2048 = LRC's 6,144 tokens per GPU


def random_teacher(config: dict, device, dtype) -> Transformer:
    """A Transformer of this HF config with N(0, 0.02^2) matrices and unit norm gains, frozen, in eval mode."""
    args = args_from_hf_config(config)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
            else:
                p.fill_(1.0)
    return cast(model, dtype).eval().requires_grad_(False)


def cast(model: Transformer, dtype, device=None) -> Transformer:
    """model.to(device, dtype) with RoPE's inverse frequencies kept in fp32 (as load_weights.load_model does)."""
    model.to(device=device, dtype=dtype)
    model.inv_freq = rope_inv_freq(model.args).to(model.embed_tokens.weight.device)
    return model


def step_flops(teacher: Transformer, width: int, batch: int, seq_len: int, materialise_units: int) -> dict:
    """The FLOPs of one step, by part (see the module docstring): bench_distill's weight matmuls plus causal
    attention, 2 * 2 * T/2 * H * Dh per token and layer forward, 3x that for the student's forward and backward."""
    a, tokens = teacher.args, batch * seq_len
    flops = bench_distill.step_flops(teacher, width, tokens, materialise_units)
    attention = 2 * 2 * (seq_len / 2) * a.n_heads * a.head_dim * a.n_layers * tokens
    return flops | {"teacher": flops["teacher"] + attention, "student": flops["student"] + 3 * attention}


def one_step(student, teacher, optimizer, tokens, cfg, autocast, vocab_size, step=distill.PlainStep):
    distill.train_step(student, teacher, [tokens], cfg, autocast, vocab_size, step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def prepared(kind: str, teacher, width: int, dtype: torch.dtype, recompute: bool) -> tuple:
    """(student, optimizer, train_step's pieces) of the "plain" or "lean" step (training in `dtype`), as
    distill.py makes them."""
    proj, norms, _ = init_projections("gaussian", teacher, width, seed=0)
    student = Student(teacher, width, proj, norms)
    if kind == "plain":
        return student, torch.optim.AdamW(student.parameters(), lr=1e-4), distill.PlainStep
    on_gpu = teacher.embed_tokens.weight.is_cuda
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True if on_gpu else None)
    return lean.make_lean(student, recompute), optimizer, lean.LeanStep(dtype, recompute)


def throughput(args):
    device, width, seq_len = args.device, args.width, args.seq_len
    on_gpu = device.startswith("cuda")
    teacher = random_teacher(TINY_LLAMA if args.tiny else LLAMA_3_2_3B, device,
                             torch.bfloat16 if on_gpu else torch.float32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    cfg = Config(recompute=args.recompute)  # the red preset's loss, chunked
    name = "tiny Llama" if args.tiny else "Llama-3.2-3B (random weights)"
    at_lrc = {}  # step kind -> (tokens/s, peak GiB) at LRC's 3 sequences per GPU
    for kind in args.step:
        student, optimizer, step = prepared(kind, teacher, width, torch.bfloat16 if on_gpu else torch.float32,
                                            args.recompute)
        print(f"\n{kind} step: {name} -> width {width}, seq {seq_len}, {'bf16 autocast' if on_gpu else 'fp32'} on "
              f"{device}; peak {args.peak_tflops} TFLOP/s{'; blocks recomputed in the backward' * args.recompute}")
        print(f"{'micro-batch':>11s} {'tokens':>7s} {'step s':>7s} {'tok/s':>8s} {'peak GiB':>8s} {'MFU':>6s}")
        run = lambda tokens: one_step(student, teacher, optimizer, tokens, cfg, autocast,  # noqa: E731
                                      teacher.args.vocab_size, step)
        for batch in MICRO_BATCHES[:args.max_sweep]:
            tokens = torch.randint(0, teacher.args.vocab_size, (batch, seq_len), device=device)
            try:
                run(tokens)  # warm-up
                if on_gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for _ in range(args.steps):
                    run(tokens)
                if on_gpu:
                    torch.cuda.synchronize()
            except torch.cuda.OutOfMemoryError:
                print(f"{batch:11d} {batch * seq_len:7d}  out of memory: the sweep ends here")
                break
            seconds = (time.perf_counter() - start) / args.steps
            peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
            flops = step_flops(teacher, width, batch, seq_len, 3 if kind == "plain" else 2)
            mfu = sum(flops.values()) / seconds / (args.peak_tflops * 1e12)
            if batch == 3:
                at_lrc[kind] = (batch * seq_len / seconds, peak)
            print(f"{batch:11d} {batch * seq_len:7d} {seconds:7.3f} {batch * seq_len / seconds:8.0f} {peak:8.1f} "
                  f"{mfu:6.1%}   FLOPs: " + ", ".join(f"{k} {v / 1e12:.1f}T" for k, v in flops.items()), flush=True)
        del student, optimizer
        if on_gpu:
            torch.cuda.empty_cache()
    if len(at_lrc) == 2:
        (lean_tps, lean_peak), (plain_tps, plain_peak) = at_lrc["lean"], at_lrc["plain"]
        print(f"\nat 3 x {seq_len} tokens: lean {lean_tps:.0f} tokens/s, {lean_peak:.1f} GiB; plain {plain_tps:.0f} "
              f"tokens/s, {plain_peak:.1f} GiB; lean / plain: {lean_tps / plain_tps:.2f}x the speed, "
              f"{lean_peak / plain_peak:.2f}x the memory")
    if "lean" in args.step:
        zero_memory(args, teacher, autocast, cfg, at_lrc.get("lean"))
    if args.compile:
        student, _, _ = prepared("plain", teacher, width, torch.float32, False)
        compiled = torch.compile(student)
        tokens = torch.randint(0, teacher.args.vocab_size, (1, seq_len), device=device)
        with torch.no_grad(), autocast:
            for label, model in (("eager", student), ("torch.compile", compiled)):
                model(tokens, head=False)
                start = time.perf_counter()
                for _ in range(args.steps):
                    model(tokens, head=False)
                if on_gpu:
                    torch.cuda.synchronize()
                print(f"student forward, 1 x {seq_len}, {label}: {(time.perf_counter() - start) / args.steps:.3f} s")


def adamw_state_bytes(optimizer) -> int:
    """Bytes of AdamW's state this process holds (ZeroRedundancyOptimizer: its shard's)."""
    inner = getattr(optimizer, "optim", optimizer)
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if torch.is_tensor(t))


def zero_memory(args, teacher, autocast, cfg, whole):
    """The lean step at 3 sequences with AdamW sharded as under torchrun, as rank 0 of --zero-ranks (see the
    module docstring); `whole`: the sweep's (tokens/s, peak GiB) with the whole AdamW, for comparison."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # torch's own single-process stand-in
    on_gpu = args.device.startswith("cuda")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.zero_ranks)
    try:
        student, _, step = prepared("lean", teacher, args.width, torch.bfloat16 if on_gpu else torch.float32,
                                    args.recompute)
        optimizer = distill.make_optimizer(cfg, student, args.zero_ranks, True if on_gpu else None)
        params = list(student.parameters())
        tokens = torch.randint(0, teacher.args.vocab_size, (3, args.seq_len), device=args.device)
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # AdamW's state is made by the first step
            distill.train_step(student, teacher, [tokens], cfg, autocast, teacher.args.vocab_size, step)
            all_reduce_grads(params, args.zero_ranks)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
        held, full = adamw_state_bytes(optimizer), 2 * sum(p.numel() * p.element_size() for p in params)
        print(f"\nZeRO, lean step at 3 x {args.seq_len} tokens, as rank 0 of {args.zero_ranks}: peak {peak:.1f} GiB"
              + (f" (the whole AdamW: {whole[1]:.1f} GiB)" if whole else "")
              + f"; AdamW's state held {held / 2**20:.1f} of {full / 2**20:.1f} MiB ({held / full:.3f})")
    finally:
        dist.destroy_process_group()
        if on_gpu:
            torch.cuda.empty_cache()


def train_20_steps(teacher, device, autocast, steps=20, kind="plain") -> dict:
    """The projections after `steps` AdamW steps of the "plain" or "lean" step from one Gaussian init."""
    teacher = cast(teacher, teacher.embed_tokens.weight.dtype, device)
    student, optimizer, step = prepared(kind, teacher, 32, torch.bfloat16, False)  # lean: bf16 weights
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    data = torch.randint(0, teacher.args.vocab_size, (steps, 4, 64), generator=torch.Generator().manual_seed(1))
    for tokens in data:
        one_step(student, teacher, optimizer, tokens.to(device), Config(kd_chunk=100), autocast,
                 teacher.args.vocab_size, step)
    return {k: v.detach().cpu() for k, v in student.state_dict().items()}


def correctness(args):
    teacher = random_teacher(TINY_LLAMA, "cpu", torch.float32)
    reference = train_20_steps(teacher, "cpu", torch.autocast("cpu", enabled=False))
    scale = max(v.abs().max().item() for v in reference.values())
    if not args.device.startswith("cuda"):
        print("correctness: no CUDA device here - the CUDA-against-CPU check needs a GPU")
        return True
    ok = True
    for label, autocast, tolerance, kind in (
            ("fp32", torch.autocast("cuda", enabled=False), 1e-4, "plain"),
            ("bf16 autocast", torch.autocast("cuda", dtype=torch.bfloat16), 5e-2, "plain"),
            ("bf16 autocast, lean step", torch.autocast("cuda", dtype=torch.bfloat16), 5e-2, "lean")):
        if label == "fp32":
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 matmuls would be a 1e-3 difference by design
        teacher_dtype = torch.float32 if label == "fp32" else torch.bfloat16  # distill.py's teacher on a GPU
        cuda = train_20_steps(cast(random_teacher(TINY_LLAMA, "cpu", torch.float32), teacher_dtype), args.device,
                              autocast, kind=kind)
        worst = max((cuda[k] - reference[k]).abs().max().item() for k in reference) / scale
        ok &= worst <= tolerance
        print(f"correctness, 20 steps, CUDA {label} vs CPU fp32: largest difference {worst:.2e} of the largest "
              f"entry (tolerance {tolerance:g}) - {'ok' if worst <= tolerance else 'FAILED'}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 3B configuration")
    parser.add_argument("--width", type=int, default=1536, help="student width (LRC-1.5B: 1536)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per micro-batch size")
    parser.add_argument("--max-sweep", type=int, default=len(MICRO_BATCHES), help="micro-batch sizes to try")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--recompute", action="store_true", help="activation checkpointing of the student "
                                                                 "(its extra forward is not counted in the MFU)")
    parser.add_argument("--compile", action="store_true", help="also time the student forward under torch.compile")
    parser.add_argument("--zero-ranks", type=int, default=8, help="ranks AdamW's state is sharded over in the "
                                                                    "ZeRO measurement (one process stands in)")
    parser.add_argument("--step", nargs="+", choices=["lean", "plain"], default=["lean", "plain"],
                        help="the training steps to sweep (default both, lean first)")
    args = parser.parse_args()
    ok = correctness(args)
    throughput(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
