"""Merge per-seed generation files into the 1-to-m file, joined on id, seeds in numeric order.

Output records: `{"id", "prompt", "chosen", "answer"?, "negatives": [text of seed s0, s1, ...]}`.

A streaming merge join: the data and every seed file are read one record at a time, side by side (the
generation stage answers the data's records in their order, one line each), so memory holds one record per
file, not the data (MetaMathQA's 395k prompts x 12 seeds). A seed file that misses an id, repeats one, holds an
unknown one or another order is refused at the line where it departs from the data.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from itertools import islice

from .io import InputError, iter_jsonl_numbered, run_cli, seed_files, write_jsonl
from .records import validate_record


def validate_generation(record: dict, error) -> None:
    for field, kind in (("id", str), ("seed", int), ("text", str), ("finish_reason", str)):
        if not isinstance(record.get(field), kind):
            raise error(f"missing or not a {kind.__name__}", field)


def _answer(stream: Iterator, path: str, seed: int, n: int, record: dict) -> str:
    """The seed file's answer to the data's n-th record (0-based), which must be its next line."""
    got = next(stream, None)
    if got is None:
        raise InputError(path, f"ends after {n} records; the data goes on from id {record['id']!r}: a seed file "
                         "answers every record of the data", field="id")
    lineno, g = got
    if g["id"] != record["id"]:
        raise InputError(path, f"id {g['id']!r} where the data's record {n + 1} is {record['id']!r}: a seed file "
                         "answers the data's records in their order, once each", lineno, "id")
    if g["seed"] != seed:
        raise InputError(path, f"seed {g['seed']} in the file of seed {seed}", lineno, "seed")
    return g["text"]


def merge(data: str, files: dict[int, str], limit: int | None = None) -> Iterator[dict]:
    """The data's first `limit` records (all by default), each with the answer of every seed file as negatives."""
    streams = {seed: iter_jsonl_numbered(files[seed], validate_generation) for seed in sorted(files)}
    records = iter_jsonl_numbered(data, validate_record)
    n = 0
    for n, (_, record) in enumerate(islice(records, limit), start=1):
        yield dict(record, negatives=[_answer(stream, files[s], s, n - 1, record) for s, stream in streams.items()])
    for _ in records:  # read to the end: the data's recorded digest is checked there
        pass
    for seed, stream in streams.items():
        extra = next(stream, None)
        if extra is not None:
            raise InputError(files[seed], f"id {extra[1]['id']!r} after the data's last record ({n} records)", extra[0],
                             "id")


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seed-files", nargs="+", required=True, help="seed{N}.jsonl files")
    parser.add_argument("--limit", type=int, default=None, help="the generation's limit on examples")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    files = seed_files(args.seed_files)
    n = write_jsonl(args.output, merge(args.data, files, args.limit))
    print(f"merged {n} examples x {len(files)} seeds {sorted(files)}")


if __name__ == "__main__":
    run_cli(main)
