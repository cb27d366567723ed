"""The paper's shapes end to end on the CPU: random teachers with Llama-3.2-3B-Instruct's and Qwen2.5-3B-Instruct's
exact configurations, distilled by distill.py itself to LRC's student widths (1536 and 1200).

The check that a user's first real run will not die on a shape, a width rule or a config field: llama3 RoPE
scaling over 131,072 positions, grouped-query attention 24/8 and 16/2, head_dim 128 (which is not W / heads
in either student), tied embeddings, Qwen2's q/k/v biases and its padded vocabulary. Per teacher:

  0. the teacher directory: config.json exactly as released (only num_hidden_layers cut to --layers), weights
     from transformers' own random init (norm gains and Qwen's biases randomised too) saved in bf16 as the
     releases are, and a tokenizer of the real size (nothing can be downloaded, so its tokens are synthetic):
     Llama 3's tiktoken file with 128,000 ranks + 256 special tokens = 128,256 ids, all embedding rows; a
     byte-level BPE tokenizer.json with 151,643 tokens + Qwen's 22 added ones = 151,665 ids, so the student's
     loss must cut the 271 padded rows of the 151,936-row embedding;
  1. distill.py --steps 1: RED's init from calibration windows, step-0 validation, one step, a checkpoint;
  2. distill.py --steps 2 --resume: the run continues from that checkpoint, one more step, merge, save;
  3. transformers loads teacher and student; their logits equal model.py's on the same directories.
Each distill.py command's peak memory (the child's maximum RSS) and wall time are printed.

Depth: --layers (default 2) keeps every per-layer shape and cuts the depth. At full depth (28 / 36 layers) the
fp32 teacher (12.9 / 12.3 GB) plus the student's projections, their gradients and AdamW's two moments (4 x 3.7
/ 4 x 2.6 GB) exceed this 24 GB machine; --layers 28 runs the full Llama where the memory is there.

The full vocabularies dominate the CPU time (materialising the student's tied embedding, 128,256 x 3072 x 1536
multiply-adds, three times per step); --bpe-tokens 2000 shrinks them for a quick check (the test suite's).

Run as: python bench/paper_shapes.py [--layers 2] [--models llama qwen] [--bpe-tokens N] [--work DIR]
Needs:  transformers (the reference that loads what red writes). Builds on distill.py, model.py, load_weights.py.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from load_weights import load_model  # noqa: E402
from tokenizer_files import bytes_to_unicode  # noqa: E402

LLAMA_3_2_3B = {  # meta-llama/Llama-3.2-3B-Instruct config.json
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 24, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256}
QWEN_2_5_3B = {  # Qwen/Qwen2.5-3B-Instruct config.json
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 32768, "max_window_layers": 70, "model_type": "qwen2",
    "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
MODELS = {  # name: (config, LRC's student width, BPE tokens before the special ones)
    "llama": (LLAMA_3_2_3B, 1536, 128000),
    "qwen": (QWEN_2_5_3B, 1200, 151643),
}


# ---------------------------------------------------------------------------------------------------------
# The teacher directory

def synthetic_bpe(n: int) -> list[tuple[bytes, bytes]]:
    """n byte-level BPE tokens in rank order, each (left, right) with the token = left + right (a single byte:
    right = b""): the 256 bytes, then every byte pair, then pairs + one byte. Every merge builds a token ranked
    after its parts, as a BPE file must."""
    tokens = [(bytes([b]), b"") for b in range(256)]
    pairs = [(bytes([a]), bytes([b])) for a in range(256) for b in range(256)]
    tokens += pairs[:n - len(tokens)]
    for left, right in pairs:
        if len(tokens) >= n:
            break
        tokens += [(left + right, bytes([b])) for b in range(min(256, n - len(tokens)))]
    return tokens


def write_llama_tokenizer(path: str, n_bpe: int):
    """Llama 3's own format: tokenizer.model, one "base64(token) rank" per line; the 256 special ids follow."""
    with open(os.path.join(path, "tokenizer.model"), "w") as f:
        for rank, (left, right) in enumerate(synthetic_bpe(n_bpe)):
            f.write(f"{base64.b64encode(left + right).decode()} {rank}\n")


