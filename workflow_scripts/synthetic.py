"""Synthetic dataset stage (rule build_synthetic_dataset): the arithmetic word problems of
workflow_scripts/synthetic_task.py, one JSONL file per split, in the columns of the configured format."""
from __future__ import annotations

import argparse
import json

from .io import run_cli, write_jsonl
from .synthetic_task import in_format, make_splits


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: seed, max_operand, splits {name: size}, format")
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)
    p = json.loads(args.params)
    splits = make_splits(p["seed"], p["splits"], p["max_operand"])
    for split, records in splits.items():
        n = write_jsonl(f"{args.outdir}/{split}.jsonl", [in_format(r, p["format"]) for r in records])
        print(f"{split}: {n} problems ({p['format']} format)")


if __name__ == "__main__":
    run_cli(main)
