"""A checkpoint's tokenizer files, read into what tiktoken needs: ranks, added tokens and one pre-tokenizer regex.

Reads a Hugging Face `tokenizer.json` (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3) or a
tiktoken-format `tokenizer.model` (Llama 3's `original/tokenizer.model`). Three translations are needed:
  1. vocab strings -> bytes. Byte-level BPE stores every byte as a printable character (GPT-2's
     `bytes_to_unicode` table), so "Ġthe" is b" the". We invert the table.
  2. merges -> ranks. tiktoken joins the adjacent pair whose *concatenation* has the lowest rank; HF joins
     the pair listed earliest in `merges`. The two agree when the id of each merge's result grows with its
     place in the list. We check that, and then a token's rank is simply its id.
  3. pre-tokenizer -> pat_str. HF's `Digits`, `Split` and `ByteLevel` steps run one after another; we
     write them as ONE regex that cuts text into the same pieces (tests compare against `tokenizers`).
Beside them: the chat template's family, and the bos / stop ids the configs name. A malformed field is one
TokenizerError naming file and field. tokenizer.py builds the Tokenizer from what this file reads.
Builds on nothing else in red (floor 1).
Run as: imported by tokenizer.py.
"""
import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path


# GPT-2's pre-tokenizer regex, which HF's ByteLevel(use_regex=True) applies
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the same regex for text from which Digits has already cut the numbers out: no number alternative, and
# "whitespace not followed by a non-space" must also accept a number next, since the piece ends there
GPT2_PAT_AFTER_DIGITS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Llama 3.1+ names of the 256 special tokens after the 128000 BPE tokens (llama-models' tokenizer.py).
# Llama 3.0 called 128004/5/8/10 "reserved"; bos, eos, the headers and <|eot_id|> have the same ids.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                   *(f"<|reserved_special_token_{i}|>" for i in range(2, 247))]  # 256 in all
# Qwen2's Split regex: Llama 3's with one digit per piece
QWEN2_PAT = LLAMA3_PAT.replace(r"\p{N}{1,3}", r"\p{N}")
SUPPORTED = "red reads byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3)"


class TokenizerError(ValueError):
    """A tokenizer file is missing or of a kind red cannot reproduce exactly; the message is one line."""


def need(ok, path, field: str, what: str, todo: str = "the file is damaged; restore it from the original checkpoint"):
    if not ok:  # a TokenizerError naming the file and the field
        raise TokenizerError(f"{path}: {field} {what} - {todo}")


def is_id(value) -> bool:  # a token id: a non-negative int (JSON's true is not one) that tiktoken can hold
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 31


@dataclass
class ChatFormat:
    """What `Tokenizer.chat` needs to know about a chat template, read from its text."""
    family: str                        # "chatml" (Qwen, SmolLM2) or "llama3"
    default_system: str | None = None  # ChatML: system prompt inserted when the first message is not one
    dated: bool = False                # Llama 3.1+: a system header with "Cutting Knowledge Date" always
    date: str | None = None            # its "Today Date"; None means today's date (Llama 3.2)


# ------------------------------------------------------------------------------------------------------
# vocab and merges -> tiktoken ranks

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character, so that every byte of a token can be written in JSON."""
    # printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) move to chr(256 + n)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {b: chr(b) for b in printable}, 0
    # the space 0x20 is the 33rd byte moved, which is why GPT-2-style vocabs write " the" as "Ġthe" (U+0120)
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def ranks_from_bpe(path: Path, model: dict, added_ids: set[int]) -> dict[bytes, int]:
    """HF BPE model (vocab + merges) -> tiktoken mergeable_ranks {token bytes: id}, checked to merge alike."""
    need(isinstance(model.get("vocab"), dict) and isinstance(model.get("merges", []), list), path, "its BPE model",
         "has no vocab (a token -> id mapping) or no merges list")
    need(all(map(is_id, model["vocab"].values())), path, "model.vocab", "holds an id that is not a token id")
    byte_of, ranks = {ch: b for b, ch in bytes_to_unicode().items()}, {}
    for token, i in model["vocab"].items():
        if i in added_ids or not token:  # added tokens are cut out of the text before BPE: BPE must not build them
            continue
        if any(ch not in byte_of for ch in token):
            raise TokenizerError(f"{path}: vocab entry {token!r} is not byte-level - {SUPPORTED}")
        ranks[bytes(byte_of[ch] for ch in token)] = i
    # tiktoken merges by the rank (= id) of the result, HF by the merge's position: ids must follow the
    # list. Equal ids in a row are fine: tokenizers converted from tiktoken list every split of a token.
    previous = -1
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]  # older files: "a b"
    need(all(isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in merges), path,
         "model.merges", "holds an entry that is not a pair of tokens")
    for n, (a, b) in enumerate(merges):
        i = model["vocab"].get(a + b)  # None: the merge builds a token that is not in the vocab
        if i is None or i < previous:
            raise TokenizerError(f"{path}: merge {n} ({a!r} + {b!r}) is out of id order, so tiktoken's ranks "
                                 f"cannot reproduce it - {SUPPORTED}")
        previous = i
    return ranks


# ------------------------------------------------------------------------------------------------------
# pre-tokenizer -> one pat_str

def split_gap(pattern: str) -> str:
    """A regex for the gaps between `pattern`'s matches: runs of positions where the pattern cannot start."""
    # tiktoken drops text its regex does not match, while HF's Split keeps those gaps as pieces
    return f"(?:(?!(?:{pattern}))[\\s\\S])+"


def split_isolated(pattern: str) -> str:
    """Split(pattern, Isolated) as one regex: matches and the gaps between them are both pieces."""
    return f"{pattern}|{split_gap(pattern)}"


def split_pat(path: Path, step: dict) -> str:
    """HF Split(pattern, behavior, invert) -> a regex whose matches are exactly Split's pieces."""
    need(isinstance(p := step.get("pattern"), dict) and isinstance(p.get("Regex", p.get("String")), str), path,
         "pre_tokenizer Split pattern", f"is {p!r}, not a Regex or a String")
    # a String pattern is a literal: escape the characters that mean something in a regex
    pattern = step["pattern"].get("Regex") or re.sub(r"[\\.^$|?*+()\[\]{}]", lambda m: "\\" + m.group(),
                                                     step["pattern"]["String"])
    behavior, invert = step.get("behavior"), step.get("invert", False)
    if behavior == "Isolated":  # matches and gaps are both pieces, so `invert` changes nothing
        return split_isolated(pattern)
    if behavior == "Removed":  # the removed side is simply never matched
        return pattern if invert else split_gap(pattern)
    raise TokenizerError(f"{path}: Split behavior {behavior} is not supported - {SUPPORTED}")


def pat_from_pre_tokenizer(path: Path, pre: dict | None) -> str:
    """tokenizer.json's pre_tokenizer (Digits? then Split? then ByteLevel) -> one tiktoken pat_str."""
    sequence = isinstance(pre, dict) and pre.get("type") == "Sequence"
    steps = list(pre["pretokenizers"]) if sequence else [pre] if pre else []
    need(all(isinstance(s, dict) and isinstance(s.get("type"), str) for s in steps), path, "pre_tokenizer",
         "has a step without its \"type\"")
    if not steps or steps[-1]["type"] != "ByteLevel":
        raise TokenizerError(f"{path}: pre-tokenizer is not ByteLevel (SentencePiece/Metaspace?) - {SUPPORTED}")
    byte_level = steps.pop()
    need(not byte_level.get("add_prefix_space"), path, "ByteLevel", "add_prefix_space=true is not supported", SUPPORTED)
    use_regex = byte_level.get("use_regex", True)  # older files omit the key; the default is true
    # HF runs the steps in order, each on the pieces of the one before; only these orders have one regex
    digits = steps.pop(0) if steps and steps[0]["type"] == "Digits" else None
    split = steps.pop(0) if steps and steps[0]["type"] == "Split" else None
    if steps or (split and (digits or use_regex)):
        names = [s["type"] for s in pre.get("pretokenizers", [pre])]
        raise TokenizerError(f"{path}: pre-tokenizer sequence {names} is not supported - {SUPPORTED}")
    if split:  # Llama 3 and Qwen2: Split(their regex) + ByteLevel(use_regex=false)
        return split_pat(path, split)
    if digits:  # SmolLM2: numbers first become pieces of their own (one digit each if individual)
        number = r"\p{N}" if digits.get("individual_digits") else r"\p{N}+"
        return number + "|" + (GPT2_PAT_AFTER_DIGITS if use_regex else r"[^\p{N}]+")
    return GPT2_PAT if use_regex else r"[\s\S]+"


# ------------------------------------------------------------------------------------------------------
# reading the files

def read_json(path: Path) -> dict:
    """Parse a JSON object from a regular file; {} if it does not exist."""
    if not path.is_file():
        need(not path.exists(), path, "the file", "is not a regular file (a device, pipe or directory)")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e}) - re-download the file") from None
    need(isinstance(obj, dict), path, "the top level", f"is a JSON {type(obj).__name__}, not an object")
    return obj


