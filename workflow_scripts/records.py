"""The record contract every stage reads and writes: a normalised record is `{"id", "prompt": [messages],
"chosen", "rejected"?, "answer"?, "negatives"?, "label"?, "prefix"?}` or a multi-turn question
(`"followups"`, `"category"?`, `"references"?`), and training reads pairs of them one at a time."""
from __future__ import annotations

from collections.abc import Iterator

from .conversations import ROLES
from .io import InputError, iter_jsonl_numbered, read_jsonl


def validate_record(record: dict, error) -> None:
    """Check a normalised record; `error(message, field)` builds the exception to raise."""
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise error("missing or empty id", "id")
    prompt = record.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise error("prompt must be a non-empty list of chat messages", "prompt")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise error(f"message {i} needs a role among {sorted(ROLES)}", f"prompt[{i}].role")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise error(f"message {i} needs non-empty string content", f"prompt[{i}].content")
    if prompt[-1]["role"] != "user":
        raise error("the last prompt message must come from the user", f"prompt[{len(prompt) - 1}].role")
    for field in ("chosen", "rejected"):
        if field in record and (not isinstance(record[field], str) or not record[field].strip()):
            raise error("must be a non-empty string", field)
    if "label" in record and not isinstance(record["label"], bool):
        raise error("must be true or false (is the completion desirable?)", "label")
    if "prefix" in record and not isinstance(record["prefix"], str):
        raise error("must be a string (the given start of the response)", "prefix")
    if "negatives" in record and (not isinstance(record["negatives"], list) or not all(
            isinstance(n, str) for n in record["negatives"])):  # a sampled negative may be empty (EOS first)
        raise error("must be a list of strings", "negatives")
    if "followups" in record:
        _validate_question(record, error)
    elif "chosen" not in record:
        raise error("missing", "chosen")


def _validate_question(record: dict, error) -> None:
    """A multi-turn question: follow-up user turns, an optional category and reference answers (strings)."""
    for field in ("followups", "references"):
        values = record.get(field, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise error("must be a list of non-empty strings", field)
    if "category" in record and not isinstance(record["category"], str):
        raise error("must be a string", "category")


def read_pairs(path: str, need: int = 0, reader: str = "", labelled: bool = False) -> list[dict]:
    """Training records with `negatives`: a merged generation file, data whose `rejected` is the one negative,
    or unpaired data (`label`, no negatives).

    With `need`, every record must hold that many negatives; with `labelled`, a `label`; `reader` (who
    reads them) goes into the error.
    """
    return list(iter_pairs(path, need, reader, labelled))


def iter_pairs(path: str, need: int = 0, reader: str = "", labelled: bool = False) -> Iterator[dict]:
    """read_pairs's records one at a time: memory of one record and the ids seen so far; an error names
    the file's line."""
    def validate(record, error):
        validate_record(record, error)
        if "negatives" in record:
            negs = record["negatives"]
            if not isinstance(negs, list) or not all(isinstance(n, str) for n in negs):
                raise error("must be a list of strings", "negatives")

    seen: dict[str, int] = {}
    for lineno, r in iter_jsonl_numbered(path, validate):
        if r["id"] in seen:
            raise InputError(path, f"duplicate id {r['id']!r} (first on line {seen[r['id']]})", lineno, "id")
        seen[r["id"]] = lineno
        if "negatives" not in r:
            r["negatives"] = [r["rejected"]] if "rejected" in r else []
        if labelled and "label" not in r:
            raise InputError(path, f"id {r['id']!r} has no label; {reader} reads unpaired (labelled) data", lineno,
                             "label")
        if len(r["negatives"]) < need:
            raise InputError(path, f"id {r['id']!r} holds {len(r['negatives'])} negatives; {reader} needs {need}",
                             lineno, "negatives")
        yield r
    if not seen:
        raise InputError(path, f"no records; {reader} needs at least one")


def answer_rows(path: str) -> list[dict]:
    """An answer set's rows (`{"id", "seed", "text", "finish_reason"}`), checked."""
    def validate(row, error):
        for field in ("id", "text"):
            if not isinstance(row.get(field), str):
                raise error(f"'{field}' must be a string", field)

    return read_jsonl(path, validate)
