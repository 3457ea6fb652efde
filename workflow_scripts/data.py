"""Data stage: normalise a source dataset into `{"id", "prompt", "chosen", "rejected"?, "answer"?}`, or
multi-turn questions (MT-Bench) into `{"id", "prompt", "followups", "category"?, "references"?, "chosen"?}`.

Sources: a local JSONL / JSON / Parquet file (the synthetic set, or a user's file) or a hub
dataset pinned by revision. A split may be a slice of a source split (`train[:11000]`), taken
after an optional seeded shuffle (`shuffle_seed`), so held-out splits are reproducible. Ids are
`<dataset>-<split>-<source index>` (the row's index in the source split, or a mapped id column),
so they never depend on shuffling or filtering. Every record is validated; a bad one names the
file, the line (JSONL) or row, and the field.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from .conversations import ConversationError, check_mapped_turns
from .io import InputError, read_json, read_jsonl_numbered, require_unique_ids, run_cli, write_jsonl
from .records import validate_record
from .revisions import require_pinned

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


def normalise(source_rows: list[tuple[int, dict]], dataset: str, split: str, mapping: dict, source: str,
              identical_pairs: str = "drop", lines: list[int] | None = None) -> list[dict]:
    """Map source columns to the record schema; `mapping` names the source column of each field.

    `source_rows` are (index in the source split, row); errors name the file's line of a JSONL source
    (`lines[index]`), else the row (index + 1). A pair whose chosen and rejected are the same text is
    dropped and counted (`identical_pairs: drop`) or refused (`refuse`).
    """
    out, identical = [], 0
    for index, row in source_rows:
        line = lines[index] if lines else index + 1

        def value(path, field):
            try:
                return resolve_path(row, path)
            except LookupError as e:
                raise InputError(source, f"{e.args[0]} (mapping.{field} = '{path}')", line, path) from None

        def column(field):
            return None if mapping.get(field) is None else value(mapping[field], field)

        source_index = column("id") if mapping.get("id") else index
        record = {"id": f"{dataset}-{split}-{source_index}"}
        if mapping.get("turns"):
            record.update(question_fields(column, source, line, mapping))
        else:
            prompt = column("prompt")
            record["prompt"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if mapping.get("chosen"):
            record["chosen"] = column("chosen")
        if mapping.get("rejected"):
            record["rejected"] = column("rejected")
        negative_paths = expand_negatives(row, mapping.get("negatives"))
        if mapping.get("negatives"):
            if not negative_paths:
                raise InputError(source, f"no column matches mapping.negatives = {mapping['negatives']!r}", line)
            record["negatives"] = [value(p, "negatives") for p in negative_paths]
        if mapping.get("label"):
            record["label"] = column("label")
        if mapping.get("answer"):
            answer = column("answer")
            record["answer"] = answer if isinstance(answer, str) else json.dumps(answer)
        elif mapping.get("answer_after") and isinstance(record.get("chosen"), str):
            marker = mapping["answer_after"]
            if marker not in record["chosen"]:
                raise InputError(source, f"no '{marker}' answer marker", line, mapping["chosen"])
            record["answer"] = record["chosen"].rsplit(marker, 1)[1].strip()
        validate_record(record, lambda message, field=None, _l=line: InputError(source, message, _l, field))
        check_conversations(row, record, mapping, negative_paths, source, line)
        if "rejected" in record and record["rejected"].strip() == record["chosen"].strip():
            if identical_pairs == "refuse":
                raise InputError(source, "chosen and rejected are the same text (identical_pairs: refuse)", line,
                                 mapping["rejected"])
            identical += 1
            continue
        out.append(record)
    if identical:
        print(f"{source}: dropped {identical} pairs whose chosen and rejected are the same text")
    return out


def check_conversations(row: dict, record: dict, mapping: dict, negative_paths: list[str], source: str,
                        line: int) -> None:
    """The chat turns a row's mapping takes, checked as parts of one conversation (conversations.py)."""
    paths = {f: mapping[f] for f in ("prompt", "chosen", "rejected") if mapping.get(f)}
    paths.update({f"negatives[{k}]": p for k, p in enumerate(negative_paths)})
    try:
        check_mapped_turns(row, paths, record["prompt"])
    except ConversationError as e:
        raise InputError(source, str(e), line, e.field) from None