def read_tokenizer_json(path: Path) -> tuple[dict[bytes, int], dict[str, int], str, bool, str | None]:
    """tokenizer.json -> (ranks, added tokens {text: id}, pat_str, NFC or not, token HF puts first or None)."""
    spec = read_json(path)
    need(isinstance(model := spec.get("model", {}), dict), path, "model", "is not an object")
    need(model.get("type") == "BPE", path, "model type", f"{model.get('type')} is not BPE", SUPPORTED)
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerError(f"{path}: SentencePiece-style BPE (byte_fallback or subword affixes) - {SUPPORTED}")
    normalizer = spec.get("normalizer")
    if normalizer and normalizer["type"] == "Sequence" and not normalizer["normalizers"]:
        normalizer = None
    if normalizer and normalizer["type"] != "NFC":  # [qwen] Qwen2 uses NFC, which we can apply exactly
        raise TokenizerError(f"{path}: normalizer {normalizer['type']} changes the text - {SUPPORTED}")
    decoder = spec.get("decoder")
    if decoder and decoder["type"] != "ByteLevel":
        raise TokenizerError(f"{path}: decoder {decoder['type']} is not ByteLevel - {SUPPORTED}")
    added = {}
    for n, t in enumerate(spec.get("added_tokens", [])):
        need(isinstance(t, dict) and isinstance(t.get("content"), str) and is_id(t.get("id")), path,
             f"added_tokens[{n}]", "needs a string content and a token id")
        if not t["content"]:  # HF never matches an empty added token; tiktoken would put it between every character
            continue
        need(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word")), path, f"added token {t['content']!r}",
             "strips spaces or needs whole words, which tiktoken cannot mirror", SUPPORTED)
        added[t["content"]] = t["id"]
    ranks = ranks_from_bpe(path, model, set(added.values()))
    # Llama 3's post-processor puts <|begin_of_text|> first; SmolLM2's and Qwen's put nothing
    post = spec.get("post_processor") or {}
    templates = [p for p in post.get("processors", [post]) if p.get("type") == "TemplateProcessing"]
    first = templates[0]["single"][0] if templates else {}
    prefix = first["SpecialToken"]["id"] if "SpecialToken" in first else None
    pat_str = pat_from_pre_tokenizer(path, spec.get("pre_tokenizer"))
    return ranks, added, pat_str, normalizer is not None, prefix


