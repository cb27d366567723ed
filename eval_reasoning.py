"""GSM8K-style chain-of-thought accuracy with batched greedy decoding, and the solution-only perplexity.

The question RED asks of a student is whether it still *reasons* like its teacher; the measurement is
greedy chain-of-thought accuracy on grade-school arithmetic word problems (GSM8K, Cobbe et al. 2021;
METHOD §4.4):
  - base models get `--shots K` worked examples in the plain "Question: ...\nAnswer: ..." format (the one
    data.py trains on and lm-evaluation-harness's gsm8k task uses), taken from a train split (`--fewshot`);
  - instruct models get the question zero-shot through their chat format (`--chat`), told to reason step
    by step and to end with "The answer is N." (the phrasing of Wei et al. 2022's chain-of-thought prompts).
Decoding is model.generate (batched greedy, left padding, KV cache); a row stops at eos or as soon as its
text starts a new "Question:". The answer is the number after "The answer is", else after "####", else the
last number in the text, compared as an exact fraction. Accuracy comes with a 95% Wilson interval, because
200 problems leave a +-7 point interval at 50%.

`--ppl SOURCE` reports text perplexity through erank.measure_model, red's one measurement (windows packed by
data.py). `solution_perplexity` is a different quantity under its own name: the loss on worked solutions given
their questions, what a model trained on solutions only (experiments/reasoning_teacher.py) is judged by.
`--make-synthetic N --ops K` writes a seeded set of problems.py's K-step problems, so a reasoning benchmark
(and a train split for few-shot exemplars, with another seed) exists offline.

Builds on model.py (generate, forward), load_weights.py, tokenizer.py, problems.py, data.py, erank.py, cli.py.
Run as: python eval_reasoning.py --model DIR --data test.jsonl [--chat | --shots 4 --fewshot train.jsonl]
                                 [--limit N] [--out preds.jsonl] [--ppl SOURCE]
        python eval_reasoning.py --make-synthetic 200 --ops 2 --seed 1 --out test.jsonl
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import argparse
import json
import math
import os
import random
import re
import time
from decimal import Decimal
from fractions import Fraction

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import load_windows
from erank import measure_model
from load_weights import LoadError, checkpoint_files, load_model, read_config
from model import ContextError, generate
from problems import MAX_STEPS, MAX_VALUE, is_synthetic, make_synthetic, qa_text
from sources import DataError, column_name, json_row, read_text
from tokenizer import TokenizerError, load_tokenizer

CHAT_INSTRUCTION = 'Solve the problem step by step. End your reply with "The answer is N." where N is the final number.'
STOP_TEXT = "Question:"  # a base model that finished its answer goes on to invent the next exemplar
STOP_WINDOW = 16         # tokens decoded per stop check: enough for "Question:" even one byte per token
MAX_SET = 100_000        # --make-synthetic N: a benchmark set (GSM8K's test split has 1,319); with --ops at most
                         # problems.MAX_STEPS the largest set is 10M steps, about a minute


class EvalError(ValueError):
    """Bad evaluation input (data file, gold answer, flags); the message is one line and says what to do."""


# ---------------------------------------------------------------------------------------------------------
# Answer extraction

# A number as models write it: optional sign (not a hyphen inside a word or range like "5-7"), optional "$",
# thousands commas, decimals, a simple fraction. "1,234." -> "1,234": a sentence's period is not a decimal.
NUMBER = r"(?:(?<![\w.])[-−])?\$?[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
# "The answer is" may be followed by a little decoration before the number: ": $", " **", " \boxed{"
ANSWER_IS = re.compile(r"the (?:final )?answer is\b[^\d\n−-]{0,20}?(" + NUMBER + ")", re.IGNORECASE)
HASHES = re.compile(r"####\s*(" + NUMBER + ")")
ANY_NUMBER = re.compile(NUMBER)
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")  # a plain decimal, the only form parse_number hands to Decimal
CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations "<<48/2=24>>"


def parse_number(text: str) -> Fraction | None:
    """'$1,234.' / '-2.5' / '3/4' -> exact Fraction; None if it is not a number."""
    # Fraction, not float: binary rounding can never make a right answer wrong, and "3/4" and "0.75"
    # compare equal without a tolerance to choose
    text = text.strip().replace("$", "").replace(",", "").replace("−", "-").rstrip(".")
    try:
        return Fraction(text)
    except ZeroDivisionError:
        return None
    except ValueError:  # not a number, or one past int()'s 4300 digits, which Decimal reads exactly
        pass
    try:
        return Fraction(Decimal(text)) if NUMBER_RE.fullmatch(text) and "/" not in text else None
    except ArithmeticError:
        return None


def normalize_number(text: str) -> str:
    """A matched number without '$', commas and Unicode minus, e.g. '$-1,234' -> '-1234'."""
    return text.replace("$", "").replace(",", "").replace("−", "-")


def cut_at_question(text: str) -> str:
    """The generation up to a new "Question:" the model started on its own (the whole text if none)."""
    at = text.find(STOP_TEXT)
    return text if at < 0 else text[:at]


def extract_answer(text: str) -> str | None:
    """The model's final number: 'The answer is N' (first), else '#### N', else the last number; or None."""
    text = cut_at_question(text)
    # the first "The answer is" wins (lm-evaluation-harness's gsm8k-cot does the same): models that keep
    # talking afterwards tend to drift, and some echo the instruction's literal "The answer is N."
    for pattern in (ANSWER_IS, HASHES):
        found = pattern.search(text)
        if found:
            return normalize_number(found.group(1))
    numbers = ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(answer) -> str | None:
    """A dataset answer ('... #### 72', '72' or 72) -> the normalised gold number, or None if there is none."""
    if isinstance(answer, (int, float, Decimal)) and not isinstance(answer, bool):  # JSON's true is an int
        # JSON may carry NaN; an integer past int()'s 4300 digits arrives as a Decimal (sources.json_row)
        finite = answer.is_finite() if isinstance(answer, Decimal) else math.isfinite(answer)
        return normalize_number(str(answer)) if finite else None
    if not isinstance(answer, str):
        return None
    # GSM8K's worked solution ends with "#### N"; everything before it is reasoning, not the answer
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    text = text.strip().rstrip(".")
    # the whole remainder must be one number: "#### 5 apples" or "about 5" is a malformed gold answer
    found = re.fullmatch(NUMBER, text)
    return normalize_number(text) if found and parse_number(text) is not None else None


