"""tokenizer.py against Hugging Face `tokenizers` (the reference we did not write): identical ids on a
generated corpus for SmolLM2's real tokenizer.json and for small Llama-3-style and Qwen2-style tokenizers
trained here, exact round trips, Llama 3's tiktoken-format tokenizer.model, chat formats against
`transformers`' apply_chat_template, and one-line errors for what red cannot read.

Builds on tokenizer.py, with tokenizers and transformers as the references.
Run as: python -m pytest tests/test_tokenizer.py -q      (add -m "not slow" to skip the real tokenizer)
"""
import base64
import functools
import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from tokenizer import TokenizerError, load_tokenizer, safe_chunks
from tokenizer_files import GPT2_PAT, GPT2_PAT_AFTER_DIGITS, LLAMA3_PAT, bytes_to_unicode

ROOT = Path(__file__).resolve().parent.parent
# Qwen2's pre-tokenizer regex: Llama 3's, but numbers one digit at a time
QWEN2_PAT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Llama 3.0-8B-Instruct's chat template, verbatim
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
                   "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
                   "<|end_header_id|>\n\n' }}{% endif %}")
# the lines of Llama 3.2-Instruct's template that run when no tools are given
LLAMA32_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
# the lines of Qwen2.5-Instruct's template that run when no tools are given
QWEN25_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 * 7?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Hi there!\n"}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"},
     {"role": "user", "content": "Another one, bigger than 100 \U0001F642"}],
]


# ------------------------------------------------------------------------------------------------------
# a seeded corpus of everything that trips tokenizers up

WORDS = ("the of and to in is was for that with as on by at from his her they we you it this are be an "
         "not or which have had one all their there been were when who will more no if out so up said what "
         "its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people how too little state good very make "
         "world still own see men work long get here between both life being under never day same another "
         "know while last might us great old year off come since against go came right used take three "
         "tokenizer distillation student teacher channel rank matrix").split()
