"""Parquet shards as a source of documents: one `.parquet` file, a folder of shards or a glob of them, read a
batch of rows at a time with pyarrow (an optional dependency: `pip install pyarrow`).

A source is SHARD.parquet, a directory (every *.parquet directly inside it, in name order) or a glob such as
'data/train-*.parquet' (quoted, so that red expands it, in name order; a folder that holds several splits, as
a Hugging Face dataset's often does, is named by such a glob). Each row is one document, read by
chat_docs.row_document: the text column ("text", or --text-column NAME), or "question" + "answer", or a chat
("messages" or "conversations"), the same as a .jsonl line. Which one is decided per shard from its schema,
before any row is read, so a shard without any of them is refused at once. Memory is flat in the number of
rows: pyarrow decodes a row group's pages at a time, and red holds the few batches of ROWS_PER_BATCH rows that
are in flight to the tokenising processes.
A missing pyarrow, a missing shard, a shard that is not parquet (or is cut short), a missing column and a row
that is no document (a null text, an unknown chat role) are each one DataError naming the shard (and the row).

Builds on chat_docs.py (the chat columns; text_sources.parquet_rows reads each row) and sources.py's
DataError, handed in by the caller as `error` (sources.py imports this module for its checks).
Run as: imported by sources.py (python data.py --tokenizer DIR --data 'shards/*.parquet' packs shards and prints
what they hold).
"""
import glob
import os

from chat_docs import CHAT_COLUMNS

ROWS_PER_BATCH = 1024
INSTALL = "pip install pyarrow"


def is_parquet(name: str) -> bool:
    """Whether a source name is parquet: a .parquet file or glob, or a directory of shards."""
    return name.endswith(".parquet") or os.path.isdir(name)


def shard_paths(name: str, error) -> list[str]:
    """The shards a parquet source names, in order; `error` (a DataError class) when there are none."""
    if os.path.isdir(name):
        shards = sorted(glob.glob(os.path.join(glob.escape(name), "*.parquet")))
        if not shards:
            raise error(f"{name}: a directory without .parquet files - name a folder of parquet shards, or a "
                        "file")
        return shards
    if glob.has_magic(name) and not os.path.exists(name):
        shards = sorted(p for p in glob.glob(name) if os.path.isfile(p))
        if not shards:
            raise error(f"{name}: no file matches - check the pattern (quote it, so that red expands it)")
        return shards
    if not os.path.isfile(name):
        raise error(f"{name}: no such file - check the path (a weight is written FILE:WEIGHT)")
    return [name]


def pyarrow_parquet(name: str, error):
    """pyarrow.parquet, or one line saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise error(f"{name}: reading parquet needs pyarrow, which is not installed - {INSTALL}") from None
    return pq


def open_shard(path: str, text_column: str, error):
    """(pyarrow ParquetFile, the columns to read) of one shard, its footer and schema checked."""
    pq = pyarrow_parquet(path, error)
    if os.path.getsize(path) == 0:
        raise error(f"{path}: empty file - remove the shard, or write it again")
    try:
        shard = pq.ParquetFile(path)
        names = shard.schema_arrow.names
    except Exception as e:  # pyarrow's ArrowInvalid / ArrowIOError / OSError: not parquet, or cut short
        raise error(f"{path}: not a readable parquet file ({' '.join(str(e).split())[:100]}) - download or "
                    "write the shard again, or remove it") from None
    if text_column in names:
        return shard, [text_column]
    if {"question", "answer"} <= set(names):
        return shard, ["question", "answer"]
    for column in CHAT_COLUMNS:
        if column in names:
            return shard, [column]
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise error(f'{path}: no "{text_column}" column (it has {shown or "none"}) - name the text\'s column with '
                '--text-column NAME (rows may also hold "question" and "answer", "messages" or "conversations")')


def check_parquet(name: str, text_column: str, error):
    """Every shard of `name` opened and its columns found: the checks a tool runs before it loads a model."""
    for path in shard_paths(name, error):
        open_shard(path, text_column, error)


def parquet_batches(name: str, text_column: str, error):
    """Yield (shard path, rows before the batch, a pyarrow RecordBatch of the columns to read) over every shard of
    `name`, in order; text_sources.parquet_rows makes documents of a batch."""
    for path in shard_paths(name, error):
        shard, columns = open_shard(path, text_column, error)
        row = 0
        try:
            for batch in shard.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
                yield path, row, batch
                row += batch.num_rows
        except (OSError, ValueError) as e:  # a damaged page inside the shard (pyarrow's errors subclass these)
            raise error(f"{path}: unreadable after row {row} ({' '.join(str(e).split())[:100]}) - download or "
                        "write the shard again, or remove it") from None