def is_correct(extracted: str | None, gold: str) -> bool:
    """Numeric equality, so '18.0' == '18' and '0.75' == '3/4'."""
    return extracted is not None and parse_number(extracted) == parse_number(gold)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sane at 0/n and n/n, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    # Wilson (1927): invert the normal test of p; the centre is pulled towards 1/2 by z^2 / 2n pseudo-counts
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------------------
# Data and prompts

def read_items(path: str) -> list[dict]:
    """GSM8K-format JSONL -> [{"question", "answer", "gold"}]; every bad line is an EvalError with its number."""
    if not os.path.isfile(path):
        raise EvalError(f"{path}: no such file - pass a JSONL file with 'question' and 'answer' fields")
    items = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):  # read_text: bad UTF-8 is one line
        if not line.strip():  # a trailing newline or a blank separator line is not an item
            continue
        try:
            item = json_row(line)  # ValueError for every kind of bad line, numbers of any length read exactly
        except ValueError as e:
            raise EvalError(f"{path}:{lineno}: not valid JSON ({e}) - each line must be one JSON object") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or "answer" not in item:
            raise EvalError(f"{path}:{lineno}: needs a 'question' string and an 'answer' - write each line as "
                            "GSM8K does, {\"question\": \"...\", \"answer\": \"... #### N\"}")
        gold = gold_answer(item["answer"])
        if gold is None:
            raise EvalError(f"{path}:{lineno}: no numeric gold answer in {str(item['answer'])[-40:]!r} - the "
                            "answer must end in '#### <number>' or be a finite number")
        # the gold number is parsed once, here, so a bad line fails before any model is loaded
        items.append({"question": item["question"], "answer": item["answer"], "gold": gold})
    if not items:
        raise EvalError(f"{path}: no items (the file is empty or blank) - add one JSON object per line with "
                        "'question' and 'answer'")
    return items


