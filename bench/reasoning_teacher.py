"""Train, from scratch, a small Llama that does multi-step arithmetic: a teacher with reasoning to lose.

The example teacher (SmolLM2-135M-Instruct) solves almost none of eval_reasoning.py's synthetic problems, so
on it a student has no reasoning to keep or lose. This script makes a teacher that has some:
  - a byte-level BPE tokenizer (trained here with `tokenizers`, a test dependency) that splits every digit
    into its own token, so "47" is "4", "7" and carrying is learnable; tokenizer.py reads it like any other;
  - a ~3M-parameter Llama (model.Transformer: 4 layers, width 256, 8 query / 4 kv heads, SwiGLU 768);
  - next-token loss on the worked solution only ("Answer: ..." and the eos), not on the question, with one
    problem per row (rows of a batch share a step count, so little padding and no attention across problems);
  - AdamW with distill.py's schedule (linear warmup, linear decay), a step count fitted to --minutes;
  - greedy accuracy per step count (1-6) on held-out problems (seeds never used for training, questions
    checked against everything trained on), through eval_reasoning.evaluate, as the paper's metric.
The result is a plain HF directory (model.safetensors, config.json, tokenizer files) that transformers,
distill.py, erank.py and eval_reasoning.py all load.

Builds on model.py, load_weights.py (save_model), tokenizer.py, problems.py, eval_reasoning.py (the
solution-only loss, evaluation) and distill.py (get_lr). Run as:
    python bench/reasoning_teacher.py --out out/reasoning-teacher [--minutes 40] [--eval-per-step 500]
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
import eval_reasoning as er  # noqa: E402
from distill import get_lr  # noqa: E402
from eval_reasoning import encode_problem, solution_batch, solution_loss  # noqa: E402
from load_weights import save_model  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from problems import make_problem, make_synthetic, qa_text  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

STEP_COUNTS = (1, 2, 3, 4, 5, 6)
EOS = "<|endoftext|>"
WARMUP, PROBE = 100, 20  # PROBE < WARMUP: the lr of the timed probe steps does not depend on the total


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE, one token per digit

def train_tokenizer(directory: str, vocab_size: int, seed: int):
    """Write tokenizer.json + tokenizer_config.json (eos only, no bos) trained on synthetic problems."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    # digits first split one by one (Qwen2 / SmolLM2 style), then GPT-2's byte-level pre-tokenisation
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    problems = [p for k in STEP_COUNTS for p in make_synthetic(300, k, seed=seed + 7919 * k)]
    tok.train_from_iterator([qa_text(p["question"], p["answer"]) for p in problems], trainer)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": EOS, "bos_token": None, "model_max_length": 512}, f)


# ---------------------------------------------------------------------------------------------------------
# Data: one problem per row, loss on the solution only (eval_reasoning's encode_problem / solution_batch)

