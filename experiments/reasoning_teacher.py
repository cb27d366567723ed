"""Train, from scratch, a small Llama that does multi-step arithmetic: a teacher with reasoning to lose.

The example teacher (SmolLM2-135M-Instruct) solves almost none of eval_reasoning.py's synthetic problems, so
on it a student has no reasoning to keep or lose. This script makes a teacher that has some, and (with
--text-fraction > 0) some general ability beside it, so that a student's reasoning can be compared with its
general fit:
  - a byte-level BPE tokenizer (trained here with `tokenizers`, a test dependency) that splits every digit
    into its own token, so "47" is "4", "7" and carrying is learnable; tokenizer.py reads it like any other;
  - a ~3M-parameter Llama (model.Transformer: 4 layers, width 256, 8 query / 4 kv heads, SwiGLU 768);
  - next-token loss on the worked solution only ("Answer: ..." and the eos), not on the question, with one
    problem per row (rows of a batch share a step count, so little padding and no attention across problems);
  - general text: English technical prose that every Python install carries (CPython's pydoc topics and the
    standard library's docstrings, `general_documents`), one document in ten held out; a --text-fraction of
    the batches are windows of it with the loss on every token. The two splits are written beside the
    checkpoint (text_train.jsonl, text_heldout.jsonl) for students and their general perplexity;
  - AdamW with distill.py's schedule (linear warmup, linear decay), a step count fitted to --minutes (or
    fixed by --steps); a run split by --stop-at and continued by --resume gives the same bytes as one unsplit
    run (checkpoint.py's checkpoints in --out + ".run": weights, AdamW moments, the data sampler's state);
  - greedy accuracy per step count (1-6) on held-out problems (seeds never used for training, questions
    checked against everything trained on), through eval_reasoning.evaluate, as the paper's metric.
The result is a plain HF directory (model.safetensors, config.json, tokenizer files) that transformers,
distill.py, erank.py and eval_reasoning.py all load.

Builds on model.py, load_weights.py (hf_config, save_model), tokenizer.py, problems.py, eval_reasoning.py (the
solution-only loss, evaluation), distill.py (get_lr), checkpoint.py and run_lock.py (the run directory).
Run as:
    python experiments/reasoning_teacher.py --out out/reasoning-teacher [--minutes 60] [--text-fraction 0.25]
    python experiments/reasoning_teacher.py --out out/reasoning-teacher --steps 6000 --stop-at 3000   # then --resume
"""
import argparse
import ast
import json
import math
import os
import random
import sysconfig
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint as ckpt  # noqa: E402
import cli  # noqa: E402
import eval_reasoning as er  # noqa: E402
import run_lock  # noqa: E402
from distill import get_lr  # noqa: E402
from data import cut_windows, tokenize_documents  # noqa: E402
from erank import measure_model  # noqa: E402
from eval_reasoning import encode_problem, solution_batch, solution_loss  # noqa: E402
from load_weights import hf_config, save_model  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402
from problems import make_problem, make_synthetic, qa_text  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

STEP_COUNTS = (1, 2, 3, 4, 5, 6)
EOS = "<|endoftext|>"
WARMUP, PROBE = 100, 20  # PROBE < WARMUP: the lr of the timed probe steps does not depend on the total
TEXT_LEN = 256  # tokens per general-text window
HELD_OUT_EVERY = 10  # every 10th general document (in a fixed order) is held out
RUN_ONLY = ("stop_at", "resume", "checkpoint_every")  # flags that may differ between the commands of one run


# ---------------------------------------------------------------------------------------------------------
# General text: what every Python install carries

def general_documents() -> list[str]:
    """CPython's pydoc topics and the standard library's module, class and function docstrings of more than
    200 characters (tests and tool packages left out), in a fixed order: about 1.7 MB of English technical
    prose on Python 3.11. Read with `ast`, so no module is imported."""
    from pydoc_data.topics import topics
    docs = [topics[key] for key in sorted(topics)]
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}
    for directory, subdirs, files in os.walk(root):  # top-down, subdirectories pruned and sorted in place
        subdirs[:] = sorted(d for d in subdirs if d not in skip)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    if text and len(text) > 200:
                        docs.append(text)
    return docs


def split_general(docs: list[str]) -> tuple[list[str], list[str]]:
    """(train, held out): every HELD_OUT_EVERY-th document is held out, never trained on by teacher or student."""
    return ([d for i, d in enumerate(docs) if i % HELD_OUT_EVERY],
            [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == 0])


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE, one token per digit

