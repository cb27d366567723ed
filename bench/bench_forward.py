"""Forward pass and greedy decoding speed: ours vs transformers on the example teacher, fp32, same threads.

Both models run side by side in this process on identical inputs; each figure is the median of --repeats runs
(ours and transformers alternating, bench/timing.py) after a warm-up, printed with the ratio
transformers_time / our_time (> 1.0 means we are faster).

Builds on model.py (forward, generate) and load_weights.py.
Run as: python bench/bench_forward.py [--teacher DIR] [--threads N] [--repeats 5]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from load_weights import load_model  # noqa: E402
from model import generate  # noqa: E402
from scripts.example_teacher import DEFAULT_DIR, build_example_teacher  # noqa: E402
from bench.timing import timed_pair  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=None, help=f"HF checkpoint dir (default: {DEFAULT_DIR})")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import transformers
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.teacher or build_example_teacher()
    ours = load_model(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = ours.args.vocab_size
    print(f"teacher {path}, fp32, {args.threads} threads, median of {args.repeats} after warm-up")
    print(f"{'workload':28s} {'ours':>10s} {'transformers':>13s} {'ratio':>7s}")

    for batch, length in [(1, 512), (8, 128)]:
        tokens = torch.randint(0, vocab, (batch, length))
        with torch.inference_mode():
            t_ours, t_ref, _, _ = timed_pair(lambda: ours(tokens), lambda: ref(tokens), args.repeats)
        print(f"forward {batch} x {length:<16d} {t_ours * 1e3:8.1f}ms {t_ref * 1e3:11.1f}ms {t_ref / t_ours:7.2f}")

    for batch in (1, 8):
        prompts = torch.randint(0, vocab, (batch, 32))
        n = args.new_tokens
        # no eos: both sides must produce exactly n tokens per row
        run_ours = lambda: generate(ours, prompts.tolist(), max_new_tokens=n)
        run_ref = lambda: ref.generate(prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)
        assert [r for r in run_ours()] == ref.generate(prompts, max_new_tokens=n, do_sample=False, eos_token_id=None,
                                                       pad_token_id=0)[:, 32:].tolist()
        t_ours, t_ref, _, _ = timed_pair(run_ours, run_ref, max(1, args.repeats // 2))
        tps_ours, tps_ref = batch * n / t_ours, batch * n / t_ref
        print(f"greedy decode batch {batch:<8d} {tps_ours:7.1f}t/s {tps_ref:10.1f}t/s {t_ref / t_ours:7.2f}")


if __name__ == "__main__":
    main()
