"""Tests for eval_reasoning.py: answer extraction, batched greedy decoding against unbatched decoding and against
`transformers`, the solution-only perplexity, and CLI errors (perplexity itself is erank.measure_model's, tested
in test_erank.py).

Builds on eval_reasoning.py, model.py and problems.py, with transformers as the reference.
Run as: OMP_NUM_THREADS=1 pytest tests/test_eval_reasoning.py     (-m "not slow" skips the real teacher)
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_reasoning as er
from load_weights import load_model
from model import generate
from problems import make_synthetic

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------
# Answer extraction: generations in the shapes real models write them, and the number we must read

EXTRACTION = [
    ("She has 5 + 7 = 12 apples. The answer is 12.", "12"),
    ("So the total is $1,234. The answer is $1,234.", "1234"),
    ("The answer is: $18", "18"),
    ("The answer is **42**.", "42"),
    ("Therefore, the answer is $\\boxed{72}$.", "72"),
    ("The final answer is 3.", "3"),
    ("the answer is 7 apples, because 3 + 4 = 7", "7"),
    ("The answer is 12.\nThe answer is 12.\nThe answer is 12.", "12"),                 # SmolLM2 repeats itself
    ("The answer is 5.\n\nThe answer is N.", "5"),                                     # echoes the instruction
    ("The answer is N, where N = 17.", "17"),
    ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 42", "42"),
    ("####42", "42"),
    ("5 + 5 = 10\n#### 10\n\nSome trailing text with 99 in it.", "10"),
    ("The answer is 8.\n#### 9", "8"),                                                 # "The answer is" first
    ("He pays 3 * 4 = 12 dollars, then gets 2 back, so 10 dollars in total.", "10"),    # last number
    ("The temperature drops to -5 degrees.", "-5"),
    ("The answer is -3.", "-3"),
    ("The answer is −4.", "-4"),                                                       # Unicode minus
    ("She owes -$20 now. The answer is -$20.", "-20"),
    ("The difference is 5-7 years, so 7.", "7"),                                      # a range, not -7
    ("Each share is 2.5 pounds. The answer is 2.5.", "2.5"),
    ("It costs $0.75 each.", "0.75"),
    ("Half of it is 3/4 cup. The answer is 3/4.", "3/4"),
    ("Total: 1,000,000 grains", "1000000"),
    ("The answer is 1,234,567.", "1234567"),
    ("So 50% of them left. The answer is 50%.", "50"),
    ("I don't know how to solve this problem.", None),
    ("", None),
    ("The answer is unclear.", None),
    ("First 3 + 4 = 7.\nThe answer is 7.\n\nQuestion: Tom has 9 apples. How many are left?\nAnswer: 9", "7"),
    ("3 + 4 = 7 apples in total.\nQuestion: Ann has 12 pears.", "7"),               # cut before the new question
    ("Step 1: 12 + 5 = 17.\nStep 2: 17 - 3 = 14.\n#### 14", "14"),
    ("Mia starts with 6 eggs.\nStep 1: Mia keeps 1 of 3 equal piles, so 6 / 3 = 2.", "2"),
    ("The answer is 18.0", "18.0"),
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_extract_answer(text, expected):
    assert er.extract_answer(text) == expected


def test_numeric_comparison_and_gold():
    assert er.is_correct("18.0", "18") and er.is_correct("0.75", "3/4") and er.is_correct("-20", "-20")
    assert not er.is_correct(None, "3") and not er.is_correct("12", "13")
    assert er.parse_number("$1,234.") == 1234 and er.parse_number("3/0") is None and er.parse_number("x") is None
    assert er.gold_answer("Half of 48 is <<48/2=24>>24.\n#### 1,234") == "1234"
    assert er.gold_answer(72) == "72" and er.gold_answer("72") == "72" and er.gold_answer(" -3.5 ") == "-3.5"
    assert er.gold_answer("#### many") is None and er.gold_answer("no number") is None and er.gold_answer(None) is None
    assert er.gold_answer(float("nan")) is None and er.gold_answer(float("inf")) is None  # JSON's NaN, Infinity


def test_wilson_interval():
    # reference values: Wilson (1927) score interval, z = 1.96
    lo, hi = er.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = er.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert er.wilson_interval(10, 10)[1] == 1.0


# ---------------------------------------------------------------------------------------------------------
# Batched decoding on tiny random models (raw token ids; tiny models have no tokenizer)

class ByteTokenizer:
    """A stand-in tokenizer for the tiny vocab-256 models: one token per byte, no bos, no eos."""
    bos_id, eos_id, eos_ids, vocab_size = None, None, [], 256

    def encode(self, text, *, bos=False, eos=False):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


PROMPTS = [[5, 17, 99, 3], [7], list(range(30, 61)), [200, 201, 202, 9, 9, 9, 9, 4, 100], list(range(1, 14))]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_batched_greedy_equals_unbatched_tiny(tiny_model, family):
    model = load_model(tiny_model(family))
    # prompts of 1 to 31 tokens: the batch pads the short ones by up to 30 positions on the left
    batched = generate(model, PROMPTS, max_new_tokens=12)
    single = [generate(model, [p], max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single and all(len(t) == 12 for t in batched)
    # rows that stop early (eos / stop hook) leave the batch; the others must not change
    eos = [single[0][3]]
    stopped = generate(model, PROMPTS, max_new_tokens=12, eos_ids=eos, stop=lambda t: len(t) >= 2 and t[-1] % 7 == 0)
    for row, full in zip(stopped, single):
        assert full[:len(row)] == row
    assert len(stopped[0]) <= 3 and any(len(row) < 12 for row in stopped[1:])  # the early exits did happen


def test_evaluate_restores_order_tiny(tiny_model):
    """evaluate sorts prompts by length for batching; predictions must come back in item order."""
    model, tok = load_model(tiny_model("llama")), ByteTokenizer()
    items = [{"question": "q" * n, "answer": f"#### {n}"} for n in (3, 40, 1, 17, 8)]
    res = er.evaluate(model, tok, items, max_new_tokens=6, batch_size=2)
    for item, pred in zip(items, res["predictions"]):
        assert pred["prompt"] == f"Question: {item['question']}\nAnswer:"
        assert pred["tokens"] == generate(model, [tok.encode(pred["prompt"])], max_new_tokens=6)[0]
        assert pred["gold"] == er.gold_answer(item["answer"])
    assert res["n"] == 5 and res["mean_tokens"] == 6 and res["tokens_per_s"] > 0
    fewshot = [{"question": "q" * 3, "answer": "#### 3"}, {"question": "train", "answer": "1 + 1 = 2\n#### 2"}]
    res = er.evaluate(model, tok, items[:1], shots=1, fewshot_items=fewshot, max_new_tokens=2)
    assert res["predictions"][0]["prompt"] == "Question: train\nAnswer: 1 + 1 = 2\n#### 2\n\nQuestion: qqq\nAnswer:"


def test_evaluate_by_steps_budget_grows_with_steps_tiny(tiny_model):
    """A k-step set gets max_new_tokens + tokens_per_step * k tokens, and is otherwise evaluate() itself."""
    model, tok = load_model(tiny_model("llama")), ByteTokenizer()
    items = [{"question": "q" * n, "answer": f"#### {n}"} for n in (3, 40, 1, 17)]
    res = er.evaluate_by_steps(model, tok, {1: items[:2], 3: items[2:]}, max_new_tokens=2, tokens_per_step=3,
                               batch_size=2)
    assert list(res) == [1, 3] and res[1]["mean_tokens"] == 5 and res[3]["mean_tokens"] == 11
    alone = er.evaluate(model, tok, items[2:], max_new_tokens=11, batch_size=2)
    assert [p["tokens"] for p in res[3]["predictions"]] == [p["tokens"] for p in alone["predictions"]]


def test_question_stop_hook():
    stop = er.question_stop(ByteTokenizer())  # one byte per token: "Question:" spans 9 tokens, the worst case
    assert stop(list(b"7 apples.\n\nQuestion:")) and not stop(list(b"7 apples.\n\nQuestion"))
    assert stop(list(b"x" * 100 + b"Question:"))


# ---------------------------------------------------------------------------------------------------------
# Solution perplexity: the loss on the worked solutions only

def test_solution_perplexity_scores_only_the_solutions(tiny_model):
    """Equal to a direct computation over exactly the solution tokens (and eos) of each problem."""
    import torch.nn.functional as F
    model = load_model(tiny_model("llama"))
    tok = ByteTokenizer()
    tok.eos_id = 0
    problems = make_synthetic(3, 1, seed=5)
    nll, count = 0.0, 0
    for p in problems:
        ids, n_prompt = er.encode_problem(tok, p)
        assert ids[:n_prompt] == tok.encode(er.build_prompt(tok, p["question"], [], chat=False))
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]
        losses = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
        nll, count = nll + losses[n_prompt - 1:].sum().item(), count + len(ids) - n_prompt
    assert er.solution_perplexity(model, tok, problems, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# CLI errors: one line on stderr, exit 2, no traceback

def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "eval_reasoning.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def run_main(capsys, monkeypatch, *args):
    """main() in this process (a subprocess costs seconds of imports): (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["eval_reasoning.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        er.main()
    return exit_info.value.code, capsys.readouterr().err


def assert_user_error(code, stderr, *needles):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and all(n in lines[0] for n in needles), lines[0]


def test_cli_errors(tmp_path, capsys, monkeypatch, tiny_teacher):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good.read_text() + "\n" + '{"question": "x", "answer": "#### 3"\n')  # blank line 2
    no_gold = tmp_path / "nogold.jsonl"
    no_gold.write_text(good.read_text() + json.dumps({"question": "?", "answer": "many"}) + "\n")
    no_question = tmp_path / "noq.jsonl"
    no_question.write_text(json.dumps({"answer": "#### 3"}) + "\n")
    missing = tmp_path / "nope"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    # two real processes: the whole path from argv to exit status, with nothing else on stderr
    proc = run_cli("--model", missing, "--data", bad_json)
    assert_user_error(proc.returncode, proc.stderr, f"{bad_json}:3", "not valid JSON")
    proc = run_cli("--model", missing, "--data", good)
    assert_user_error(proc.returncode, proc.stderr, str(missing), "no such")
    cases = [
        (("--data", missing / "x.jsonl"), ["no such file"]),
        (("--data", no_gold), [f"{no_gold}:2", "no numeric gold answer"]),
        (("--data", no_question), [f"{no_question}:1", "question"]),
        (("--data", good, "--shots", 2, "--fewshot", good), ["--shots 2", "0 few-shot exemplars"]),  # item = test
        (("--data", good, "--shots", 1), ["--fewshot"]),
        (("--data", good, "--shots", 1, "--fewshot", good, "--chat"), ["zero-shot"]),
        (("--data", good, "--batch-size", 0), ["--batch-size"]),
        (("--data", good, "--out", good), ["--out", "is the --data input"]),  # never over the test set
        (("--data", good, "--out", tmp_path), ["is a directory"]),
    ]
    for args, needles in cases:
        assert_user_error(*run_main(capsys, monkeypatch, "--model", missing, *args), *needles)
    model = tiny_teacher("llama")
    capsys.readouterr()  # drop what building the fixture printed
    for args, needles in [(("--ppl", missing / "t.txt"), ["no such file"]),
                          (("--ppl", latin1), [str(latin1), "UTF-8"])]:
        assert_user_error(*run_main(capsys, monkeypatch, "--model", model, *args), *needles)
    assert_user_error(*run_main(capsys, monkeypatch, "--make-synthetic", 5, "--ops", 2), "--out")
    assert_user_error(*run_main(capsys, monkeypatch, "--make-synthetic", 5, "--out", no_question), "not a problem set")


def test_cli_make_synthetic(tmp_path, monkeypatch):
    out = tmp_path / "syn.jsonl"
    monkeypatch.setattr(sys, "argv", ["eval_reasoning.py", "--make-synthetic", "20", "--ops", "3", "--seed", "4",
                                      "--max-value", "50", "--out", str(out)])
    er.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == make_synthetic(20, 3, seed=4, max_value=50)
    er.main()  # again: a problem set may replace a problem set
    assert er.read_items(str(out))[0]["gold"] == er.gold_answer(rows[0]["answer"])


# ---------------------------------------------------------------------------------------------------------
# The real example teacher (SmolLM2-135M-Instruct) against transformers

@pytest.fixture(scope="module")
def teacher(example_teacher):
    import transformers
    from tokenizer import load_tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(example_teacher, dtype=torch.float32).eval()
    return load_model(example_teacher), load_tokenizer(example_teacher), hf


@pytest.mark.slow
def test_batched_equals_unbatched_and_hf_generate_teacher(teacher):
    """Few prompts of different lengths: our batch, our batch of one, and transformers' generate agree."""
    model, tok, hf = teacher
    texts = ["Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
             "The capital of France is", "1, 2, 3, 4,",
             tok.chat([{"role": "user", "content": "What is 12 + 30? Answer briefly."}])]
    prompts = [tok.encode(t) for t in texts]
    batched = generate(model, prompts, max_new_tokens=16)  # no eos_ids: every row runs all 16 steps
    for p, row in zip(prompts, batched):
        assert row == generate(model, [p], max_new_tokens=16)[0]
        # eos off on transformers' side too (min_new_tokens), so both produce exactly 16 tokens
        out = hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                          min_new_tokens=16, pad_token_id=tok.eos_id)
        assert row == out[0, len(p):].tolist()