CODE = ["def f(x):\n    return x ** 2 + 1\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "if x >= 10 and not done:\n        print(f\"{x!r:>8}\")", "const re = /\\s+(?!\\S)/g; // whitespace",
        "    \t  x = {'a': [1, 2, 3], \"b\": None}  # dict\r\n", "SELECT * FROM t WHERE id=42;;",
        "<div class=\"row\">&nbsp;</div>", "std::vector<int> v{1,2,3};", "    \n    \n\n\treturn;"]
NUMBERS = ["12345", "3.14159", "1,234,567", "$12.50", "-42", "1e-9", "2024-05-09", "x² + y³", "½ cup",
           "٣٤٥", "１２３", "Ⅻ", "007", "10,000,000,000", "0x1F", "99.9%"]
OTHER = ["日本語のテキストです。", "中文分词测试，你好世界！", "한국어 문장입니다.", "Привет, мир!", "Ελληνικά",
         "café naïve Ångström façade", "cafe\u0301 nai\u0308ve", "👍🏽 🎉🎉 👨‍👩‍👧 🇫🇷",
         "I'M SURE they'RE here, it's fine",
         "don't won't y'all", "non\u00a0breaking", "ideographic\u3000space", "line\u2028sep\u0085next",
         "zero\u200bwidth", "\x04control\x06chars\x13\x1d", "tab\there", "a  b   c    d", "\n\n\n", "\r\n",
         " \t \n ", "   leading", "trailing   ", "!!!???...", "«quotes» “curly” ‘single’", "—–-", "\x00"]
GSM8K = ("Natalia sold clips to {a} of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May?\nNatalia sold {a}/2 = <<{a}/2={h}>>{h} "
         "clips in May.\nNatalia sold {a}+{h} = <<{a}+{h}={s}>>{s} clips altogether.\n#### {s}")


# code points from many scripts and blocks, astral planes and unassigned ones included (surrogates excluded)
UNICODE_BLOCKS = [(0x20, 0x7f), (0xa0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x600, 0x700), (0x900, 0x980),
                  (0x2000, 0x2070), (0x2150, 0x2190), (0x3000, 0x3100), (0x4e00, 0x4f00), (0xac00, 0xad00),
                  (0xff00, 0xfff0), (0x1d400, 0x1d500), (0x1f300, 0x1f700), (0x10000, 0x110000)]


def make_corpus(seed: int, n: int = 2400, specials: tuple = ()) -> list[str]:
    """n seeded lines mixing prose, code, numbers, GSM8K arithmetic, CJK, emoji, odd whitespace, specials."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.35:
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
                words[0] = words[0].capitalize() if rng.random() < 0.7 else words[0].upper()
                parts.append(" ".join(words) + rng.choice([".", "!", "?", ",", ";", ":", "", "'s"]))
            elif kind < 0.45:
                parts.append(rng.choice(CODE))
            elif kind < 0.55:
                number = str(rng.randint(0, 10 ** rng.randint(1, 12)))
                parts.append(rng.choice(NUMBERS) if rng.random() < 0.6 else number)
            elif kind < 0.65:
                a = 2 * rng.randint(1, 500)
                parts.append(GSM8K.format(a=a, h=a // 2, s=a + a // 2))
            elif kind < 0.8:
                parts.append(rng.choice(OTHER))
            elif kind < 0.9:
                blocks = [rng.choice(UNICODE_BLOCKS) for _ in range(rng.randint(1, 12))]
                chars = (chr(rng.randrange(*b)) for b in blocks)
                parts.append("".join(c if not 0xd800 <= ord(c) < 0xe000 else "?" for c in chars))
            elif specials:
                parts.append(rng.choice(specials) + rng.choice(["", "user\n", "<|", "|>"]))
        lines.append("".join(p + rng.choice([" ", "  ", "\n", "\t", "", " \n", "\n\n"]) for p in parts))
    return lines


def split_then_bytes(pattern: str, behavior: str = "isolated", invert: bool = False):
    """Split(pattern) + ByteLevel(use_regex=False), the pre-tokenizer of Llama 3 and Qwen2."""
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior=behavior, invert=invert),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train_bpe(tmp_path: Path, name: str, pre_tokenizer, specials: list[str], *, nfc: bool = False,
              ignore_merges: bool = False, bos: str | None = None, vocab_size: int = 1000,
              lines: int = 2400) -> Path:
    """A byte-level BPE trained by `tokenizers` on the corpus, saved as tmp_path/name/tokenizer.json."""
    tok = HFTokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(make_corpus(seed=1, n=lines), trainer)
    if bos:  # HF then puts bos in front of every text when add_special_tokens=True
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    (tmp_path / name).mkdir()
    tok.save(str(tmp_path / name / "tokenizer.json"))
    return tmp_path / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{"llama3": dir, "qwen2": dir} of the two trained tokenizers, each with its configs and chat template."""
    tmp = tmp_path_factory.mktemp("tok")
    # like the real ones: Llama 3 skips merges for pieces that are whole tokens and starts texts with bos,
    # Qwen2 normalises to NFC
    llama = train_bpe(tmp, "llama3", split_then_bytes(LLAMA3_PAT), ["<|begin_of_text|>", "<|eot_id|>"],
                      ignore_merges=True, bos="<|begin_of_text|>")
    (llama / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE,
        tokenizer_class="PreTrainedTokenizerFast")))
    (llama / "generation_config.json").write_text(json.dumps(dict(bos_token_id=0, eos_token_id=[0, 1])))
    qwen = train_bpe(tmp, "qwen2", split_then_bytes(QWEN2_PAT), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                     nfc=True)
    (qwen / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token=None, eos_token="<|im_end|>", tokenizer_class="PreTrainedTokenizerFast")))
    (qwen / "chat_template.jinja").write_text(QWEN25_TEMPLATE)
    return {"llama3": llama, "qwen2": qwen}


def assert_same_ids(tok_dir: Path, corpus: list[str]):
    """Every line, and all lines as one long text, encode to the ids `tokenizers` gives; any ids decode alike."""
    ours, ref = load_tokenizer(tok_dir), HFTokenizer.from_file(str(tok_dir / "tokenizer.json"))
    expected = [e.ids for e in ref.encode_batch(corpus, add_special_tokens=False)]
    mismatches = [(line, ids) for line, ids in zip(corpus, expected) if ours.encode(line) != ids]
    assert not mismatches, f"{len(mismatches)} of {len(corpus)} lines differ, first: {mismatches[0]}"
    # a long text is encoded in chunks, which must not change a single id
    whole = "".join(corpus)
    assert ours.encode(whole) == ref.encode(whole, add_special_tokens=False).ids
    # with add_special_tokens=True HF adds bos exactly when `add_bos` says so
    assert ours.encode(corpus[0], bos=ours.add_bos) == ref.encode(corpus[0]).ids
    # random ids decode alike, tokens that end inside a UTF-8 character included
    rng = random.Random(0)
    for ids in ([rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 8))] for _ in range(1000)):
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    return ours


