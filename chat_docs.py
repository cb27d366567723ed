"""One row of a corpus as one document: a text column, GSM8K-style "question" + "answer", or a chat, the same for
a .jsonl line and a parquet row.

A chat row holds `messages` ([{"role", "content"}, ...], the OpenAI / Hugging Face form) or ShareGPT's
`conversations` ([{"from", "value"}, ...]); its turns are rendered with the teacher's chat template
(Tokenizer.chat, no generation prompt: the whole conversation is the document, its last turn included), then
packed like any other document (data.py: [bos] + ids + [eos]). Roles are mapped to the template's three:
    human, user -> user        gpt, assistant -> assistant        system -> system
A turn of any other role (tool, function_call, observation, ...), an empty conversation, a turn that is not a
role and a string, and a tokenizer without a chat template red knows (ChatML or Llama 3 headers) are each a
RowError, which the reader turns into one line naming the file and its line or row.
Where the packing puts bos itself (Llama 3), the bos the template writes first is left out, so a chat
document starts with one bos, as Hugging Face's apply_chat_template(tokenize=True) gives.

Builds on problems.py (qa_text); the tokenizer it is handed is tokenizer.py's.
Run as: imported by text_sources.py and parquet_source.py (python data.py --tokenizer DIR --data chats.jsonl packs
such a file and prints what it holds).
"""
from problems import qa_text

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
# the chat columns red reads, each with the keys of its turns: (role, content)
CHAT_COLUMNS = {"messages": ("role", "content"), "conversations": ("from", "value")}
ROW_FORMS = ('a string "{text}" field, "question" and "answer", or a chat: "messages" (role, content) or '
             '"conversations" (from, value)')
FIX = "fix or drop that row"


class RowError(ValueError):
    """A row that is no document; the message says what and what to do, the reader adds where."""


def chat_messages(turns, column: str) -> list[dict]:
    """A chat column's turns -> [{"role": system | user | assistant, "content": str}, ...], checked."""
    role_key, content_key = CHAT_COLUMNS[column]
    if not isinstance(turns, list):
        raise RowError(f'"{column}" is a {type(turns).__name__}, not a list of turns - {FIX}')
    if not turns:
        raise RowError(f'an empty conversation ("{column}" has no turns) - {FIX}')
    messages = []
    for n, turn in enumerate(turns, start=1):
        if not (isinstance(turn, dict) and isinstance(turn.get(role_key), str)
                and isinstance(turn.get(content_key), str)):
            raise RowError(f'turn {n} of "{column}" needs a string "{role_key}" and a string "{content_key}" - '
                           + FIX)
        role = ROLES.get(turn[role_key])
        if role is None:
            raise RowError(f'unknown role {turn[role_key][:40]!r} in turn {n} of "{column}" - red maps human/user, '
                           "gpt/assistant and system: rename that role, or drop the row")
        messages.append({"role": role, "content": turn[content_key]})
    return messages


def chat_renderer(tokenizer):
    """messages -> the document text, through `tokenizer`'s chat template; a RowError when it has none."""
    bos_id = getattr(tokenizer, "bos_id", None)  # the bos the packing puts itself (Llama 3), as text, once
    packed_bos = tokenizer.decode([bos_id]) if getattr(tokenizer, "add_bos", False) and bos_id is not None else ""

    def render(messages: list[dict]) -> str:
        if getattr(tokenizer, "chat_format", None) is None:
            where = getattr(tokenizer, "source", "the tokenizer")
            raise RowError(f"a chat row, but {where} has no chat template of a family red knows (ChatML or Llama 3 "
                           "headers) - use an instruct checkpoint's tokenizer, or render the chats to text yourself")
        return tokenizer.chat(messages, add_generation_prompt=False).removeprefix(packed_bos)
    return render


def row_document(row, text_column: str = "text", render=None) -> str:
    """One row (a dict) -> its document: the text column first, then question + answer, then a chat."""
    if isinstance(row, dict):
        if isinstance(row.get(text_column), str):
            return row[text_column]
        if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            return qa_text(row["question"], row["answer"])
        for column in CHAT_COLUMNS:
            if row.get(column) is not None:
                messages = chat_messages(row[column], column)
                if render is None:
                    raise RowError("a chat row, but no tokenizer to render it with - pass one")
                return render(messages)
    raise RowError("needs " + ROW_FORMS.format(text=text_column) + " - convert the file to one of those forms")