def make_batch(tok, rng: random.Random, tokens_per_batch: int, held_out: set) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, L), loss mask (B, L-1)): problems of one random step count, right-padded with eos."""
    steps = rng.choice(STEP_COUNTS)
    rows = []
    while sum(len(r[0]) for r in rows) < tokens_per_batch:  # rows until the token budget is met
        problem = make_problem(rng, steps)
        if problem["question"] not in held_out:  # never train on an evaluation question
            rows.append(encode_problem(tok, problem))
    return solution_batch(rows, tok.eos_id)


# ---------------------------------------------------------------------------------------------------------
# Model

def build_model(vocab_size: int, args) -> Transformer:
    """A Llama with GPT-2-style init: N(0, 0.02) weights, output projections scaled by 1/sqrt(2 * layers)."""
    margs = ModelArgs(family="llama", dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      head_dim=args.dim // args.heads, ffn_dim=args.ffn, vocab_size=vocab_size,
                      norm_eps=1e-5, rope_theta=10000.0, max_seq_len=512, tie_embeddings=True)
    model = Transformer(margs)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * args.layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)
    return model


def accuracy_by_steps(model, tok, held_out: dict, batch_size: int) -> dict:
    """{steps: eval_reasoning.evaluate result} on the held-out problems, greedy, zero-shot plain prompt."""
    model.eval()
    results = {k: er.evaluate(model, tok, items, max_new_tokens=48 + 24 * k, batch_size=batch_size)
               for k, items in held_out.items()}
    model.train()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/reasoning-teacher", help="output HF checkpoint directory")
    parser.add_argument("--minutes", type=float, default=40.0, help="training time budget (steps fitted to it)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: as many as fit in --minutes)")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=340, help="BPE vocabulary size (256 bytes + merges)")
    parser.add_argument("--eval-per-step", type=int, default=500, help="held-out problems per step count")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with cli.user_errors():  # before 40 minutes of training: --out may only replace an earlier checkpoint
        cli.check_outputs({}, [cli.Output("--out", args.out, "dir", cli.is_checkpoint_dir, "checkpoint directory")])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start_time = time.time()

    staging = tempfile.mkdtemp(prefix="red-reasoning-teacher-")
    train_tokenizer(staging, args.vocab, args.seed)
    tok = load_tokenizer(staging)
    model = build_model(tok.vocab_size, args)
    n_params = sum(p.numel() for p in model.parameters())
    # held-out problems: seeds the training stream never uses, and their questions are excluded from training
    held_out = {k: make_synthetic(args.eval_per_step, k, seed=10_000 + k) for k in STEP_COUNTS}
    held_out_questions = {p["question"] for items in held_out.values() for p in items}
    print(f"tokenizer {tok.vocab_size} ids; model {n_params / 1e6:.2f}M parameters; {args.threads} threads")

    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norm gains
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    rng = random.Random(args.seed)
    steps = args.steps  # None: fitted to --minutes from the pace of the first PROBE steps
    curve, t_train, step = [], time.time(), 0
    while steps is None or step < steps:
        if steps is None and step == PROBE:
            per_step = (time.time() - t_train) / PROBE
            steps = max(PROBE + 1, int(args.minutes * 60 / per_step))
            print(f"{per_step:.2f} s/step -> {steps} steps in {args.minutes:g} minutes")
        lr = get_lr(step, lr=args.lr, warmup=WARMUP, steps=steps or WARMUP)  # distill.py's schedule
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, mask = make_batch(tok, rng, args.tokens_per_batch, held_out_questions)
        loss = solution_loss(model, tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == steps:
            elapsed = time.time() - t_train
            curve.append({"step": step, "loss": round(loss.item(), 4), "lr": lr, "minutes": round(elapsed / 60, 2)})
            print(f"step {step}/{steps} loss {loss.item():.4f} lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
        if steps is not None and step % max(1, steps // 4) == 0 and step < steps:  # the learning curve
            quick = {k: v[:50] for k, v in held_out.items()}
            acc = {k: r["accuracy"] for k, r in accuracy_by_steps(model, tok, quick, 64).items()}
            curve.append({"step": step, "loss": round(loss.item(), 4), "quick_accuracy": acc})
            print(f"  quick accuracy (50 per step count): {acc}", flush=True)
    train_minutes = (time.time() - t_train) / 60

    # the checkpoint: model.py's own save, with the staging dir's tokenizer files and eos id carried over
    with open(os.path.join(staging, "config.json"), "w") as f:
        json.dump(model.args.to_hf_config() | {"eos_token_id": tok.eos_id, "bos_token_id": None}, f)
    save_model(model.eval(), args.out, like=staging)
    shutil.rmtree(staging)
    results = accuracy_by_steps(model, tok, held_out, 64)
    print(f"\nheld-out greedy accuracy ({args.eval_per_step} problems per step count, zero-shot):")
    print(f"{'steps':>5s} {'accuracy':>9s} {'95% Wilson':>16s} {'tokens/s':>9s}")
    report = {"params": n_params, "steps": steps, "train_minutes": round(train_minutes, 1), "curve": curve,
              "accuracy": {}}
    for k, r in results.items():
        print(f"{k:5d} {r['accuracy']:9.3f}   [{r['lo']:.3f}, {r['hi']:.3f}] {r['tokens_per_s']:9.0f}")
        report["accuracy"][k] = {"accuracy": r["accuracy"], "lo": r["lo"], "hi": r["hi"], "n": r["n"]}
    with open(os.path.join(args.out, "training_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{args.out}: {n_params / 1e6:.2f}M parameters, {steps} steps, {train_minutes:.1f} min training, "
          f"{(time.time() - start_time) / 60:.1f} min in all")


if __name__ == "__main__":
    main()