# ------------------------------------------------------------------------------------------------------
# ids identical to `tokenizers`

@pytest.mark.slow
def test_smollm2_ids_match_hf(example_teacher):
    """The real SmolLM2 tokenizer.json: Digits(individual) + ByteLevel(GPT-2 regex), 49152 tokens."""
    corpus = make_corpus(seed=0, specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>"))
    tok = assert_same_ids(Path(example_teacher), corpus)
    # SmolLM2 has no token for some control bytes (b"\x04"): HF drops them, so must we; the corpus has them
    assert tok._missing and any("\x04" in line for line in corpus)
    for line in corpus:
        kept = line.encode().translate(None, tok._missing).decode("utf-8", "replace")
        assert tok.decode(tok.encode(line)) == kept
    # its configured bos is <|im_start|>, which its HF tokenizer never adds
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.vocab_size, tok.add_bos) == (1, 2, [2], 49152, False)
    assert tok._encode_ordinary == tok.encoding.encode_ordinary  # a family's regex: no QuietPanics around each call


def test_llama3_style_ids_match_hf(trained):
    """Split(Llama 3 regex) + ByteLevel, ignore_merges, bos by post-processor; exact round trips."""
    corpus = make_corpus(seed=2, specials=("<|begin_of_text|>", "<|eot_id|>"))
    tok = assert_same_ids(trained["llama3"], corpus)
    assert all(tok.decode(tok.encode(line)) == line for line in corpus)
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.vocab_size, tok.add_bos) == (0, 1, [1, 0], 1000, True)
    assert tok._encode_ordinary == tok.encoding.encode_ordinary  # a family's regex: no QuietPanics around each call


def test_qwen2_style_ids_match_hf(trained):
    """Split(Qwen2 regex, one digit per token) + ByteLevel, NFC normaliser, no bos."""
    corpus = make_corpus(seed=3, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tok = assert_same_ids(trained["qwen2"], corpus)
    # NFC is applied before BPE, so decomposed accents come back composed, as with HF
    assert all(tok.decode(tok.encode(line)) == unicodedata.normalize("NFC", line) for line in corpus)
    assert tok.bos_id is None and tok.eos_id == 2 and not tok.add_bos
    assert tok.encode("1234") == [tok.encode(d)[0] for d in "1234"]  # [qwen] one digit per token
    assert tok._encode_ordinary == tok.encoding.encode_ordinary  # a family's regex: no QuietPanics around each call


PRE_TOKENIZERS = {  # the other shapes tokenizer.py translates into one pat_str
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "digit_runs": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    "letters_isolated": lambda: split_then_bytes(r"\p{L}+"),  # the gaps between matches are pieces too
    "blanks_removed": lambda: split_then_bytes(r"\s+", "removed"),
    "blanks_kept": lambda: split_then_bytes(r"\s+", "removed", invert=True),
    "literal_dot": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(".", behavior="isolated"),  # a String
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                             use_regex=False)]),
}


@pytest.mark.parametrize("name", PRE_TOKENIZERS)
def test_other_pre_tokenizers_match_hf(tmp_path, name):
    """GPT-2 alone, digit runs, Split with gaps, Removed / inverted Split, a String pattern."""
    # "<x>" and "<x><y>" overlap: HF takes the longest added token starting at a place
    path = train_bpe(tmp_path, name, PRE_TOKENIZERS[name](), ["<x>", "<x><y>"], vocab_size=500, lines=600)
    corpus = make_corpus(seed=6, n=600, specials=("<x>", "<x><y>"))
    ours, ref = load_tokenizer(path), HFTokenizer.from_file(str(path / "tokenizer.json"))
    for line, enc in zip(corpus, ref.encode_batch(corpus, add_special_tokens=False)):
        assert ours.encode(line) == enc.ids, line
    # GPT-2's regex and SmolLM2's digits shape are families' regexes; the others are encoded with QuietPanics
    assert (ours._encode_ordinary == ours.encoding.encode_ordinary) == (name in ("gpt2", "digit_runs"))


