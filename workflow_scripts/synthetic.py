"""Synthetic GSM8K-style arithmetic word problems and a pre-training corpus.

Problems have one or two steps with operands in [1, max_operand]; solutions are one line per
step ("7 + 5 = 12") and end with "#### <answer>", as GSM8K does.
"""
from __future__ import annotations

import argparse
import json
import random

from .io import run_cli, write_jsonl

NAMES = ["Tom", "Ann", "Sam", "Mia", "Leo", "Zoe", "Max", "Ivy"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "eggs"]


def make_problem(rng: random.Random, max_operand: int) -> dict:
    """One problem: {"question", "answer"} with a step-by-step answer ending in '#### N'."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    kind = rng.choice(["add", "sub", "add_sub"])
    if kind == "add":
        total = a + b
        question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        steps = [f"{a} + {b} = {total}"]
    elif kind == "sub":
        a, b = max(a, b), min(a, b)
        total = a - b
        question = f"{name} has {a} {item}. {name} gives away {b}. How many {item} are left?"
        steps = [f"{a} - {b} = {total}"]
    else:
        mid = a + b
        c = rng.randint(1, min(mid, max_operand))
        total = mid - c
        question = (f"{name} has {a} {item}. {name} gets {b} more, then gives away {c}. "
                    f"How many {item} does {name} have now?")
        steps = [f"{a} + {b} = {mid}", f"{mid} - {c} = {total}"]
    return {"question": question, "answer": "\n".join(steps + [f"#### {total}"])}


def make_splits(seed: int, sizes: dict[str, int], max_operand: int) -> dict[str, list[dict]]:
    """Disjoint splits of distinct questions; each record carries its source index."""
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict] = []
    total = sum(sizes.values())
    for _ in range(total * 50):
        if len(problems) == total:
            break
        p = make_problem(rng, max_operand)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    if len(problems) < total:
        raise ValueError(f"only {len(problems)} distinct problems for {total} requested; raise max_operand")
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [dict(p, index=i) for i, p in enumerate(problems[start:start + n])]
        start += n
    return out


def pretraining_corpus(seed: int, n_documents: int, max_operand: int) -> list[str]:
    """Plain-text documents: arithmetic facts and story sentences, no question/solution pairs."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_documents):
        lines = []
        for _ in range(rng.randint(3, 6)):
            a, b = rng.randint(0, 2 * max_operand), rng.randint(0, max_operand)
            if rng.random() < 0.5:
                lines.append(f"{a} + {b} = {a + b}")
            else:
                a, b = max(a, b), min(a, b)
                lines.append(f"{a} - {b} = {a - b}")
            if rng.random() < 0.4:
                lines.append(f"{rng.choice(NAMES)} has {rng.randint(1, max_operand)} {rng.choice(ITEMS)}.")
        docs.append("\n".join(lines))
    return docs


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON: seed, max_operand, splits {name: size}")
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)
    p = json.loads(args.params)
    splits = make_splits(p["seed"], p["splits"], p["max_operand"])
    for split, records in splits.items():
        n = write_jsonl(f"{args.outdir}/{split}.jsonl", records)
        print(f"{split}: {n} problems")


if __name__ == "__main__":
    run_cli(main)
