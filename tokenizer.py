"""A checkpoint's tokenizer as one `tiktoken.Encoding` whose ids are the checkpoint's ids, plus chat formatting.

Reads a Hugging Face `tokenizer.json` (byte-level BPE: GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3) or a
tiktoken-format `tokenizer.model` (Llama 3's `original/tokenizer.model`). Three translations are needed:
  1. vocab strings -> bytes. Byte-level BPE stores every byte as a printable character (GPT-2's
     `bytes_to_unicode` table), so "Ġthe" is b" the". We invert the table.
  2. merges -> ranks. tiktoken joins the adjacent pair whose *concatenation* has the lowest rank; HF joins
     the pair listed earliest in `merges`. The two agree when the id of each merge's result grows with its
     place in the list. We check that, and then a token's rank is simply its id.
  3. pre-tokenizer -> pat_str. HF's `Digits`, `Split` and `ByteLevel` steps run one after another; we
     write them as ONE regex that cuts text into the same pieces (tests compare against `tokenizers`).
Added tokens (<|im_start|>, <|eot_id|>, ...) written inside the text become their ids, as in HF (empty ones are
ignored, as in HF). A malformed field is one TokenizerError naming file and field; the regex is probed (PROBES).
Builds on nothing else in red (floor 1); data.py, eval_reasoning.py and distill.py use it.
Run as: imported (scripts/encode.py is a demo CLI: python scripts/encode.py --model DIR "text").
"""
import base64
import datetime
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import regex  # tiktoken's own dependency; unlike `re` it knows \p{L}, which the rare path below needs
import tiktoken

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
# Long texts are encoded in chunks of about this many characters, cut where no piece can straddle the cut:
# after an ASCII letter followed by a space (see `safe_chunks`)
CHUNK_CHARS = 100_000
SAFE_CUT = re.compile(r"[A-Za-z](?= )")
# tiktoken's regex engine gives up (a Rust panic) on about 1M whitespace characters in a row
LONG_BLANK = re.compile(r"\s{500000}")
SUPPORTED = "red reads byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen2/2.5/3)"
PROBES = [run * 300 + end for run in ("a", "1", " ", "\n", "!", "a1", "a ", "é") for end in ("", "!", "a", " ", "\n")]


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