def test_long_blank_runs(trained):
    """tiktoken's regex panics on ~1M blanks in a row: no crash, and ids stay exact up to 500k."""
    ours = load_tokenizer(trained["qwen2"])
    ref = HFTokenizer.from_file(str(trained["qwen2"] / "tokenizer.json"))
    text = "a " + " " * 400_000 + "b\n\n"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids
    assert ours.decode(ours.encode(" " * 1_100_000 + "x")) == " " * 1_100_000 + "x"


def test_safe_chunks_keep_every_piece(trained):
    """Cutting between a letter and a space changes no piece of the GPT-2, SmolLM2, Llama 3 or Qwen2 regex."""
    text = "".join(make_corpus(seed=4, n=300))
    chunks = list(safe_chunks(text, size=200))
    assert len(chunks) > 50 and "".join(chunks) == text
    ranks = load_tokenizer(trained["qwen2"])._ranks  # any byte-level ranks do: tokens never cross pieces
    for pat in (GPT2_PAT, r"\p{N}|" + GPT2_PAT_AFTER_DIGITS, LLAMA3_PAT, QWEN2_PAT):
        enc = tiktoken.Encoding("cuts", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        assert [i for c in chunks for i in enc.encode_ordinary(c)] == enc.encode_ordinary(text)


def test_tiktoken_model_format(trained, tmp_path):
    """Llama 3's original/tokenizer.model: base64 token and rank per line, then 256 special tokens."""
    ref = HFTokenizer.from_file(str(trained["llama3"] / "tokenizer.json"))
    vocab = {tok: i for tok, i in ref.get_vocab(with_added_tokens=False).items() if i >= 2}
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    lines = [f"{base64.b64encode(bytes(byte_of[c] for c in t)).decode()} {i}"
             for t, i in sorted(vocab.items(), key=lambda item: item[1])]
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "tokenizer.model").write_text("\n".join(lines) + "\n")
    tok = load_tokenizer(tmp_path)
    first = 1000  # special tokens follow the last rank, as 128000 follows Llama 3's 128000 ranks
    assert (tok.bos_id, tok.eos_ids, tok.vocab_size) == (first, [first + 1, first + 9], first + 256)
    assert tok._encode_ordinary == tok.encoding.encode_ordinary
    remap = {0: first, 1: first + 9}  # the trained tokenizer's two special tokens, under their Llama 3 ids
    corpus = make_corpus(seed=5, n=1000, specials=("<|begin_of_text|>", "<|eot_id|>"))
    for line, enc in zip(corpus, ref.encode_batch(corpus, add_special_tokens=False)):
        assert tok.encode(line) == [remap.get(i, i) for i in enc.ids]
    assert tok.chat([{"role": "user", "content": " hi "}]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_encode_bos_eos(trained):
    """bos / eos come from tokenizer_config.json and generation_config.json, and only when asked."""
    tok = load_tokenizer(trained["llama3"] / "tokenizer.json")  # a file path works too, configs beside it
    body = tok.encode("Hello world")
    assert tok.encode("Hello world", bos=True, eos=True) == [0, *body, 1]
    qwen = load_tokenizer(trained["qwen2"])  # no bos: bos=True adds nothing
    assert qwen.encode("x", bos=True) == qwen.encode("x")


# ------------------------------------------------------------------------------------------------------
# chat formats against transformers' apply_chat_template

@functools.cache
def hf_tokenizer(path: Path):
    """transformers' tokenizer for a directory, loaded once (the first load costs seconds)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def hf_chat(path, messages, add_generation_prompt):
    """The reference rendering: transformers runs the checkpoint's jinja template."""
    return hf_tokenizer(Path(path)).apply_chat_template(messages, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)


@pytest.mark.slow
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_matches_transformers(example_teacher, add_generation_prompt):
    """SmolLM2's ChatML with its default system prompt, with and without a system message, multi-turn."""
    tok = load_tokenizer(example_teacher)
    for messages in CONVERSATIONS:
        expected = hf_chat(example_teacher, messages, add_generation_prompt)
        assert tok.chat(messages, add_generation_prompt) == expected


@pytest.mark.parametrize("family", ["llama3", "llama32", "qwen2"])
def test_chat_matches_transformers(trained, tmp_path, family):
    """Llama 3.0 headers, Llama 3.2's dated system header, and Qwen2.5's ChatML default system prompt."""
    path = trained["qwen2" if family == "qwen2" else "llama3"]
    if family == "llama32":  # same tokenizer, Llama 3.2's dated system header
        path = tmp_path / "llama32"
        path.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (path / f).write_bytes((trained["llama3"] / f).read_bytes())
        (path / "chat_template.jinja").write_text(LLAMA32_TEMPLATE)
    tok = load_tokenizer(path)
    for messages in CONVERSATIONS:
        for gen in (True, False):
            assert tok.chat(messages, gen) == hf_chat(path, messages, gen)


# ------------------------------------------------------------------------------------------------------
# what red refuses, with one line

def save_hf(tmp_path: Path, tok: HFTokenizer) -> Path:
    """Save a `tokenizers` Tokenizer as tmp_path/tokenizer.json; return the directory."""
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_missing_paths(tmp_path):
    """A path that does not exist, and a directory with no tokenizer file in it."""
    with pytest.raises(TokenizerError, match="no such file"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "sentencepiece_bpe", "lowercase", "lstrip",
                                  "merge_order", "not_json", "spm_model"])