def write_qwen_tokenizer(path: str, n_bpe: int):
    """A byte-level BPE tokenizer.json (vocab + merges) with Qwen's added tokens after the BPE ids."""
    char = bytes_to_unicode()
    text = lambda b: "".join(char[x] for x in b)  # noqa: E731  bytes -> the byte-level alphabet
    tokens = synthetic_bpe(n_bpe)
    spec = {"model": {"type": "BPE", "vocab": {text(a + b): i for i, (a, b) in enumerate(tokens)},
                      "merges": [[text(a), text(b)] for a, b in tokens if b]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                              "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            "added_tokens": [{"id": n_bpe + i, "content": t, "special": True, "lstrip": False, "rstrip": False,
                              "single_word": False, "normalized": False} for i, t in enumerate(QWEN_SPECIALS)]}
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(spec, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>"}, f)


def write_teacher(path: str, name: str, layers: int, n_bpe: int):
    """Random weights by transformers, the released config.json (depth cut; with fewer BPE tokens than the
    release the embedding shrinks by as many rows, keeping Qwen's padding), a tokenizer of n_bpe tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config, _, released_bpe = MODELS[name]
    config = dict(config, num_hidden_layers=layers, vocab_size=config["vocab_size"] - released_bpe + n_bpe)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)   # gains that differ by channel, so the student's gain selection matters
            elif key.endswith(".bias"):
                p.normal_(0, 0.5)      # Qwen2's q/k/v biases (transformers initialises them to zero)
    model.save_pretrained(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)  # exactly as released, whatever transformers would write
    (write_llama_tokenizer if name == "llama" else write_qwen_tokenizer)(path, n_bpe)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# The run and the checks

def distill(*flags) -> tuple[float, float]:
    """Run distill.py; (wall seconds, the child's peak RSS in GiB). Its output goes to this terminal."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "distill.py"), *map(str, flags)], cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"error: distill.py {' '.join(map(str, flags))} exited with {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def logits_gap(path: str, tokens: torch.Tensor) -> float:
    """max |ours - transformers'| / max |transformers'| over the logits of `tokens` (B, T), fp32, CPU."""
    from transformers import AutoModelForCausalLM
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(tokens).logits        # (B, T, V)
        del reference
        ours = load_model(path)(tokens)            # (B, T, V)
    return ((ours - expected).abs().max() / expected.abs().max()).item()


def smoke(name: str, layers: int, work: str, bpe_tokens: int | None) -> dict:
    _, width, n_bpe = MODELS[name]
    n_bpe = bpe_tokens or n_bpe
    teacher, student = os.path.join(work, f"{name}-teacher"), os.path.join(work, f"{name}-w{width}")
    n_teacher = write_teacher(teacher, name, layers, n_bpe)
    flags = ["--teacher", teacher, "--width", width, "--data", "pydoc", "--seq-len", 64, "--batch-size", 2,
             "--n-calib", 2, "--val-windows", 2, "--eval-every", 1, "--ckpt-every", 1, "--eval-problems", 0,
             "--device", "cpu", "--out", student]
    first = distill(*flags, "--steps", 1)
    resumed = distill(*flags, "--steps", 2, "--resume")
    with open(os.path.join(student, "config.json")) as f:
        saved = json.load(f)
    with open(os.path.join(student + ".run", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records if "grad_norm" in r]  # the training steps, each logged once
    torch.manual_seed(1)
    tokens = torch.randint(0, n_bpe, (2, 24))      # (B, T) ids the tokenizer can produce
    return {"model": name, "layers": layers, "width": width, "teacher_params": n_teacher,
            "student_hidden": saved["hidden_size"], "student_head_dim": saved.get("head_dim"),
            "student_vocab": saved["vocab_size"], "train_steps": steps,
            "first_s": first[0], "first_gib": first[1], "resume_s": resumed[0], "resume_gib": resumed[1],
            "teacher_gap": logits_gap(teacher, tokens), "student_gap": logits_gap(student, tokens)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="teacher depth (default 2; the released: 28 / 36)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--bpe-tokens", type=int, help="BPE tokens of the synthetic tokenizers (default: the "
                                                         "releases' 128,000 and 151,643; fewer: a faster check)")
    parser.add_argument("--work", help="directory for teachers and students (default: a temporary one, removed)")
    args = parser.parse_args()
    if args.work and os.path.isdir(args.work) and os.listdir(args.work):
        print(f"error: --work {args.work} is not empty - pass a new or empty directory (teachers, students "
              "and runs are written there)", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [smoke(name, args.layers, args.work or tmp, args.bpe_tokens) for name in args.models]
    print("\n| teacher (depth) | params | student W / head_dim / vocab | steps logged | step 1: s, peak GiB "
          "| resume + step 2 + save: s, peak GiB | logits vs transformers: teacher, student |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} ({r['layers']}) | {r['teacher_params'] / 1e6:,.0f}M | {r['student_hidden']} / "
              f"{r['student_head_dim']} / {r['student_vocab']:,} | {r['train_steps']} | {r['first_s']:.0f}, "
              f"{r['first_gib']:.1f} | {r['resume_s']:.0f}, {r['resume_gib']:.1f} | {r['teacher_gap']:.1e}, "
              f"{r['student_gap']:.1e} |")
    bad = [r["model"] for r in rows if max(r["teacher_gap"], r["student_gap"]) > 1e-4 or r["train_steps"] != [1, 2]
           or r["student_hidden"] != r["width"] or r["student_head_dim"] != 128]
    if bad:
        sys.exit(f"error: {', '.join(bad)}: a check failed (see the table)")
    print("all checks passed: init, step, checkpoint, resume, merge, save; transformers' logits equal ours (<= 1e-4)")


if __name__ == "__main__":
    main()