def select_exemplars(items: list[dict], fewshot_items: list[dict], shots: int, chat: bool = False) -> list[dict]:
    """The first `shots` train items whose question is not among the evaluated ones (never a test item)."""
    if chat and shots:
        raise EvalError("--chat is zero-shot - drop --shots, or drop --chat for few-shot prompting")
    # the same exemplars for every item (lm-evaluation-harness's fixed few-shot), so items differ only in
    # their question; the first ones of the file, so the choice is visible and does not move with --seed
    questions = {it["question"] for it in items}
    pool = [e for e in fewshot_items if e["question"] not in questions]
    if shots > len(pool):
        raise EvalError(f"--shots {shots} but only {len(pool)} few-shot exemplars (not among the evaluated "
                        "items) are available - lower --shots or pass a bigger --fewshot train split")
    return pool[:shots]


def exemplar(item: dict) -> str:
    """One worked example, 'Question: q\\nAnswer: solution #### N', calculator annotations removed."""
    answer = item["answer"] if isinstance(item["answer"], str) else f"#### {item['answer']}"
    # GSM8K's "<<48/2=24>>" marks a calculator call made while sampling (Cobbe et al. 2021); our decoding
    # has no calculator, so a model copying the marks would only waste tokens
    return qa_text(item["question"], CALCULATOR.sub("", answer))


def build_prompt(tokenizer, question: str, exemplars: list[dict], chat: bool) -> str:
    """The exact prompt text of one item, bos token written out when the tokenizer has one (plain format)."""
    if chat:  # the chat template brings its own begin-of-text token where the family has one (Llama 3)
        return tokenizer.chat([{"role": "user", "content": f"{question}\n{CHAT_INSTRUCTION}"}])
    # NOTE: SmolLM2's configured bos is <|im_start|>, which HF's tokenizer never adds on its own; we add
    # the configured bos to plain prompts anyway, as model.py's CLI does, so every family is treated alike
    bos = tokenizer.decode([tokenizer.bos_id]) if tokenizer.bos_id is not None else ""
    shots = "".join(exemplar(e) + "\n\n" for e in exemplars)
    # no space after "Answer:": byte-level BPE glues a space to the next word (" Mia"), so a trailing space
    # would be a lone " " token the model rarely saw before a word
    return f"{bos}{shots}Question: {question}\nAnswer:"


def question_stop(tokenizer):
    """stop(new_tokens) -> True once the text's tail holds "Question:" (model.generate's `stop` hook)."""
    # "Question:" may span several tokens ("Question", ":"), so look at text, not ids; a row stops once the
    # model writes it, and extract_answer cuts it off again
    def stop(tokens: list[int]) -> bool:
        return STOP_TEXT in tokenizer.decode(tokens[-STOP_WINDOW:])  # the tail only: O(1) per token
    return stop


# ---------------------------------------------------------------------------------------------------------
# Evaluation and perplexity