def test_unsupported_tokenizers(tmp_path, kind):
    """Tokenizers that tiktoken cannot reproduce exactly are refused with one line naming file and fix."""
    if kind == "wordpiece":
        tok = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
        path, match = save_hf(tmp_path, tok), "WordPiece"
    elif kind == "unigram":
        tok = HFTokenizer(models.Unigram([("a", -1.0), ("b", -2.0)], 0, False))
        path, match = save_hf(tmp_path, tok), "Unigram"
    elif kind == "sentencepiece_bpe":
        tok = HFTokenizer(models.BPE({"<unk>": 0, "a": 1}, [], byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        path, match = save_hf(tmp_path, tok), "byte_fallback"
    elif kind == "lowercase":
        tok = HFTokenizer(models.BPE({"a": 0}, []))
        tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.ByteLevel()
        path, match = save_hf(tmp_path, tok), "normalizer Lowercase"
    elif kind == "lstrip":  # an added token that swallows the spaces before it
        tok = HFTokenizer(models.BPE({"a": 0}, []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True)])
        path, match = save_hf(tmp_path, tok), "strips spaces"
    elif kind == "merge_order":  # "abc" (id 3) is merged after "ab" (id 4): ids must follow the merges
        tok = HFTokenizer(models.BPE({"a": 0, "b": 1, "c": 2, "abc": 3, "ab": 4}, [("a", "b"), ("ab", "c")]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        path, match = save_hf(tmp_path, tok), "out of id order"
    elif kind == "not_json":
        (tmp_path / "tokenizer.json").write_text("{not json")
        path, match = tmp_path, "not valid JSON"
    else:  # Llama 2's tokenizer.model is a SentencePiece protobuf, not base64 lines
        (tmp_path / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02\xff\xfe")
        path, match = tmp_path, "SentencePiece"
    with pytest.raises(TokenizerError, match=match) as err:
        load_tokenizer(path)
    assert "\n" not in str(err.value) and " - " in str(err.value)


def test_chat_without_known_template(trained, tmp_path):
    """chat() refuses, in one line, when the template is missing or of an unknown family."""
    (tmp_path / "tokenizer.json").write_bytes((trained["qwen2"] / "tokenizer.json").read_bytes())
    with pytest.raises(TokenizerError, match="no chat template"):  # none at all
        load_tokenizer(tmp_path).chat([{"role": "user", "content": "hi"}])
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"  # neither ChatML nor Llama 3
    (tmp_path / "chat_template.jinja").write_text(template)
    with pytest.raises(TokenizerError, match="no chat template of a known family"):
        load_tokenizer(tmp_path).chat([{"role": "user", "content": "hi"}])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run `python scripts/encode.py ARGS` (tokenizer.py's demo CLI) as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "encode.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli(trained, tmp_path):
    """`python scripts/encode.py` prints ids; user errors give one `error:` line on stderr and exit code 2."""
    ok = run_cli("--model", str(trained["llama3"]), "--chat", "Hello world")
    assert ok.returncode == 0 and "tokens: [0, " in ok.stdout and "<|begin_of_text|> | " in ok.stdout
    (tmp_path / "bare").mkdir()  # a tokenizer without a chat template
    (tmp_path / "bare" / "tokenizer.json").write_bytes((trained["qwen2"] / "tokenizer.json").read_bytes())
    for args in (["--model", str(tmp_path / "missing"), "text"], ["--model", str(tmp_path), "text"],
                 ["--model", str(tmp_path / "bare"), "--chat", "text"]):
        out = run_cli(*args)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and " - " in out.stderr
