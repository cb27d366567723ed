"""A checkpoint's tokenizer as one `tiktoken.Encoding` whose ids are the checkpoint's ids, plus chat formatting.

tokenizer_files.py reads the checkpoint's files (vocab -> bytes, merges -> ranks, pre-tokenizer -> one regex);
here they become a tiktoken Encoding, with what tiktoken does not do itself: added tokens (<|im_start|>,
<|eot_id|>, ...) written inside the text become their ids, as in HF (empty ones are ignored, as in HF); Qwen's NFC;
bytes the vocab lacks are dropped as HF drops them; long texts go in safe chunks; chat prompts. The regex is
probed at load (PROBES); a regex of a family red does not know that gives up later, on some text, is the same one
error line (QuietPanics keeps tiktoken's panic text out; the families' regexes pay nothing for it).
Builds on tokenizer_files.py only (floor 2); data.py, eval_reasoning.py and distill.py use it.
Run as: imported (scripts/encode.py is a demo CLI: python scripts/encode.py --model DIR "text").
"""
import datetime
import os
import re
import sys
import threading
import unicodedata
from pathlib import Path

import regex  # tiktoken's own dependency; unlike `re` it knows \p{L}, which the rare path below needs
import tiktoken

from tokenizer_files import (FAMILY_PATS, LLAMA3_PAT, ChatFormat, TokenizerError, need, read_bos_eos,
                             read_chat_format, read_json, read_tiktoken_model, read_tokenizer_json)

# Long texts are encoded in chunks of about this many characters, cut where no piece can straddle the cut:
# after an ASCII letter followed by a space (see `safe_chunks`)
CHUNK_CHARS = 100_000
SAFE_CUT = re.compile(r"[A-Za-z](?= )")
# tiktoken's regex engine gives up (a Rust panic) on about 1M whitespace characters in a row
LONG_BLANK = re.compile(r"\s{500000}")
PROBES = [run * 300 + end for run in ("a", "1", " ", "\n", "!", "a1", "a ", "é") for end in ("", "!", "a", " ", "\n")]


class QuietPanics:
    """fd 2 pointed at /dev/null while any thread of this process is inside: a Rust panic (tiktoken's regex
    engine giving up) prints lines of its own there, before Python sees the exception that becomes one error line.
    Counted, so that threads encoding at once restore fd 2 once, when the last one leaves (~3 us a time)."""
    lock, depth, saved, null = threading.Lock(), 0, None, None

    def __enter__(self):
        with QuietPanics.lock:
            if QuietPanics.depth == 0:
                sys.stderr.flush()  # what Python printed before goes out, not into /dev/null
                QuietPanics.null = QuietPanics.null or os.open(os.devnull, os.O_WRONLY)
                QuietPanics.saved = os.dup(2)
                os.dup2(QuietPanics.null, 2)
            QuietPanics.depth += 1

    def __exit__(self, *exc):
        with QuietPanics.lock:
            QuietPanics.depth -= 1
            if QuietPanics.depth == 0:
                os.dup2(QuietPanics.saved, 2)
                os.close(QuietPanics.saved)


def quietly(encode):
    """`encode` with QuietPanics around every call."""
    def quiet_encode(text: str) -> list[int]:
        with QuietPanics():
            return encode(text)
    return quiet_encode


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
        # the families' regexes give up on no text that safe_chunks lets through (tests check them against HF);
        # any other regex may, so tiktoken's panic text is kept out of sight on every call (~3-4 us each)
        self._encode_ordinary = (self.encoding.encode_ordinary if pat_str in FAMILY_PATS
                                 else quietly(self.encoding.encode_ordinary))
        for probe in PROBES:  # a regex that backtracks without end is refused now, not in the middle of a run
            self._encode_chunk(probe)

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
                return self._encode_ordinary(text)
            ids = []
            for small in safe_chunks(text, size=100):  # keep the slow path to the few words around such a byte
                if not self._lacks_bytes(small):
                    ids.extend(self._encode_ordinary(small))
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
