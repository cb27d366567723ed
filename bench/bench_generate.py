"""Batched greedy decoding throughput, the workload of eval_reasoning.py: ours vs `transformers.generate`.

The example teacher (fp32, same thread count, same process) continues chat-formatted synthetic word problems
of different lengths, so batches are left-padded on both sides exactly as in an evaluation. Eos is switched
off on both sides (ours: eos_ids=(); transformers: eos_token_id=None plus min_new_tokens) so every row really
generates --new-tokens tokens, and tokens/s counts rows x new tokens over the whole call, prefill included.
Each figure is the median of --repeats timed runs (ours and transformers alternating) after a short
warm-up; ratio = ours / transformers in tokens/s (> 1.0 means we are faster). The rows whose tokens equal
transformers' are counted as a check (with padding, a rare fp tie between two logits may flip one greedy choice).

Builds on model.py (generate), load_weights.py, tokenizer.py and eval_reasoning.py (prompts).
Run as: python bench/bench_generate.py [--teacher DIR] [--threads N] [--new-tokens 256] [--batch-sizes 1 16]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval_reasoning as er  # noqa: E402
from load_weights import load_model  # noqa: E402
from model import generate  # noqa: E402
from scripts.example_teacher import DEFAULT_DIR, build_example_teacher  # noqa: E402
from bench.timing import timed_pair  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids, attention_mask), both (B, T), padded on the left as transformers expects."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None, help=f"HF checkpoint dir (default: {DEFAULT_DIR})")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import transformers
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.teacher or build_example_teacher()
    ours, tok = load_model(path), load_tokenizer(path)
    # transformers picks SDPA attention by default, as model.py uses: the comparison is of code, not kernels
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # 1- to 4-step problems: prompt lengths differ, so a batch needs padding, as in a real evaluation
    problems = [p for steps in (1, 2, 3, 4) for p in er.make_synthetic(max(args.batch_sizes), steps, seed=5)]
    prompts = [tok.encode(er.build_prompt(tok, p["question"], [], chat=True)) for p in problems[::4]]
    n, pad_id = args.new_tokens, tok.eos_id  # the pad id is masked out on both sides; eos is what HF uses
    print(f"teacher {path}, fp32, {args.threads} threads, {n} new tokens per row (eos off), "
          f"median of {args.repeats}, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens")
    print(f"{'batch':>5s} {'ours tok/s':>11s} {'hf tok/s':>10s} {'ratio':>6s} {'rows equal':>11s}")
    for batch in args.batch_sizes:
        rows = prompts[:batch]
        ids, mask = left_pad(rows, pad_id)

        def run_ours(k=n):
            return generate(ours, rows, max_new_tokens=k, eos_ids=(), pad_id=pad_id)

        def run_ref(k=n):
            with torch.inference_mode():
                out = ref.generate(ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                   eos_token_id=None, pad_token_id=pad_id)
            return out[:, ids.shape[1]:].tolist()

        run_ours(4), run_ref(4)  # a short warm-up: allocator, kernel selection
        t_ours, t_ref, out_ours, out_ref = timed_pair(run_ours, run_ref, args.repeats, warmup=False)
        assert all(len(r) == n for r in out_ours + out_ref), "a row stopped early: eos was not switched off"
        # a check, not a gate: with 256 tokens a single fp tie changes the rest of that row
        equal = sum(a == b for a, b in zip(out_ours, out_ref))
        tps_ours, tps_ref = batch * n / t_ours, batch * n / t_ref  # every row made n tokens (asserted above)
        print(f"{batch:5d} {tps_ours:11.1f} {tps_ref:10.1f} {tps_ours / tps_ref:6.2f} {equal:>6d}/{batch:<4d}")


if __name__ == "__main__":
    main()