def read_tiktoken_model(path: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """Llama 3's tokenizer.model (one "base64-token rank" per line) -> (ranks, the 256 special tokens)."""
    ranks = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line:
                token, rank = line.split()
                # validate=True: a SentencePiece protobuf must fail here rather than decode to junk
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (UnicodeDecodeError, ValueError):
        raise TokenizerError(f"{path}: not a tiktoken BPE file (a SentencePiece model?) - {SUPPORTED}") from None
    first = max(ranks.values(), default=-1) + 1  # 128000 for Llama 3: special tokens follow the BPE ranks
    return ranks, {token: first + i for i, token in enumerate(LLAMA3_SPECIALS)}


def read_chat_format(directory: Path, tokenizer_config: dict) -> ChatFormat | None:
    """Recognise the chat template's family from its text (red has no jinja engine); None if unknown."""
    jinja = directory / "chat_template.jinja"  # transformers 5 writes the template here
    template = jinja.read_text(encoding="utf-8") if jinja.is_file() else tokenizer_config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one is the chat format
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        return None
    if "<|im_start|>" in template:
        # the default system prompt is a literal between "<|im_start|>system\n" and "<|im_end|>"; \n may be
        # a real newline or an escape inside a jinja string literal, and no quote may sit in between
        found = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}]*?)<\|im_end\|>", template)
        return ChatFormat("chatml", default_system=found and found.group(1).replace("\\n", "\n"))
    if "<|start_header_id|>" in template:
        if "Cutting Knowledge Date" not in template:
            return ChatFormat("llama3")
        # Llama 3.1 writes a fixed date into the template; Llama 3.2 asks jinja for today's (strftime_now)
        date = re.search(r"date_string = [\"']([^\"']+)[\"']", template)
        return ChatFormat("llama3", dated=True,
                          date=None if "strftime_now" in template else date and date.group(1))
    return None