def train_tokenizer(directory: str, vocab_size: int, seed: int, texts: list[str]):
    """Write tokenizer.json + tokenizer_config.json (eos only, no bos) trained on synthetic problems + texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    # digits first split one by one (Qwen2 / SmolLM2 style), then GPT-2's byte-level pre-tokenisation
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    problems = [p for k in STEP_COUNTS for p in make_synthetic(300, k, seed=seed + 7919 * k)]
    tok.train_from_iterator([qa_text(p["question"], p["answer"]) for p in problems] + texts, trainer)
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


def text_batch(stream: torch.Tensor, rng: random.Random, tokens_per_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, TEXT_LEN), loss mask (B, TEXT_LEN - 1) all true): windows cut at random offsets of the packed
    general-text stream (N,), the loss on every token."""
    starts = [rng.randrange(len(stream) - TEXT_LEN) for _ in range(max(1, tokens_per_batch // TEXT_LEN))]
    tokens = torch.stack([stream[i:i + TEXT_LEN] for i in starts])
    return tokens, torch.ones(tokens.shape[0], TEXT_LEN - 1, dtype=torch.bool)


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
    results = er.evaluate_by_steps(model, tok, held_out, batch_size=batch_size)
    model.train()
    return results


def text_perplexity(model, windows: torch.Tensor) -> float:
    """Perplexity on held-out general-text windows (erank.measure_model, the one measurement)."""
    model.eval()
    ppl = measure_model(model, windows, layers=False)["ppl"]
    model.train()
    return round(ppl, 3)


def quick_check(model, tok, held_out: dict, text_windows: torch.Tensor | None) -> dict:
    """A point of the learning curve: greedy accuracy on the first 50 held-out problems per step count, and the
    perplexity of 32 held-out text windows (N, TEXT_LEN) when there are any."""
    quick = {k: v[:50] for k, v in held_out.items()}
    acc = {k: r["accuracy"] for k, r in accuracy_by_steps(model, tok, quick, 64).items()}
    text_ppl = text_perplexity(model, text_windows[:32]) if text_windows is not None else None
    print(f"  quick accuracy (50 per step count): {acc}; held-out text ppl {text_ppl}", flush=True)
    return {"quick_accuracy": acc, "text_ppl": text_ppl}


def recipe(args) -> dict:
    """The flags that make the teacher (all but RUN_ONLY): a resumed run must have the same."""
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY}


def start_run(args, run_dir: str) -> str | None:
    """The newest checkpoint to continue (--resume, the same recipe only), or None for a new run. Refusals are
    one line."""
    if args.resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            cli.fail(f"{run_dir}: no checkpoint to resume - drop --resume to start the run")
        saved = cli.read_json(os.path.join(run_dir, "config.json"), "run config")
        changed = cli.changed_settings(saved, recipe(args))
        if changed:
            cli.fail(f"{run_dir}: --resume with {'; '.join(changed)} - use the run's settings, or drop --resume and "
                     "choose another --out")
        return latest
    if ckpt.latest_checkpoint(run_dir):  # a run stopped before its first checkpoint is simply started again
        cli.fail(f"{run_dir}: holds a run already - continue it with --resume, or delete that directory to start again")
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/reasoning-teacher", help="output HF checkpoint directory")
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (steps fitted to it)")
    parser.add_argument("--steps", type=cli.int_at_least(1), help="optimizer steps (default: as many as fit in "
                                                                  "--minutes)")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size (256 bytes + merges)")
    parser.add_argument("--text-fraction", type=float, default=0.25,
                        help="fraction of the batches that are general text (0: problems only, the old recipe)")
    parser.add_argument("--eval-per-step", type=int, default=500, help="held-out problems per step count")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at", type=cli.int_at_least(1), help="checkpoint after this step of the --steps "
                        "schedule and exit; the same command with --resume (and without --stop-at) continues")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out + '.run'")
    parser.add_argument("--checkpoint-every", type=cli.int_at_least(1), default=500, help="steps between checkpoints")
    args = parser.parse_args()
    run_dir = args.out + ".run"  # checkpoints, the tokenizer and the recipe while training
    with cli.user_errors():  # before an hour of training: --out may only replace a checkpoint
        cli.check_outputs({}, [cli.Output("--out", args.out, "dir", cli.is_checkpoint_dir, "checkpoint directory"),
                               cli.Output("run directory", run_dir, "dir")])
        if args.stop_at and not args.steps:
            cli.fail("--stop-at needs --steps (a schedule fitted to --minutes is not known before it starts)")
        try:  # one process per run
            run_lock.lock(run_dir)
        except ckpt.RunError:
            cli.fail(f"{run_dir}: another reasoning_teacher.py is training this run - wait for it, or choose another "
                     "--out")
        resume_from = start_run(args, run_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start_time = time.time()

    tok_dir = os.path.join(run_dir, "tokenizer")
    text_train, text_held = split_general(general_documents()) if args.text_fraction > 0 else ([], [])
    if resume_from is None:
        os.makedirs(tok_dir, exist_ok=True)
        train_tokenizer(tok_dir, args.vocab, args.seed, text_train)
        cli.write_json(os.path.join(run_dir, "config.json"), recipe(args))
    tok = load_tokenizer(tok_dir)
    if text_train:  # packed as data.py packs every source (eos after each document)
        text_stream = torch.from_numpy(tokenize_documents(text_train, tok).astype("int64"))         # (N,)
        text_windows = torch.from_numpy(cut_windows(tokenize_documents(text_held, tok), TEXT_LEN).astype("int64"))
        print(f"general text: {len(text_train)} documents, {len(text_stream):,} tokens to train on; "
              f"{len(text_held)} held out, {len(text_windows)} windows of {TEXT_LEN}")
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
    curve, step, trained_before = [], 0, 0.0
    if resume_from is not None:  # weights, AdamW moments, the sampler's state: the unsplit run continues exactly
        try:
            state = ckpt.load_checkpoint(resume_from, model, optimizer)
        except ckpt.RunError:
            cli.fail(f"{resume_from}: damaged checkpoint - delete {run_dir} and start the run again")
        step, steps, curve, trained_before = state["step"], state["steps"], state["curve"], state["train_s"]
        version, internal, gauss = state["rng"]
        rng.setstate((version, tuple(internal), gauss))
        print(f"resumed {run_dir} at step {step}/{steps}")
    t_train = time.time()
    end = min(steps, args.stop_at) if args.stop_at else steps
    with cli.stop_requests() as stop:  # Ctrl-C / SIGTERM: finish the step, checkpoint, exit
        while steps is None or step < end:
            if steps is None and step == PROBE:
                per_step = (time.time() - t_train) / PROBE
                steps = end = max(PROBE + 1, int(args.minutes * 60 / per_step))
                print(f"{per_step:.2f} s/step -> {steps} steps in {args.minutes:g} minutes")
            lr = get_lr(step, lr=args.lr, warmup=WARMUP, steps=steps or WARMUP)  # distill.py's schedule
            for group in optimizer.param_groups:
                group["lr"] = lr
            if text_train and rng.random() < args.text_fraction:
                tokens, mask = text_batch(text_stream, rng, args.tokens_per_batch)
            else:
                tokens, mask = make_batch(tok, rng, args.tokens_per_batch, held_out_questions)
            loss = solution_loss(model, tokens, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = trained_before + time.time() - t_train
            if step % 50 == 0 or step == steps:
                curve.append({"step": step, "loss": round(loss.item(), 4), "lr": lr, "minutes": round(elapsed / 60, 2)})
                print(f"step {step}/{steps} loss {loss.item():.4f} lr {lr:.2e} {elapsed / 60:.1f} min", flush=True)
            if steps is not None and step % max(1, steps // 4) == 0 and step < steps:  # the learning curve
                curve.append({"step": step, "loss": round(loss.item(), 4),
                              **quick_check(model, tok, held_out, text_windows if text_train else None)})
            if steps is not None and (step % args.checkpoint_every == 0 or step == end or stop.signal):
                ckpt.save_checkpoint(run_dir, step, model, optimizer, {"steps": steps, "curve": curve,
                                                                       "rng": rng.getstate(), "train_s": elapsed})
            if stop.signal and steps is None:
                cli.fail("interrupted before --minutes fixed the step count: nothing to resume, start again", 130)
            if stop.signal or step == end < steps:
                print(f"stopped after step {step}/{steps}; continue with the same command, --resume and no --stop-at",
                      flush=True)
                return
    train_minutes = (trained_before + time.time() - t_train) / 60

    # the checkpoint: model.py's own save, with the run's tokenizer files and eos id carried over
    with open(os.path.join(tok_dir, "config.json"), "w") as f:
        json.dump(hf_config(model.args) | {"eos_token_id": tok.eos_id, "bos_token_id": None}, f)
    save_model(model.eval(), args.out, like=tok_dir)
    if text_train:  # the general text's two splits, for the students' data and their general perplexity
        er.write_jsonl(os.path.join(args.out, "text_train.jsonl"), [{"text": d} for d in text_train])
        er.write_jsonl(os.path.join(args.out, "text_heldout.jsonl"), [{"text": d} for d in text_held])
    results = accuracy_by_steps(model, tok, held_out, 64)
    print(f"\nheld-out greedy accuracy ({args.eval_per_step} problems per step count, zero-shot):")
    print(f"{'steps':>5s} {'accuracy':>9s} {'95% Wilson':>16s} {'tokens/s':>9s}")
    report = {"params": n_params, "steps": steps, "train_minutes": round(train_minutes, 1), "curve": curve,
              "accuracy": {}, "torch": torch.__version__, "threads": args.threads,  # what the bytes depend on
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # ATen's kernels (ATEN_CPU_CAPABILITY)
    for k, r in results.items():
        print(f"{k:5d} {r['accuracy']:9.3f}   [{r['lo']:.3f}, {r['hi']:.3f}] {r['tokens_per_s']:9.0f}")
        report["accuracy"][k] = {"accuracy": r["accuracy"], "lo": r["lo"], "hi": r["hi"], "n": r["n"]}
    if text_train:
        m = measure_model(model, text_windows)
        report["text_ppl"], report["text_erank"] = m["ppl"], m["erank_sq"]
        print(f"held-out general text: perplexity {m['ppl']:.2f}, residual eRank {m['erank_sq']:.1f} "
              f"({len(text_windows)} windows of {TEXT_LEN})")
    with open(os.path.join(args.out, "training_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{args.out}: {n_params / 1e6:.2f}M parameters, {steps} steps, {train_minutes:.1f} min training, "
          f"{(time.time() - start_time) / 60:.1f} min in all")


if __name__ == "__main__":
    main()