def bpe(ranks: dict[bytes, int], data: bytes) -> list[int]:
    """tiktoken's merge rule in plain Python: join the adjacent pair whose concatenation ranks lowest."""
    if data in ranks:  # tiktoken's shortcut: a piece that is a whole token stays whole
        return [ranks[data]]
    parts = [data[i:i + 1] for i in range(len(data))]
    while len(parts) > 1:
        # on a tie the leftmost pair wins, in tiktoken and in HF alike
        rank, i = min((ranks.get(a + b, sys.maxsize), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank == sys.maxsize:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


# ------------------------------------------------------------------------------------------------------
# pre-tokenizer -> one pat_str

def split_pat(path: Path, step: dict) -> str:
    """HF Split(pattern, behavior, invert) -> a regex whose matches are exactly Split's pieces."""
    need(isinstance(p := step.get("pattern"), dict) and isinstance(p.get("Regex", p.get("String")), str), path,
         "pre_tokenizer Split pattern", f"is {p!r}, not a Regex or a String")
    # a String pattern is a literal: escape the characters that mean something in a regex
    pattern = step["pattern"].get("Regex") or re.sub(r"[\\.^$|?*+()\[\]{}]", lambda m: "\\" + m.group(),
                                                     step["pattern"]["String"])
    # tiktoken drops text its regex does not match, while Split keeps the gaps between matches as pieces.
    # A gap is a run of positions where the pattern cannot start, which is what this alternative matches.
    gap = f"(?:(?!(?:{pattern}))[\\s\\S])+"
    behavior, invert = step.get("behavior"), step.get("invert", False)
    if behavior == "Isolated":  # matches and gaps are both pieces, so `invert` changes nothing
        return f"{pattern}|{gap}"
    if behavior == "Removed":  # the removed side is simply never matched
        return pattern if invert else gap
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


def safe_chunks(text: str, size: int = CHUNK_CHARS):
    """Yield consecutive pieces of `text`, each cut at the first letter->space boundary after `size` chars."""
    # tiktoken can crash on huge inputs (llama3's tokenizer.py cuts at 400k chars and inside 25k-char runs).
    # No piece of the GPT-2, Llama 3 or Qwen2 regex holds a letter followed by a space, and none looks
    # behind, so a cut there changes no piece and no id; tests check this.
    start = 0
    while start < len(text):
        cut = SAFE_CUT.search(text, start + size) if len(text) - start > size else None
        end = cut.end() if cut else len(text)
        # NOTE: the one cut that can change ids (next to it), for runs of blanks tiktoken cannot handle
        if blank := LONG_BLANK.search(text, start, end):
            end = blank.end()
        yield text[start:end]
        start = end


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
# the tokenizer

class Tokenizer:
    """encode / decode / chat over a tiktoken Encoding whose ids equal the checkpoint's ids."""

    def __init__(self, ranks: dict[bytes, int], specials: dict[str, int], pat_str: str, *, bos_id: int | None,
                 eos_ids: list[int], nfc: bool, chat_format: ChatFormat | None, add_bos: bool, source: str):
        # tiktoken returns a token's rank as its id; the ranks here are the checkpoint's ids by construction
        try:
            self.encoding = tiktoken.Encoding(name=Path(source).parent.name or "red", pat_str=pat_str,
                                              mergeable_ranks=ranks, special_tokens=specials)
            self._pat = regex.compile(pat_str)
        except (ValueError, OverflowError, regex.error) as e:  # OverflowError: an id tiktoken cannot hold
            need(False, source, "pre_tokenizer regex or an id", f"is unusable ({str(e)[:100]})")
        self.bos_id, self.eos_ids, self.source = bos_id, eos_ids, source
        # whether the checkpoint's own tokenizer starts every text with bos (Llama 3 yes; SmolLM2, whose
        # configured bos is <|im_start|>, and Qwen no); `encode` adds bos only when asked
        self.add_bos = add_bos
        self.eos_id = eos_ids[0] if eos_ids else None  # None only for a bare tokenizer file without configs
        self.vocab_size = self.encoding.n_vocab  # max id + 1, special tokens included
        need(all(i is None or i < self.vocab_size for i in (bos_id, self.eos_id)), source, "bos / eos id",
             f"{bos_id} / {self.eos_id} reaches past its {self.vocab_size} ids")  # the ids data is packed with
        self.nfc, self.chat_format, self._ranks, self._specials = nfc, chat_format, ranks, specials
        # longest first, so that of two added tokens starting at one place the longer wins, as in HF
        alternatives = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
        self._special_re = re.compile(f"({alternatives})") if alternatives else None
        # bytes without a token of their own (SmolLM2 has no b"\x04"): HF drops them, tiktoken would panic
        self._missing = bytes(sorted(set(range(256)) - {k[0] for k in ranks if len(k) == 1}))
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # a Rust panic prints lines of its own to fd 2: silenced while the probes run
        os.close(null)
        try:
            for probe in PROBES:  # a regex that backtracks without end is refused now, not in the middle of a run
                self._encode_chunk(probe)
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids; added tokens in the text become their ids; bos/eos only if the tokenizer has them."""
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        # split out added tokens first, as HF does: normalisation and chunking must never cut one
        parts = self._special_re.split(text) if self._special_re else [text]
        for i, part in enumerate(parts):
            if i % 2:  # the split pattern has one group, so odd parts are the added tokens
                ids.append(self._specials[part])
                continue
            if self.nfc:  # [qwen] HF normalises only the text between added tokens, so do it per part
                part = unicodedata.normalize("NFC", part)
            for chunk in safe_chunks(part):
                ids.extend(self._encode_chunk(chunk))
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _lacks_bytes(self, text: str) -> bool:
        """Whether `text` holds a byte that has no token of its own."""
        data = text.encode("utf-8", "surrogatepass")
        return len(data.translate(None, self._missing)) < len(data)

    def _encode_chunk(self, text: str) -> list[int]:
        """Text without added tokens -> ids; bytes the vocab lacks are dropped after splitting, as in HF."""
        try:
            if not self._lacks_bytes(text):
                return self.encoding.encode_ordinary(text)
            ids = []
            for small in safe_chunks(text, size=100):  # keep the slow path to the few words around such a byte
                if not self._lacks_bytes(small):
                    ids.extend(self.encoding.encode_ordinary(small))
                    continue
                # HF splits first, then drops the unknown bytes inside each piece and merges the rest; tiktoken
                # cannot skip bytes, so split and merge here with the same regex and ranks
                for piece in self._pat.findall(small, timeout=5):  # `regex` has no backtracking limit
                    ids.extend(bpe(self._ranks, piece.encode("utf-8").translate(None, self._missing)))
            return ids
        except BaseException as e:  # a regex that backtracks without end: tiktoken panics, `regex` times out
            need(not isinstance(e, TimeoutError) and type(e).__name__ != "PanicException", self.source,
                 "pre_tokenizer regex", f"backtracks without end on {text[:30]!r}...")
            raise  # anything else (Ctrl-C, a bug) as it is

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; added tokens decode to their text, invalid UTF-8 to U+FFFD (as HF's ByteLevel)."""
        return self.encoding.decode(list(ids))

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """[{"role", "content"}, ...] -> the prompt string the checkpoint's chat template renders."""
        fmt = self.chat_format
        if fmt is None:
            raise TokenizerError(f"{self.source}: no chat template of a known family (ChatML or Llama 3 "
                                 f"headers) - use an instruct checkpoint of Qwen, SmolLM2 or Llama 3")
        if fmt.family == "chatml":
            if fmt.default_system and (not messages or messages[0]["role"] != "system"):
                messages = [{"role": "system", "content": fmt.default_system}, *messages]
            # unlike Llama 3's, ChatML templates insert each content as it is, without trimming
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
        # Llama 3: the template trims every content (jinja `| trim`) and starts with the bos token
        text = self.decode([self.bos_id]) if self.bos_id is not None else ""
        if fmt.dated:  # Llama 3.1+: the system header is always there, with the knowledge cut-off
            system = messages[0]["content"].strip() if messages and messages[0]["role"] == "system" else ""
            messages = messages[1:] if messages and messages[0]["role"] == "system" else messages
            date = fmt.date or datetime.date.today().strftime("%d %b %Y")
            text += (f"<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                     f"Today Date: {date}\n\n{system}<|eot_id|>")
        for m in messages:
            text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Checkpoint directory (or a tokenizer.json / tokenizer.model file) -> Tokenizer."""
    path = Path(path)
    if path.is_dir():
        # tokenizer.json first: Llama 3 checkpoints carry both formats, and where a tokenizer.model sits beside
        # it (Llama 2, Mistral) that one is SentencePiece, which read_tokenizer_json then refuses clearly
        candidates = [path / "tokenizer.json", path / "tokenizer.model", path / "original" / "tokenizer.model"]
        file = next((f for f in candidates if f.is_file()), None)
        if file is None:
            raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model - point at a Hugging Face "
                                 f"checkpoint directory")
        directory = path
    elif path.is_file():
        file, directory = path, path.parent
    else:
        raise TokenizerError(f"{path}: no such file or directory - check the path")
    try:
        config = read_json(directory / "tokenizer_config.json")
        if file.suffix == ".json":
            ranks, specials, pat_str, nfc, prefix = read_tokenizer_json(file)
            bos, eos, chat_format = None, [], read_chat_format(directory, config)
        else:  # Llama 3's own format: its pat_str and special tokens are fixed, as in llama3's tokenizer.py
            (ranks, specials), pat_str, nfc = read_tiktoken_model(file), LLAMA3_PAT, False
            prefix = "<|begin_of_text|>"
            bos, eos = specials[prefix], [specials["<|end_of_text|>"], specials["<|eot_id|>"]]
            chat_format = read_chat_format(directory, config) or ChatFormat("llama3")
        bos, eos = read_bos_eos(directory, config, ranks, specials, bos, eos)
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # a field of a kind the checks did not name
        need(False, file, "a field", f"is missing or malformed ({type(e).__name__}: {e})")
    return Tokenizer(ranks, specials, pat_str, bos_id=bos, eos_ids=eos, nfc=nfc, chat_format=chat_format,
                     add_bos=bos is not None and specials.get(prefix) == bos, source=str(file))
