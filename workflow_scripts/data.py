"""Data stage: normalise a source dataset into `{"id", "prompt", "chosen", "rejected"?, "answer"?}`.

Sources: a local JSONL file (the synthetic set, or a user's file) or a hub dataset pinned by
revision. Ids are `<dataset>-<split>-<source index>`, so they never depend on row order after
filtering. Every record is validated; a bad one names the file, line and field.
"""
from __future__ import annotations

import argparse
import json
import re

from .io import InputError, read_jsonl, require_unique_ids, run_cli, write_jsonl

ROLES = {"system", "user", "assistant"}


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
    if "prefix" in record and not isinstance(record["prefix"], str):
        raise error("must be a string (the given start of the response)", "prefix")
    if "chosen" not in record:
        raise error("missing", "chosen")


PATH_STEP = re.compile(r"\[(-?\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*)")


def resolve_path(row: dict, path: str):
    """A mapping value: a column name, optionally followed by list indices and keys, e.g.
    `chosen[1].content` (the first assistant reply of a chat column) or `chosen[-1].content`."""
    head = re.match(r"[^\[.]+", path)
    if head is None:
        raise LookupError(f"bad column path '{path}'")
    if head.group(0) not in row:
        raise LookupError(f"column '{head.group(0)}' is missing")
    value, pos = row[head.group(0)], head.end()
    for step in PATH_STEP.finditer(path, pos):
        if step.start() != pos:
            break
        index, key = step.groups()
        try:
            value = value[int(index)] if index is not None else value[key]
        except (IndexError, KeyError, TypeError):
            raise LookupError(f"'{path[:step.end()]}' does not exist in this row") from None
        pos = step.end()
    if pos != len(path):
        raise LookupError(f"bad column path '{path}' at '{path[pos:]}'")
    return value


def normalise(source_rows: list[dict], dataset: str, split: str, mapping: dict, source: str) -> list[dict]:
    """Map source columns to the record schema; `mapping` names the source column of each field."""
    out = []
    for index, row in enumerate(source_rows):
        line = index + 1

        def column(field):
            path = mapping.get(field)
            if path is None:
                return None
            try:
                return resolve_path(row, path)
            except LookupError as e:
                raise InputError(source, f"{e.args[0]} (mapping.{field} = '{path}')", line, path) from None

        prompt = column("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        source_index = column("id") if mapping.get("id") else index
        record = {"id": f"{dataset}-{split}-{source_index}", "prompt": prompt, "chosen": column("chosen")}
        if mapping.get("rejected"):
            record["rejected"] = column("rejected")
        if mapping.get("answer_after") and isinstance(record["chosen"], str):
            marker = mapping["answer_after"]
            if marker not in record["chosen"]:
                raise InputError(source, f"no '{marker}' answer marker", line, mapping["chosen"])
            record["answer"] = record["chosen"].rsplit(marker, 1)[1].strip()
        validate_record(record, lambda message, field=None, _l=line: InputError(source, message, _l, field))
        out.append(record)
    return out


def load_source(spec: dict, split: str, source_path: str | None) -> tuple[list[dict], str]:
    """Rows of the source split and a name for error messages."""
    if source_path is not None:
        return read_jsonl(source_path), source_path
    from datasets import load_dataset  # the hub path: pinned revision, cached by `datasets`

    ds = load_dataset(spec["hf_id"], spec.get("subset"), revision=spec["revision"], split=spec["splits"][split])
    return list(ds), f"{spec['hf_id']}@{spec['revision']}:{spec['splits'][split]}"


def read_pairs(path: str, need: int = 0, reader: str = "") -> list[dict]:
    """Training records with `negatives`: a merged generation file, or data whose `rejected` is the one negative.

    With `need`, every record must hold that many negatives; `reader` (who reads them) goes into the error.
    """
    def validate(record, error):
        validate_record(record, error)
        if "negatives" in record:
            negs = record["negatives"]
            if not isinstance(negs, list) or not all(isinstance(n, str) for n in negs):
                raise error("must be a list of strings", "negatives")

    records = read_jsonl(path, validate)
    require_unique_ids(path, records)
    for lineno, r in enumerate(records, start=1):
        if "negatives" not in r:
            r["negatives"] = [r["rejected"]] if "rejected" in r else []
        if len(r["negatives"]) < need:
            raise InputError(path, f"id {r['id']!r} holds {len(r['negatives'])} negatives; {reader} needs {need}",
                             lineno, "negatives")
    return records


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the dataset's config entry")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--source", help="local JSONL source file")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.params)
    rows, source = load_source(spec, args.split, args.source)
    limit = spec.get("limit")
    records = normalise(rows[:limit] if limit else rows, args.dataset, args.split, spec["mapping"], source)
    require_unique_ids(source, records)
    n = write_jsonl(args.output, records)
    print(f"{args.dataset}/{args.split}: {n} records from {source}")


if __name__ == "__main__":
    run_cli(main)