def expand_negatives(row: dict, spec) -> list[str]:
    """The column paths of a row's negatives (1-to-m data): a list of paths, or one path with `{i}` standing for
    0, 1, ... as long as the row has that column (`generated_{i}[1].content`: generated_0 ... generated_15)."""
    if not spec:
        return []
    if isinstance(spec, list):
        return list(spec)
    if "{i}" not in spec:
        return [spec]
    paths = []
    while True:
        path = spec.replace("{i}", str(len(paths)))
        if re.match(r"[^\[.]+", path)[0] not in row:
            return paths
        paths.append(path)


def question_fields(column, source: str, line: int, mapping: dict) -> dict:
    """A multi-turn question's fields: the first user turn as the prompt, the others as follow-ups."""
    turns = column("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise InputError(source, "must be a non-empty list of the user's turns (strings)", line, mapping["turns"])
    fields = {"prompt": [{"role": "user", "content": turns[0]}], "followups": turns[1:]}
    for field in ("category", "references"):
        if mapping.get(field):
            fields[field] = column(field)
    return fields


SPLIT = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_split(spec: str) -> tuple[str, slice]:
    """`train` or `train[a:b]` -> (source split name, slice of its rows)."""
    m = SPLIT.match(spec)
    if m is None:
        raise ValueError(f"bad split '{spec}': use a split name, optionally sliced as name[start:stop]")
    start, stop = (int(x) if x else None for x in m.groups()[1:])
    return m.group(1), slice(start, stop)


def read_local(path: str) -> tuple[list[dict], list[int] | None]:
    """Rows of a local JSONL, JSON (a list of objects) or Parquet file, and each row's line for a JSONL file."""
    suffix = Path(path).suffix
    if suffix == ".jsonl":
        numbered = read_jsonl_numbered(path)
        return [row for _, row in numbered], [line for line, _ in numbered]
    if suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(path, "a JSON source must be a list of objects")
        return rows, None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist(), None
        except FileNotFoundError:
            raise InputError(path, "file not found") from None
    raise InputError(path, "a local source must be .jsonl, .json or .parquet")


def load_source(spec: dict, split: str, source_path: str | None) -> tuple[list[tuple[int, dict]], str, list | None]:
    """(index in the source split, row) of the split's rows, a name for error messages, and the file's line of
    each source index (JSONL files; None for the others)."""
    lines = None
    if source_path is not None:
        (rows, lines), name, part = read_local(source_path), source_path, slice(None)
    else:
        from datasets import load_dataset  # the hub path: pinned revision, cached by `datasets`

        require_pinned(spec["revision"], spec["hf_id"])
        source_split, part = parse_split(spec["splits"][split])
        if spec.get("hub_files"):  # a data file of the repo at the revision (repos whose loading script
            file = spec["hub_files"][source_split]  # `datasets` no longer runs, e.g. tatsu-lab/alpaca_eval)
            builder = "parquet" if file.endswith(".parquet") else "json"
            ds = load_dataset(builder, data_files=f"hf://datasets/{spec['hf_id']}@{spec['revision']}/{file}",
                              split="train")
        else:
            ds = load_dataset(spec["hf_id"], spec.get("subset"), revision=spec["revision"], split=source_split)
        rows, name = list(ds), f"{spec['hf_id']}@{spec['revision']}:{source_split}"
    indexed = list(enumerate(rows))
    if spec.get("shuffle_seed") is not None:
        random.Random(spec["shuffle_seed"]).shuffle(indexed)
    return indexed[part], name, lines


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the dataset's config entry")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--source", help="local JSONL source file")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.params)
    rows, source, lines = load_source(spec, args.split, args.source)
    records = normalise(rows[: spec.get("limit")], args.dataset, args.split, spec["mapping"], source,
                        spec.get("identical_pairs", "drop"), lines)
    if not records:
        raise InputError(source, f"split '{args.split}' of dataset '{args.dataset}' holds no records")
    require_unique_ids(source, records)
    n = write_jsonl(args.output, records)
    print(f"{args.dataset}/{args.split}: {n} records from {source}")


if __name__ == "__main__":
    run_cli(main)
