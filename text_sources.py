"""A text source as work for the processes that tokenise it: a .jsonl file as groups of raw lines, parquet as
batches of rows, a .txt as pieces of about a MB, the built-in corpora as groups of documents.

Each work item is (function, arguments), and function(tokenizer, *arguments) gives the item's (text, starts a
document, ends one) pieces, blank documents dropped. The reading that costs (UTF-8, JSON, chat templates, a
parquet batch's values) thus runs where the encoding runs, in tokenize_corpus.py's worker processes, and the
process that reads the files only cuts them into items of about WORK_BYTES (done there, the reading of .jsonl
rows took a third of a core at two cores' encoding rate).
A .txt is one document, read in pieces of TXT_BLOCK bytes cut after an ASCII letter followed by a space: where
tokenizer.encode cuts long text itself (no piece of a pre-tokenizer straddles it, NFC composes nothing across
it), so the pieces' ids are the whole file's, and a .txt larger than memory is read in flat memory too (text
with no such pair, Chinese say, is read on until one comes). A tokenizer with an added token that holds such a
pair reads the file whole.
Errors are sources.DataError, one line naming the file and the line (or row, or byte) wherever they are met.

Builds on sources.py (json_row, decode, the built-in corpora, DataError), chat_docs.py (a row's document) and
parquet_source.py (shards and their batches).
Run as: imported by data.py (python data.py --tokenizer DIR --data SOURCE ... reads every text source this way).
"""
import re

from chat_docs import RowError, chat_renderer, row_document
from parquet_source import parquet_batches
from sources import DataError, builtin_documents, decode, json_row

WORK_BYTES = 1 << 20   # about this much text per work item
TXT_BLOCK = 1 << 20    # bytes of a .txt read at a time
LETTER_SPACE = re.compile(r"[A-Za-z] ")  # where long text may be cut without changing a token (tokenizer.py)


def source_work(name: str, tokenizer, *, seed: int = 0, text_column: str = "text", size: int = 0):
    """Yield the work items of a text source (a built-in, .txt, .jsonl or parquet), in order, each of about
    `size` bytes (0: WORK_BYTES)."""
    size = size or WORK_BYTES
    if name == "pydoc" or name.startswith("problems:"):
        yield from document_work(builtin_documents(name, seed), size)
    elif name.endswith(".txt"):
        specials = getattr(getattr(tokenizer, "encoding", None), "special_tokens_set", ())
        for piece in txt_pieces(name, cut=not any(map(LETTER_SPACE.search, specials))):
            yield ready, ([piece],)
    elif name.endswith(".jsonl"):
        yield from jsonl_work(name, text_column, size)
    else:
        for path, first_row, batch in parquet_batches(name, text_column, DataError):
            yield parquet_rows, (path, first_row, batch, text_column)


def source_pieces(name: str, tokenizer, **kwargs):
    """Yield a text source's pieces in order, each work item expanded here (what the workers do)."""
    for function, arguments in source_work(name, tokenizer, **kwargs):
        yield from function(tokenizer, *arguments)


def document_work(docs: list[str], size: int, marks: bool = True):
    """Documents in memory as work items of about `size` characters (every document kept, blank or not), each
    between bos and eos (marks=False: the bare text, as a plain tokenizer loop sees it)."""
    group, n = [], 0
    for doc in docs:
        group.append((doc, marks, marks))
        n += len(doc)
        if n >= size:
            yield ready, (group,)
            group, n = [], 0
    if group:
        yield ready, (group,)


def ready(tokenizer, pieces: list) -> list:
    """A work item whose pieces are already read."""
    return pieces


# ---------------------------------------------------------------------------------------------------------
# .jsonl: groups of raw lines here, documents in the worker

def jsonl_work(path: str, text_column: str, size: int):
    """A .jsonl file as items of raw lines (b"\\n" only, not splitlines(): JSON strings may hold U+2028)."""
    with open(path, "rb") as f:
        group, n, first, offset = [], 0, 1, 0
        for lineno, raw in enumerate(f, start=1):
            group.append(raw)
            n += len(raw)
            if n >= size:
                yield jsonl_rows, (path, first, offset, group, text_column)
                group, n, first, offset = [], 0, lineno + 1, offset + n
        if group:
            yield jsonl_rows, (path, first, offset, group, text_column)


def jsonl_rows(tokenizer, path: str, first: int, offset: int, lines: list[bytes], text_column: str) -> list:
    """The documents of raw lines `first`, ... of a .jsonl file (byte `offset` on), each row read by
    chat_docs.row_document; a bad line is one DataError naming it."""
    render, pieces = chat_renderer(tokenizer), []
    for lineno, raw in enumerate(lines, start=first):
        line = decode(raw, path, offset, lineno)
        offset += len(raw)
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a BOM is an encoding marker, not text
        if not line or line.isspace():  # (not strip(), which copies the line)
            continue
        try:
            row = json_row(line)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e}) - fix or delete that line") from None
        try:
            doc = row_document(row, text_column, render)
        except RowError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if doc and not doc.isspace():  # a blank document would be bos + eos only
            pieces.append((doc, True, True))
    return pieces


def parquet_rows(tokenizer, path: str, first_row: int, batch, text_column: str) -> list:
    """The documents of a batch of parquet rows (rows first_row + 1, ... of the shard)."""
    render, pieces = chat_renderer(tokenizer), []
    try:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    except Exception as e:  # pyarrow's errors on values it cannot convert
        raise DataError(f"{path}: unreadable rows after row {first_row} ({' '.join(str(e).split())[:100]}) - "
                        "download or write the shard again, or remove it") from None
    for row, cells in enumerate(zip(*columns), start=first_row + 1):
        try:
            doc = row_document(dict(zip(batch.schema.names, cells)), text_column, render)
        except RowError as e:
            raise DataError(f"{path}: row {row}: {e}") from None
        if doc and not doc.isspace():
            pieces.append((doc, True, True))
    return pieces


# ---------------------------------------------------------------------------------------------------------
# .txt: one document in pieces

def txt_pieces(path: str, block: int = 0, cut: bool = True):
    """Yield a .txt file, one document, as (text, starts the document, ends it) pieces of about `block` bytes (0:
    TXT_BLOCK) cut after an ASCII letter followed by a space (`cut=False`: one piece). A blank file yields
    nothing."""
    with open(path, "rb") as f:
        pieces = _txt_blocks(f, path, (block or TXT_BLOCK) if cut else -1)
        text = next(pieces, "").removeprefix("\ufeff")  # a BOM is an encoding marker, not text
        if not text.strip():  # the first piece is the whole file unless it holds a letter
            return
        first = True
        for following in pieces:
            yield text, first, False
            text, first = following, False
        yield text, first, True


def _txt_blocks(f, path: str, block: int):
    """Consecutive decoded pieces of an open file, each ending at the last letter-space cut of its bytes."""
    offset, line, rest = 0, 1, b""
    while True:
        raw = f.read(block)
        data = rest + raw
        cut = _last_cut(data) if raw and block > 0 else len(data)
        if raw and cut <= 0:  # no cut yet: read on
            rest = data
            continue
        piece, rest = data[:cut], data[cut:]
        if piece:
            yield decode(piece, path, offset, line)
        offset, line = offset + len(piece), line + piece.count(b"\n")
        if not raw:
            return


def _last_cut(data: bytes) -> int:
    """The index after the last ASCII letter that a space follows, or -1 (UTF-8: never inside a character)."""
    i = data.rfind(b" ")
    while i > 0:
        if data[i - 1:i].isalpha():  # bytes.isalpha is ASCII only
            return i
        i = data.rfind(b" ", 0, i)
    return -1
