"""KTO's unpaired data from a generation: labelled single completions.

Every ground-truth solution is desirable; every sampled response is labelled by the answer checker
(desirable when its final answer is right), so the two classes come in whatever proportion the
model produces (KTO's desirable_weight / undesirable_weight are there to balance them). Records
are written class by class, column-major (all ground truths, then every prompt's first sample...),
so that KTO's mismatched pairs (each example with the previous one's completion) join different
prompts. Output records: `{"id", "prompt", "chosen": the completion, "label", "answer"}`.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

from .answers import check
from .io import InputError, run_cli, write_jsonl
from .records import read_pairs


def unpair(records: list[dict], samples: int) -> tuple[list[dict], Counter]:
    counts = Counter()
    out = [{"id": f"{r['id']}-truth", "prompt": r["prompt"], "chosen": r["chosen"], "label": True,
            "answer": r["answer"]} for r in records]
    counts["ground truth (desirable)"] = len(out)
    for j in range(samples):
        for r in records:
            text = r["negatives"][j]
            if not text.strip():
                counts["empty samples dropped"] += 1
                continue
            correct = check(text, r["answer"])[1]
            out.append({"id": f"{r['id']}-n{j}", "prompt": r["prompt"], "chosen": text, "label": correct,
                        "answer": r["answer"]})
            counts["samples desirable" if correct else "samples undesirable"] += 1
    return out, counts


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: the unpaired entry")
    parser.add_argument("--source", required=True, help="a merged generation file")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    p = json.loads(args.params)
    records = read_pairs(args.source, need=p["samples"] or 1, reader="the unpaired data")
    samples = p["samples"] or min(len(r["negatives"]) for r in records)
    for lineno, r in enumerate(records, start=1):
        if not isinstance(r.get("answer"), str):
            raise InputError(args.source, f"id {r['id']!r}: labelling samples needs the reference answer", lineno,
                             "answer")
    out, counts = unpair(records, samples)
    write_jsonl(args.output, out)
    print(f"{len(out)} unpaired examples from {len(records)} prompts x {samples} samples: {dict(counts)}")


if __name__ == "__main__":
    run_cli(main)