def hf_next_tokens(hf, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """transformers' next-token logits (len(generated) + 1, V) after prompt + generated[:j], j = 0..len,
    from ONE unpadded, uncached forward pass."""
    with torch.no_grad():
        return hf(input_ids=torch.tensor([prompt_ids + generated])).logits[0, len(prompt_ids) - 1:].float()


@pytest.mark.slow
def test_generations_and_accuracy_match_transformers_teacher(teacher):
    """16 synthetic problems, chat zero-shot: every generation is transformers' greedy generation.

    NOTE: transformers' `generate` at batch 1 runs ~5-10 tokens/s on this shared 2-core CPU, so 16 x 64
    tokens would take minutes. Greedy decoding is "append the argmax, stop at eos": so our tokens ARE
    transformers' greedy generation iff, in one unpadded forward of transformers over prompt + our tokens,
    the argmax at every position is our next token and, where our row ended early, transformers' argmax is
    an eos (or our "Question:" stop fired, which cuts both alike). That is what we check, one prompt at a
    time; the test above runs `generate(do_sample=False)` itself on a few prompts.
    """
    model, tok, hf = teacher
    # 1-step problems and 64 new tokens: the cheapest setting in which the teacher still finishes some answers
    # (3 of these 16 are right: 3, 5 and 8), so the accuracy comparison is not a trivial 0 == 0
    items = make_synthetic(32, 1, seed=11)[:16]
    max_new = 64
    res = er.evaluate(model, tok, items, chat=True, max_new_tokens=max_new, batch_size=16)  # one batch: fewest steps
    stop, hf_correct = er.question_stop(tok), 0
    for item, pred in zip(items, res["predictions"]):
        ours = pred["tokens"]  # eos excluded; the prompt is re-encoded from the text written to predictions
        logits = hf_next_tokens(hf, tok.encode(pred["prompt"]), ours)
        hf_tokens = logits.argmax(-1).tolist()
        for j, (a, b) in enumerate(zip(hf_tokens, ours)):
            # the one legitimate difference would be an fp tie (top-2 logits within rounding): report the gap
            gap = (lambda top2: float(top2[0] - top2[1]))(logits[j].topk(2).values)
            assert a == b, f"{pred['prompt']!r}: token {j} differs from transformers (top-2 gap {gap:.2e})"
        assert not any(stop(ours[:j]) for j in range(1, len(ours))), "the stop hook fired late"
        if len(ours) < max_new and not stop(ours):  # our row ended at an eos: transformers' too
            assert hf_tokens[len(ours)] in tok.eos_ids
        hf_correct += er.is_correct(er.extract_answer(tok.decode(hf_tokens[:len(ours)])), pred["gold"])
    assert res["accuracy"] == hf_correct / len(items)
    assert res["n"] == 16 and 0 < res["mean_tokens"] <= max_new and res["accuracy"] > 0


@pytest.mark.slow
def test_cli_end_to_end_teacher(example_teacher, tmp_path, monkeypatch, capsys):
    """The command line on the real teacher: few-shot prompts, predictions file, perplexity line."""
    test, train, text = tmp_path / "test.jsonl", tmp_path / "train.jsonl", tmp_path / "text.txt"
    er.write_jsonl(str(test), make_synthetic(5, 1, seed=1))
    er.write_jsonl(str(train), make_synthetic(3, 1, seed=2))
    text.write_text("Mia has 12 apples. She buys 5 more, so she has 17 apples now. " * 5)
    argv = ["--model", example_teacher, "--data", test, "--limit", 3, "--shots", 2, "--fewshot", train,
            "--max-new-tokens", 8, "--out", tmp_path / "preds.jsonl", "--ppl", text, "--seq-len", 32]
    monkeypatch.setattr(sys, "argv", ["eval_reasoning.py", *map(str, argv)])
    er.main()
    out = capsys.readouterr().out
    assert "2-shot, accuracy" in out and "95% Wilson" in out and "perplexity" in out
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and set(preds[0]) == {"prompt", "gold", "generation", "extracted", "correct"}
    # the exact prompt: SmolLM2's configured bos written out, two train exemplars, then the test question
    assert preds[0]["prompt"].startswith("<|im_start|>Question: ") and preds[0]["prompt"].count("Question:") == 3
