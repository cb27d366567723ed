"""Greedy (or sampled) continuation of a prompt with any checkpoint: a quick look at what a model says.

Builds on model.py (generate), load_weights.py and tokenizer.py.
Run as: python scripts/generate.py --model DIR "prompt" [--chat] [--max-new-tokens 64]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from load_weights import LoadError, load_model  # noqa: E402
from model import ContextError, generate  # noqa: E402
from tokenizer import TokenizerError, load_tokenizer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/generate.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF checkpoint directory")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=cli.int_at_least(1), default=64)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat format")
    parser.add_argument("--device", type=cli.device, default=cli.default_device())
    args = cli.parse_args(parser, argv)
    torch.manual_seed(0)
    with cli.user_errors(LoadError, TokenizerError, ContextError):
        model, tok = load_model(args.model, device=args.device), load_tokenizer(args.model)
        text = tok.chat([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
        ids = tok.encode(text, bos=not args.chat and tok.bos_id is not None)
        if not ids:
            cli.fail("the prompt is empty - pass some text to continue")
        out = generate(model, [ids], max_new_tokens=args.max_new_tokens, eos_ids=tok.eos_ids,
                       vocab_size=tok.vocab_size)[0]
        print(text + tok.decode(out))


if __name__ == "__main__":
    main()