def read_bos_eos(directory: Path, config: dict, ranks: dict[bytes, int], specials: dict[str, int],
                 bos: int | None, eos: list[int]) -> tuple[int | None, list[int]]:
    """bos id and stop ids: tokenizer_config.json names the tokens, generation_config.json adds stop ids."""
    def token_id(token) -> int:
        """A token named in tokenizer_config.json -> its id."""
        text = token.get("content") if isinstance(token, dict) else token  # older files write {"content": ...}
        need(isinstance(text, str), directory / "tokenizer_config.json", "bos_token / eos_token",
             f"is {token!r}, not a token or an object with its \"content\"")
        need(text in specials or text.encode() in ranks, directory / "tokenizer_config.json", f"token {text!r}",
             "is not in the vocab", "fix bos_token / eos_token")
        return specials.get(text, ranks.get(text.encode()))

    generation = read_json(directory / "generation_config.json")
    for key, value in [(k, generation.get(k)) for k in ("bos_token_id", "eos_token_id")]:  # an id or a list
        need(all(map(is_id, value if isinstance(value, list) else [] if value is None else [value])),
             directory / "generation_config.json", key, f"is {value!r}, not token ids")
    if "bos_token" in config:  # [qwen] an explicit null means no bos at all
        bos = None if config["bos_token"] is None else token_id(config["bos_token"])
    elif generation.get("bos_token_id") is not None:
        bos = generation["bos_token_id"]
    if config.get("eos_token"):
        eos = [token_id(config["eos_token"])]
    more = generation.get("eos_token_id")  # an int, or a list (Llama 3.1+: end_of_text, eom, eot)
    for i in more if isinstance(more, list) else [] if more is None else [more]:
        eos = eos + [i] if i not in eos else eos
    return bos, eos


# ------------------------------------------------------------------------------------------------------
# the regexes of the families red supports, as pat_from_pre_tokenizer writes them; tokenizer.py encodes with
# any other regex with tiktoken's panic text kept out of sight, in case it gives up on some text

FAMILY_PATS = frozenset([
    GPT2_PAT,                                                                # GPT-2
    r"\p{N}|" + GPT2_PAT_AFTER_DIGITS, r"\p{N}+|" + GPT2_PAT_AFTER_DIGITS,    # SmolLM2: Digits, then GPT-2's
    LLAMA3_PAT, split_isolated(LLAMA3_PAT),                                  # Llama 3: tokenizer.model, .json
    split_isolated(QWEN2_PAT),                                               # Qwen2/2.5/3
])
