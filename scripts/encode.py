"""Encode a text (or a one-message chat) with a checkpoint's tokenizer; print the ids and each token's bytes.

Builds on tokenizer.py.
Run as: python scripts/encode.py --model DIR "text to encode"   (no text: read stdin)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cli  # noqa: E402
from tokenizer import TokenizerError, load_tokenizer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/encode.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, tokenizer.json or tokenizer.model")
    parser.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    parser.add_argument("--chat", action="store_true", help="wrap the text as a user message in the chat format")
    args = cli.parse_args(parser, argv)
    with cli.user_errors(TokenizerError):
        tok = load_tokenizer(args.model)
        text = sys.stdin.read() if args.text is None else args.text
        if args.chat:
            text = tok.chat([{"role": "user", "content": text}])
        ids = tok.encode(text)
    print(f"{tok.source}: vocab_size {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_ids}")
    print(f"{len(ids)} tokens: {ids}")
    # one token may hold part of a UTF-8 character, so show each token's bytes with escapes
    print(" | ".join(tok.encoding.decode_single_token_bytes(i).decode("utf-8", "backslashreplace") for i in ids))


if __name__ == "__main__":
    main()
