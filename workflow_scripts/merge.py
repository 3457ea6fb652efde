"""Merge per-seed generation files into the 1-to-m file, joined on id, seeds in numeric order.

Output records: `{"id", "prompt", "chosen", "answer"?, "negatives": [text of seed s0, s1, ...]}`.
A seed file that misses an id, repeats one or holds an unknown one is refused.
"""
from __future__ import annotations

import argparse

from .data import validate_record
from .io import InputError, read_jsonl, run_cli, seed_files, write_jsonl


def validate_generation(record: dict, error) -> None:
    for field, kind in (("id", str), ("seed", int), ("text", str), ("finish_reason", str)):
        if not isinstance(record.get(field), kind):
            raise error(f"missing or not a {kind.__name__}", field)


def merge(data: list[dict], files: dict[int, str]) -> list[dict]:
    ids = [r["id"] for r in data]
    texts: dict[int, dict[str, str]] = {}
    for seed in sorted(files):
        path = files[seed]
        by_id: dict[str, str] = {}
        for lineno, g in enumerate(read_jsonl(path, validate_generation), start=1):
            if g["id"] in by_id:
                raise InputError(path, f"duplicate id {g['id']!r}", lineno, "id")
            if g["seed"] != seed:
                raise InputError(path, f"seed {g['seed']} in the file of seed {seed}", lineno, "seed")
            by_id[g["id"]] = g["text"]
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(path, f"{len(missing)} ids of the data are missing, e.g. {missing[0]!r}", field="id")
        unknown = sorted(set(by_id) - set(ids))
        if unknown:
            raise InputError(path, f"{len(unknown)} ids are not in the data, e.g. {unknown[0]!r}", field="id")
        texts[seed] = by_id
    seeds = sorted(texts)
    return [dict(r, negatives=[texts[s][r["id"]] for s in seeds]) for r in data]


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seed-files", nargs="+", required=True, help="seed{N}.jsonl files")
    parser.add_argument("--limit", type=int, default=None, help="the generation's limit on examples")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    data = read_jsonl(args.data, validate_record)[: args.limit]
    files = seed_files(args.seed_files)
    merged = merge(data, files)
    write_jsonl(args.output, merged)
    print(f"merged {len(merged)} examples x {len(files)} seeds {sorted(files)}")


if __name__ == "__main__":
    run_cli(main)