def evaluate(model, tokenizer, items: list[dict], *, shots: int = 0, fewshot_items: list[dict] = (),
             chat: bool = False, max_new_tokens: int = 256, batch_size: int = 16, progress: bool = False) -> dict:
    """Greedy CoT accuracy on items [{"question", "answer"}] -> dict(accuracy, lo, hi, n, mean_tokens,
    tokens_per_s, predictions); predictions[i] is item i's prompt, gold, generation, extracted, correct,
    tokens (the generated ids, eos excluded)."""
    exemplars = select_exemplars(items, fewshot_items, shots, chat)
    # items from read_items carry "gold"; in-memory items (experiments/red_vs_lrc.py) are parsed here
    golds = [it["gold"] if "gold" in it else gold_answer(it["answer"]) for it in items]
    if any(g is None for g in golds):
        raise EvalError("an item has no numeric gold answer - answers must end in '#### <number>'")
    prompts = [build_prompt(tokenizer, it["question"], exemplars, chat) for it in items]
    prompt_ids = [tokenizer.encode(p) for p in prompts]  # the bos, if any, is already in the text
    # the model's positions bound prompt + generation: a small model trained on short texts gets less room
    room = model.args.max_seq_len - max(len(p) for p in prompt_ids)
    if room < 1:
        raise EvalError(f"a prompt of {max(len(p) for p in prompt_ids)} tokens fills the model's "
                        f"{model.args.max_seq_len} positions - use fewer --shots or shorter questions")
    max_new_tokens = min(max_new_tokens, room)
    # longest prompts first: a batch holds similar lengths (little padding), and memory trouble shows at once
    order = sorted(range(len(items)), key=lambda i: -len(prompt_ids[i]))
    stop, generated, seconds = question_stop(tokenizer), [None] * len(items), 0.0
    # padding is masked out, so its id only has to exist in the vocab; eos always does
    pad_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
        rows = order[start:start + batch_size]
        t0 = time.perf_counter()  # tokens/s times decoding only (prefill included), not tokenization
        out = generate(model, [prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
                       eos_ids=tokenizer.eos_ids, stop=stop, pad_id=pad_id, vocab_size=tokenizer.vocab_size)
        seconds += time.perf_counter() - t0
        for i, tokens in zip(rows, out):
            generated[i] = tokens
    predictions = []  # in item order again: generated[] is indexed by item, not by batch position
    for prompt, gold, tokens in zip(prompts, golds, generated):
        text = tokenizer.decode(tokens)
        extracted = extract_answer(text)
        predictions.append(dict(prompt=prompt, gold=gold, generation=text, extracted=extracted,
                                correct=is_correct(extracted, gold), tokens=tokens))
    n, k = len(items), sum(p["correct"] for p in predictions)
    total_tokens = sum(len(t) for t in generated)
    lo, hi = wilson_interval(k, n)
    return dict(accuracy=k / n, lo=lo, hi=hi, n=n, mean_tokens=total_tokens / n,
                tokens_per_s=total_tokens / max(seconds, 1e-9), predictions=predictions)


def evaluate_by_steps(model, tokenizer, sets: dict[int, list[dict]], *, max_new_tokens: int = 48,
                      tokens_per_step: int = 24, **kwargs) -> dict[int, dict]:
    """{k: evaluate result} for problem sets keyed by their step count k; a k-step chain is longer, so it gets
    max_new_tokens + tokens_per_step * k new tokens. kwargs go to `evaluate` (chat, batch_size, ...)."""
    return {k: evaluate(model, tokenizer, items, max_new_tokens=max_new_tokens + tokens_per_step * k, **kwargs)
            for k, items in sets.items()}


# ---------------------------------------------------------------------------------------------------------
# Worked solutions: the solution-only loss (a different quantity from text perplexity, so its own name)

def encode_problem(tok, problem: dict) -> tuple[list[int], int]:
    """(ids, n_prompt): the prompt exactly as `evaluate` builds it zero-shot, then " solution" + eos."""
    prompt = tok.encode(build_prompt(tok, problem["question"], [], chat=False))
    # the model continues "Answer:" with " <solution>": a leading space, as byte-level BPE writes words
    return prompt + tok.encode(" " + problem["answer"]) + [tok.eos_id], len(prompt)


def solution_batch(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded problems (ids, n_prompt) -> (tokens (B, L) right-padded, loss mask (B, L-1) on the solutions)."""
    length = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length - 1, dtype=torch.bool)  # mask[b, t]: predict tokens[b, t + 1]?
    for b, (ids, n_prompt) in enumerate(rows):
        tokens[b, :len(ids)] = torch.tensor(ids)
        mask[b, n_prompt - 1:len(ids) - 1] = True  # from the first solution token through the eos
    return tokens, mask


def solution_loss(model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the solution tokens only: tokens (B, L), mask (B, L-1) -> scalar."""
    logits = model(tokens)[:, :-1]                                                    # (B, L-1, V)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                             reduction="none").view_as(mask)                          # (B, L-1)
    return losses[mask].mean()


@torch.no_grad()
def solution_perplexity(model, tok, problems: list[dict], batch_size: int = 16) -> float:
    """exp(mean NLL) of the worked solutions (and eos) given their zero-shot prompts: how well a model predicts
    the reasoning itself, which whole-text perplexity mixes with predicting the questions."""
    device = model.embed_tokens.weight.device
    rows = [encode_problem(tok, p) for p in problems]
    nll, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        tokens, mask = solution_batch(rows[i:i + batch_size], tok.eos_id)  # (B, L), (B, L-1)
        n = int(mask.sum())
        nll += solution_loss(model, tokens.to(device), mask.to(device)).item() * n  # the batch's mean -> its sum
        count += n
    return math.exp(nll / count)


# ---------------------------------------------------------------------------------------------------------

def write_jsonl(path: str, rows: list[dict]):
    """One JSON object per line, written atomically (no half-written output)."""
    cli.atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())


def first_row(path: str) -> dict:
    """The first line of a JSONL file as a dict ({} when it is not one): how outputs recognise their kind (read
    through sources.json_row, so no line can raise)."""
    try:
        with open(path, "rb") as f:
            row = json_row(f.readline(1 << 24).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return row if isinstance(row, dict) else {}


def is_predictions(path: str) -> bool:
    """A predictions file written by --out (what --out may replace): its rows have exactly these fields."""
    return set(first_row(path)) == {"prompt", "gold", "generation", "extracted", "correct"}


def is_problem_set(path: str) -> bool:
    """A problem set --make-synthetic wrote (what --make-synthetic --out may replace): its first row replays
    as problems.py's generator writes one. A user's GSM8K file, with the same two fields, is never replaced."""
    return is_synthetic(first_row(path))


def run(args):
    """The CLI's work; user errors surface as EvalError / LoadError / TokenizerError / DataError."""
    if args.make_synthetic is not None:
        if not args.out:
            raise EvalError("--make-synthetic needs --out FILE.jsonl - say where to write the problems")
        cli.check_outputs({}, [cli.Output("--out", args.out, "file", is_problem_set,
                                          "problem set written by --make-synthetic")])
        write_jsonl(args.out, make_synthetic(args.make_synthetic, args.ops, args.seed, args.max_value))
        print(f"wrote {args.make_synthetic} {args.ops}-step problems (seed {args.seed}) to {args.out}")
        return
    if not args.model or not (args.data or args.ppl):
        raise EvalError("--model and --data (or --ppl) are required - see --help")
    if args.shots and not args.fewshot:
        raise EvalError(f"--shots {args.shots} needs --fewshot TRAIN.jsonl - exemplars come from a train split")
    if args.out:
        ppl_file = args.ppl if args.ppl and os.path.exists(args.ppl) else None
        model_files = [args.model, *checkpoint_files(args.model)]  # its shards, wherever its index puts them
        cli.check_outputs({"--model": model_files, "--data": args.data, "--fewshot": args.fewshot, "--ppl": ppl_file},
                          [cli.Output("--out", args.out, "file", is_predictions, "predictions file")])
    items = read_items(args.data) if args.data else []
    fewshot = read_items(args.fewshot) if args.fewshot and args.shots else []
    # a seeded subsample, kept in file order: the same --limit/--seed evaluates the same items for every model
    if args.limit is not None and args.limit < len(items):
        items = [items[i] for i in sorted(random.Random(args.seed).sample(range(len(items)), args.limit))]
    select_exemplars(items, fewshot, args.shots, args.chat)  # fail on bad prompting flags before loading the model
    tokenizer = load_tokenizer(args.model)
    if args.ppl and args.seq_len > read_config(args.model)[1].max_seq_len:
        raise EvalError(f"--seq-len {args.seq_len} exceeds the model's {read_config(args.model)[1].max_seq_len} "
                        "positions - lower --seq-len")
    windows = (load_windows(args.ppl, tokenizer, args.seq_len, seed=args.seed, text_column=args.text_column)
               if args.ppl else None)  # fails early
    model = load_model(args.model, device=args.device)  # fp32: CPUs without bf16 units run bf16 far slower
    if items:
        res = evaluate(model, tokenizer, items, shots=args.shots, fewshot_items=fewshot, chat=args.chat,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)
        k = sum(p["correct"] for p in res["predictions"])
        mode = "chat zero-shot" if args.chat else f"{args.shots}-shot"
        print(f"{args.data}: {mode}, accuracy {res['accuracy']:.3f} ({k}/{res['n']}), "
              f"95% Wilson [{res['lo']:.3f}, {res['hi']:.3f}]")
        print(f"mean generated tokens {res['mean_tokens']:.1f}, {res['tokens_per_s']:.1f} tokens/s")
        if args.out:
            write_jsonl(args.out, [{k: v for k, v in p.items() if k != "tokens"} for p in res["predictions"]])
            print(f"predictions written to {args.out}")
    if windows is not None:
        m = measure_model(model, windows, layers=False, batch_size=args.batch_size)
        print(f"{args.ppl}: perplexity {m['ppl']:.6f} over {m['predicted']} predicted tokens ({len(windows)} "
              f"windows of {args.seq_len} tokens, packed as for training; each window's first token is context)")


def int_in(low: int, high: int):
    """argparse type: an integer in [low, high] (cli.int_at_least with a ceiling, checked before any work)."""
    at_least = cli.int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="eval_reasoning.py", description="Chain-of-thought accuracy (GSM8K "
                                     "format), perplexity, and a synthetic arithmetic problem generator.")
    parser.add_argument("--model", help="HF checkpoint directory")
    parser.add_argument("--data", help="JSONL with 'question' and 'answer' ('... #### N' or a number)")
    parser.add_argument("--limit", type=cli.int_at_least(1), help="evaluate a seeded random subset of N items")
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0, help="subsampling / generator seed")
    parser.add_argument("--shots", type=cli.int_at_least(0), default=0, help="few-shot exemplars (plain "
                                                                             "Question/Answer format)")
    parser.add_argument("--fewshot", help="JSONL train split the exemplars come from")
    parser.add_argument("--chat", action="store_true", help="zero-shot through the tokenizer's chat format")
    parser.add_argument("--max-new-tokens", type=cli.int_at_least(1), default=256)
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=16)
    parser.add_argument("--out", help="predictions JSONL (or the synthetic problems with --make-synthetic)")
    parser.add_argument("--ppl", help="a data.py source (.txt .jsonl .parquet .bin .npy, pydoc, ...): perplexity")
    parser.add_argument("--text-column", type=column_name, default="text", help="the text's column in --ppl's "
                                                                                ".jsonl or .parquet rows")
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=512, help="perplexity window in tokens")
    parser.add_argument("--device", type=cli.device, default=cli.default_device())
    parser.add_argument("--make-synthetic", type=int_in(1, MAX_SET), metavar="N", help="write N synthetic "
                        f"problems to --out (at most {MAX_SET:,})")
    parser.add_argument("--ops", type=int_in(1, MAX_STEPS), default=2, help="operations (reasoning steps) per "
                        f"synthetic problem (at most {MAX_STEPS})")
    parser.add_argument("--max-value", type=int_in(10, MAX_VALUE), default=99, help="largest number in a "
                        f"synthetic problem (at most {MAX_VALUE:,})")
    args = cli.parse_args(parser, argv)
    torch.manual_seed(args.seed)  # greedy decoding draws nothing, but a sampling variant would
    print(json.dumps({k: v for k, v in vars(args).items() if v is not None}))  # the resolved config
    with cli.user_errors(EvalError, DataError, LoadError, TokenizerError, ContextError):
        run(args)


if __name__ == "__main__":
    main()
